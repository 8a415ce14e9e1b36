"""Typed errors of the Raft core.

Storage errors are raised by `LogStorage` implementations and handled by the
core; proposal errors are raised to the application by `RaftNode.propose*`
so that a refused proposal is never silently dropped.
"""

from __future__ import annotations

from raft.types import NONE


class StorageError(Exception):
    """Base of the errors a `LogStorage` may raise."""


class CompactedError(StorageError):
    """The requested index is at or below the compaction point."""


class UnavailableError(StorageError):
    """The requested index is beyond the last stored entry."""


class SnapshotTemporarilyUnavailableError(StorageError):
    """The snapshot is being built; the leader asks again later."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the one already held was offered."""


class ProposalDroppedError(Exception):
    """The proposal was not appended to the log. `leader_id` is the leader this
    node knows of (0 if none), so the caller can redirect."""

    def __init__(self, reason: str, leader_id: int = NONE) -> None:
        super().__init__(f"{reason} (leader: {leader_id or 'unknown'})")
        self.reason = reason
        self.leader_id = leader_id


class NotLeaderError(ProposalDroppedError):
    def __init__(self, leader_id: int) -> None:
        super().__init__("not the leader", leader_id)


class LeaderTransferringError(ProposalDroppedError):
    def __init__(self, leader_id: int, transferee: int) -> None:
        super().__init__(f"leadership is being transferred to {transferee}", leader_id)
        self.transferee = transferee


class ConfChangePendingError(ProposalDroppedError):
    def __init__(self, leader_id: int, pending_index: int) -> None:
        super().__init__(f"a conf change at index {pending_index} is not applied yet", leader_id)
        self.pending_index = pending_index


class ConfChangeError(ValueError):
    """A membership change that cannot be applied to the current config
    (e.g. removing every voter, or a simple change touching two voters)."""

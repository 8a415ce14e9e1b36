"""shardkv's Raft core: a pure, deterministic state machine (sans-IO).

Rules of this package: no I/O, no clock, no trio, no lmdb, no global random.
The application drives a `RaftNode` with ticks, messages and proposals and
handles the `Ready` it returns; see `raft.node` for the contract.
"""

from raft.config import Config
from raft.errors import (
    CompactedError,
    ConfChangeError,
    ConfChangePendingError,
    LeaderTransferringError,
    NotLeaderError,
    ProposalDroppedError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    StorageError,
    UnavailableError,
)
from raft.node import ProgressStatus, RaftNode, Ready, Status
from raft.storage import LogStorage, MemoryStorage
from raft.types import (
    NONE,
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)

__all__ = [
    "NONE",
    "CompactedError",
    "ConfChange",
    "ConfChangeError",
    "ConfChangePendingError",
    "ConfChangeSingle",
    "ConfChangeTransition",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "LeaderTransferringError",
    "LogStorage",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeaderError",
    "ProgressStatus",
    "ProposalDroppedError",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "Status",
    "StorageError",
    "UnavailableError",
]

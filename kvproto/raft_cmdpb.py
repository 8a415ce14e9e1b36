"""Commands proposed through a region's Raft log (tags 240..279; 252, once
AdminResponse and never used, is retired).

A `RaftCmdRequest` is the payload of one normal log entry. A store batches
the writes of one loop round for one region into one command; each write op
gets its own result, in order. Admin commands change the region itself and
are checked and bumped by the rules in `kvproto.epoch`.

Tags and enum values are part of the log format: never reused, never
renumbered (old entries are replayed after upgrades).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

from kvproto.codec import wire
from kvproto.kvrpcpb import KvError, SessionRef
from kvproto.metapb import Peer, PeerId, RegionEpoch, RegionId, StoreId


@wire(240)
@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@wire(241)
@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@wire(242)
@dataclass(frozen=True, slots=True)
class DeleteRange:
    """Delete every key in [start_key, end_key) within the region."""

    start_key: bytes
    end_key: bytes


@wire(243)
@dataclass(frozen=True, slots=True)
class CompareAndSet:
    """If the current value equals `expected` (None: the key is absent), set
    it to `new_value` (None: delete it)."""

    key: bytes
    expected: bytes | None
    new_value: bytes | None


WriteOp: TypeAlias = Put | Delete | DeleteRange | CompareAndSet


@wire(244)
@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one write op: `succeeded` is False only for a failed
    compare-and-set; `previous` is the value before (CAS only)."""

    succeeded: bool = True
    previous: bytes | None = None


class ChangePeerType(IntEnum):
    ADD_VOTER = 0  # also: promote a learner
    REMOVE = 1
    ADD_LEARNER = 2  # also: demote a voter (inside a joint change)


@wire(245)
@dataclass(frozen=True, slots=True)
class ChangePeer:
    change_type: ChangePeerType
    peer: Peer


@wire(246)
@dataclass(frozen=True, slots=True)
class ChangePeerRequest:
    """A membership change; more than one voter touched goes through a joint
    configuration, left automatically."""

    changes: tuple[ChangePeer, ...]


@wire(247)
@dataclass(frozen=True, slots=True)
class SplitRequest:
    """One new region: it starts at `split_key`; `new_peer_ids` are the ids of
    its peers, one per peer of the original region, in the same order."""

    split_key: bytes
    new_region_id: RegionId
    new_peer_ids: tuple[PeerId, ...]


@wire(248)
@dataclass(frozen=True, slots=True)
class BatchSplitRequest:
    """Split at each `split_key` (strictly increasing, inside the region): the
    original region keeps [start, first split key)."""

    requests: tuple[SplitRequest, ...]


@wire(249)
@dataclass(frozen=True, slots=True)
class CompactLogRequest:
    """Truncate this region's log up to (compact_index, compact_term)."""

    compact_index: int
    compact_term: int


@wire(264)
@dataclass(frozen=True, slots=True)
class ComputeHashRequest:
    """A consistency check: every replica hashes its copy of the region as
    of this entry's index (`store_node.region_hash`) and reports it.
    `check_id` is the PD's id of a check an administrator asked for (0: a
    periodic one)."""

    check_id: int = 0


@wire(265)
@dataclass(frozen=True, slots=True)
class VerifyHashRequest:
    """The hash the leader on store `store_id` computed at `index` (a
    ComputeHash entry's): each replica compares its own with it."""

    index: int
    hash: bytes
    store_id: StoreId


AdminRequest: TypeAlias = (
    ChangePeerRequest
    | BatchSplitRequest
    | CompactLogRequest
    | ComputeHashRequest
    | VerifyHashRequest
)


@wire(250)
@dataclass(frozen=True, slots=True)
class RaftRequestHeader:
    region_id: RegionId
    peer_id: PeerId
    region_epoch: RegionEpoch


@wire(251)
@dataclass(frozen=True, slots=True)
class RaftCmdRequest:
    """One log entry's command: either write ops or one admin request."""

    header: RaftRequestHeader
    requests: tuple[WriteOp, ...] = ()
    admin: AdminRequest | None = None


@wire(253)
@dataclass(frozen=True, slots=True)
class ClientWrite:
    """One client request's write ops, applied all or nothing, at most once
    per `session` (None: no session, applied every time it is proposed)."""

    session: SessionRef | None
    ops: tuple[WriteOp, ...]


@wire(254)
@dataclass(frozen=True, slots=True)
class WriteCommand:
    """One log entry's client writes (a round's batch for a region).

    `time_ms` is the proposing leader's wall clock and `session_ttl_ms` its
    session idle time: replicas expire sessions by these values from the
    log, never by their own clocks, so they all decide alike."""

    header: RaftRequestHeader
    time_ms: int
    session_ttl_ms: int
    writes: tuple[ClientWrite, ...]


# What a client write applied to: its ops' results, or a KvError when its
# session refused it (SESSION_EXPIRED: nothing was applied now).
WriteOutcome: TypeAlias = tuple[WriteResult, ...] | KvError


@wire(255)
@dataclass(frozen=True, slots=True)
class SessionAnswer:
    """The stored answer of an applied client write (its ops' results)."""

    results: tuple[WriteResult, ...]

"""Store-to-store and on-disk region metadata (tags 280..319).

Tags and enum values are part of the wire and disk formats: never reused,
never renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from kvproto.codec import wire
from kvproto.metapb import Peer, Region, RegionEpoch, RegionId, StoreId
from raft.types import Message


class HibernateFlag(IntEnum):
    """The hibernation handshake, carried on heartbeats (store_node.hibernate)."""

    NONE = 0
    # On a leader's heartbeat: the region is idle, sleep if you hold my log.
    REQUEST = 1
    # On a follower's heartbeat response: asleep, holding the leader's log.
    ACK = 2
    # On a heartbeat response a follower sends of itself: something woke it
    # (a replica read, say); its leader wakes too, so heartbeats resume
    # before the follower's election timer runs out.
    WAKE = 3


@wire(280)
@dataclass(frozen=True, slots=True)
class RaftMessage:
    """One Raft message of one region between two peers.

    `region_epoch`, `start_key` and `end_key` describe the region as the
    sender knows it, so that a store that has no peer for the region yet can
    decide whether to create one (and a stale sender can be told so).
    `is_tombstone` asks the receiver to destroy its peer (it was removed).
    `hibernate`: the hibernation handshake (store_node.hibernate).
    """

    region_id: RegionId
    from_peer: Peer
    to_peer: Peer
    region_epoch: RegionEpoch
    message: Message
    start_key: bytes = b""
    end_key: bytes = b""
    is_tombstone: bool = False
    hibernate: HibernateFlag = HibernateFlag.NONE


@wire(281)
@dataclass(frozen=True, slots=True)
class RaftMessageBatch:
    """Every message of one loop round from one store to another: one frame.
    Also the stores' liveness signal (store_node.hibernate): a batch may be
    empty, and `incarnation` (drawn when the sender started) tells a
    restart apart from a store that was merely quiet."""

    from_store: StoreId
    messages: tuple[RaftMessage, ...]
    incarnation: int = 0


class PeerState(IntEnum):
    NORMAL = 0
    # A snapshot is being applied: the data range is not consistent yet.
    APPLYING = 1
    # The peer was removed (or replaced by a newer one): its data is gone and
    # messages for it are ignored.
    TOMBSTONE = 2


@wire(282)
@dataclass(frozen=True, slots=True)
class RegionLocalState:
    """What a store knows of one of its regions, written in the same kv/
    transaction as the region's applied index."""

    region: Region
    state: PeerState = PeerState.NORMAL


@wire(283)
@dataclass(frozen=True, slots=True)
class StoreIdent:
    """Written once into a data directory: whose it is."""

    cluster_id: int
    store_id: StoreId


@wire(289)
@dataclass(frozen=True, slots=True)
class SnapshotDelta:
    """Marks a snapshot file as a delta (store_node.snapshot_delta): it holds
    only the pairs of `ranges` ([start, end) pairs, end b"" = +infinity),
    which replace the same ranges of the receiver's copy, and that copy must
    still be the one it compared: applied at (`base_index`, `base_term`)."""

    base_index: int
    base_term: int
    ranges: tuple[tuple[bytes, bytes], ...]


@wire(284)
@dataclass(frozen=True, slots=True)
class SnapshotDescriptor:
    """What a region snapshot holds (carried as the opaque data of a Raft
    snapshot): the region at the snapshot index, and the size and checksum
    (CRC-32) of the data file that travels beside the Raft message.
    `delta`: set when the file holds only the ranges that differ from the
    receiver's copy (None: the whole region)."""

    region: Region
    index: int
    term: int
    size: int
    checksum: int
    keys: int
    delta: SnapshotDelta | None = None


@wire(285)
@dataclass(frozen=True, slots=True)
class SnapshotKey:
    """Names one snapshot transfer."""

    region_id: RegionId
    term: int
    index: int
    from_store: StoreId


@wire(286)
@dataclass(frozen=True, slots=True)
class SnapshotChunkRequest:
    """Bytes [offset, offset + len(data)) of a snapshot file."""

    key: SnapshotKey
    offset: int
    data: bytes


@wire(287)
@dataclass(frozen=True, slots=True)
class SnapshotDoneRequest:
    """The file is complete: verify it, then step `message` (the Raft
    SNAPSHOT message) into the receiving peer."""

    key: SnapshotKey
    message: RaftMessage


@wire(288)
@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """`error` is empty on success; otherwise why the transfer was refused
    or failed (the sender gives up and Raft retries later)."""

    error: str = ""


@wire(290)
@dataclass(frozen=True, slots=True)
class DigestRun:
    """Consecutive key ranges [bounds[i], bounds[i + 1]) and one hash of the
    pairs of each (store_node.snapshot_digest); the last bound b"" is
    +infinity."""

    bounds: tuple[bytes, ...]
    hashes: tuple[bytes, ...]


@wire(291)
@dataclass(frozen=True, slots=True)
class SnapshotDigestRequest:
    """Before sending a snapshot: which of these ranges differ in your copy
    of the region? `region` is the snapshot's; `base_index` and `base_term`,
    once a first answer named them (0: any), the applied point the copy
    must still be at."""

    key: SnapshotKey
    region: Region
    base_index: int
    base_term: int
    runs: tuple[DigestRun, ...]


@wire(292)
@dataclass(frozen=True, slots=True)
class SnapshotDigestResponse:
    """`error` set: no delta can go onto this store's copy (none usable, or
    it changed since the base); otherwise the copy's applied point and the
    positions, counted over every range of the request's runs, of those
    whose hash differs."""

    error: str = ""
    base_index: int = 0
    base_term: int = 0
    differing: tuple[int, ...] = ()

"""Cluster metadata shared by stores, the PD and clients (tags 20..39).

Key ranges are half-open, ``[start_key, end_key)``, compared as bytes. An
empty ``end_key`` means +infinity; an empty ``start_key`` is -infinity
(``b""`` sorts before every key, so it needs no special case).

Enum values and tags are part of the wire and disk formats: never reused,
never renumbered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import NewType

from kvproto.codec import wire

StoreId = NewType("StoreId", int)
RegionId = NewType("RegionId", int)
PeerId = NewType("PeerId", int)


def key_in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """Whether `key` lies in ``[start, end)``; an empty `end` is +infinity."""
    return start <= key and (not end or key < end)


def ranges_overlap(a_start: bytes, a_end: bytes, b_start: bytes, b_end: bytes) -> bool:
    """Whether some key lies in both ``[a_start, a_end)`` and
    ``[b_start, b_end)`` (empty ends are +infinity). An empty range, such as
    ``[b"k", b"k")``, overlaps nothing."""
    lo = max(a_start, b_start)
    if not a_end:
        return not b_end or lo < b_end
    if not b_end:
        return lo < a_end
    return lo < min(a_end, b_end)


class PeerRole(IntEnum):
    VOTER = 0
    LEARNER = 1
    # The two roles of a peer inside a joint configuration (raft ConfState's
    # incoming voters / outgoing voters that become learners).
    INCOMING_VOTER = 2
    DEMOTING_VOTER = 3


@wire(20)
@dataclass(frozen=True, slots=True)
class Peer:
    """One replica of a region on one store (one Raft group member)."""

    id: PeerId
    store_id: StoreId
    role: PeerRole = PeerRole.VOTER

    @property
    def is_learner(self) -> bool:
        return self.role == PeerRole.LEARNER


@wire(21)
@dataclass(frozen=True, slots=True)
class RegionEpoch:
    """`version` grows on split/merge, `conf_ver` on membership change; the
    rules live in kvproto.epoch."""

    conf_ver: int
    version: int


@wire(22)
@dataclass(frozen=True, slots=True)
class Region:
    """A key range ``[start_key, end_key)`` replicated by `peers`.

    `peers` holds at most one peer per store; its order is the order the
    peers were added in.
    """

    id: RegionId
    start_key: bytes
    end_key: bytes
    epoch: RegionEpoch
    peers: tuple[Peer, ...] = ()

    def contains(self, key: bytes) -> bool:
        return key_in_range(key, self.start_key, self.end_key)

    def overlaps(self, other: Region) -> bool:
        return ranges_overlap(self.start_key, self.end_key, other.start_key, other.end_key)

    def peer_on_store(self, store_id: StoreId) -> Peer | None:
        for p in self.peers:
            if p.store_id == store_id:
                return p
        return None

    def find_peer(self, peer_id: PeerId) -> Peer | None:
        for p in self.peers:
            if p.id == peer_id:
                return p
        return None

    def with_epoch(self, epoch: RegionEpoch) -> Region:
        return dataclasses.replace(self, epoch=epoch)

    def with_range(self, start_key: bytes, end_key: bytes) -> Region:
        return dataclasses.replace(self, start_key=start_key, end_key=end_key)

    def with_peers(self, peers: tuple[Peer, ...]) -> Region:
        return dataclasses.replace(self, peers=peers)

    def with_peer(self, peer: Peer) -> Region:
        """This region with `peer` added, or replacing the peer of the same id
        in place (a role change)."""
        if self.find_peer(peer.id) is None:
            return self.with_peers((*self.peers, peer))
        return self.with_peers(tuple(peer if p.id == peer.id else p for p in self.peers))

    def without_peer(self, peer_id: PeerId) -> Region:
        return self.with_peers(tuple(p for p in self.peers if p.id != peer_id))


class StoreState(IntEnum):
    UP = 0
    DISCONNECTED = 1
    DOWN = 2
    OFFLINE = 3
    TOMBSTONE = 4


@wire(23)
@dataclass(frozen=True, slots=True)
class Store:
    """A store process as the PD knows it. `labels` are (key, value) pairs
    (zone, rack, host...) in a stable order, keys unique."""

    id: StoreId
    address: str
    state: StoreState = StoreState.UP
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None

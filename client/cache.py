"""The client's region cache: which region holds a key, and who leads it.

Pure: no I/O, no clock, no trio. The trio shell (`client.locate`) fills
it from the PD and from region errors; the retry policy (`client.retry`)
edits it.

Invariant: cached ranges never overlap. Entries are kept in a SortedDict by
start key, so the region holding a key is found by one bisect.

Which of two overlapping regions is right is decided by kvproto.epoch only:
a region replaces every cached region it overlaps, unless one of those is
newer (same region: `is_stale`; another region: `loses_to_overlap`). Then
the newcomer is refused and the cache stays as it was (the PD lags behind
the stores, so its answer can be older than what an EpochNotMatch taught us).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from sortedcontainers import SortedDict

from client.plan import holds_keys_before
from kvproto import epoch
from kvproto.metapb import Peer, Region, RegionId, StoreId, ranges_overlap

__all__ = ["CachedRegion", "RegionCache"]


@dataclass(slots=True)
class CachedRegion:
    """A region and the peer believed to lead it (None: unknown). Mutable:
    the leader hint moves as NotLeader answers come in."""

    region: Region
    leader: Peer | None = None

    def voters(self) -> list[Peer]:
        """The peers that may lead, in the region's order."""
        return [p for p in self.region.peers if not p.is_learner]

    def choose_peer(self, avoid: frozenset[StoreId] | set[StoreId] = frozenset()) -> Peer | None:
        """The peer to send to: the leader hint unless its store is in
        `avoid`, else the first voter whose store is not; None if none is left."""
        if self.leader is not None and self.leader.store_id not in avoid:
            return self.leader
        for p in self.voters():
            if p.store_id not in avoid:
                return p
        return None

    def choose_replica(self, skip: Collection[StoreId], rng: random.Random) -> Peer | None:
        """A peer of the region (voter or learner) chosen at random among
        those whose store is not in `skip` (follower and stale reads spread
        over the stores); None if none is left."""
        candidates = [p for p in self.region.peers if p.store_id not in skip]
        return rng.choice(candidates) if candidates else None

    def next_peer_after(self, peer: Peer) -> Peer | None:
        """The voter after `peer` in region order, wrapping around (None for
        a region without voters): where to look for a leader nobody names."""
        voters = self.voters()
        if not voters:
            return None
        ids = [p.id for p in voters]
        i = ids.index(peer.id) + 1 if peer.id in ids else 0
        return voters[i % len(voters)]


class RegionCache:
    def __init__(self) -> None:
        # start_key -> entry; ranges disjoint (see the module docstring).
        self._by_start: SortedDict[bytes, CachedRegion] = SortedDict()
        # region id -> its start key in _by_start.
        self._start_of: dict[RegionId, bytes] = {}

    def __len__(self) -> int:
        return len(self._by_start)

    def __iter__(self) -> Iterator[CachedRegion]:
        """Entries in key order."""
        return iter(list(self._by_start.values()))

    def get(self, region_id: int) -> CachedRegion | None:
        start = self._start_of.get(RegionId(region_id))
        return None if start is None else self._by_start[start]

    def lookup(self, key: bytes) -> CachedRegion | None:
        """The cached region containing `key`, if any."""
        i = self._by_start.bisect_right(key) - 1
        if i < 0:
            return None
        entry: CachedRegion = self._by_start.peekitem(i)[1]
        return entry if entry.region.contains(key) else None

    def lookup_before(self, end: bytes) -> CachedRegion | None:
        """The cached region holding the keys just below `end` (b"": +inf),
        i.e. with ``start_key < end <= end_key``: where a reverse scan that
        stops before `end` begins."""
        # The candidate is the last region starting below `end` (for +inf:
        # the last region).
        i = (self._by_start.bisect_left(end) if end else len(self._by_start)) - 1
        if i < 0:
            return None
        entry: CachedRegion = self._by_start.peekitem(i)[1]
        return entry if holds_keys_before(entry.region, end) else None

    def overlapping(self, start: bytes, end: bytes) -> list[CachedRegion]:
        """Cached regions overlapping ``[start, end)``, in key order."""
        found: list[CachedRegion] = []
        i = max(self._by_start.bisect_right(start) - 1, 0)
        keys = self._by_start.keys()
        while i < len(keys):
            k = keys[i]
            if end and k >= end:
                break
            entry: CachedRegion = self._by_start[k]
            r = entry.region
            if ranges_overlap(r.start_key, r.end_key, start, end):
                found.append(entry)
            i += 1
        return found

    def insert(self, region: Region, leader: Peer | None = None) -> bool:
        """Cache `region` with its leader hint, replacing every cached region
        it overlaps, unless one of them is newer: then nothing changes and
        the answer is False.

        With no `leader` given, the hint of the same region at the same
        membership (`conf_ver`) is kept.
        """
        if region.end_key and region.end_key <= region.start_key:
            return False  # an empty range holds no key
        overlaps = self.overlapping(region.start_key, region.end_key)
        same = self.get(region.id)
        if same is not None and same not in overlaps:
            overlaps.append(same)
        for e in overlaps:
            if e.region.id == region.id:
                if epoch.is_stale(region.epoch, e.region.epoch):
                    return False
            elif epoch.loses_to_overlap(region.epoch, e.region.epoch):
                return False
        if (
            leader is None
            and same is not None
            and same.leader is not None
            and same.region.epoch.conf_ver == region.epoch.conf_ver
            and region.find_peer(same.leader.id) is not None
        ):
            leader = same.leader
        for e in overlaps:
            self._remove(e)
        self._by_start[region.start_key] = CachedRegion(region, leader)
        self._start_of[region.id] = region.start_key
        return True

    def update_from_epoch_not_match(
        self, current_regions: Iterable[Region], responder: StoreId | None
    ) -> bool:
        """Take the regions of an EpochNotMatch answered by store `responder`.

        Each is cached unless stale against the cache; its leader hint is its
        peer on `responder` (which answered as the leader of the region the
        request named, and a split's new regions start with their leaders on
        the same store). A `responder` of None (a replica that need not
        lead answered) gives no hint. Returns whether the cache changed.
        """
        changed = False
        for r in sorted(current_regions, key=lambda r: r.start_key):
            old = self.get(r.id)
            if old is not None and old.region == r:
                continue
            if self.insert(r, None if responder is None else r.peer_on_store(responder)):
                changed = True
        return changed

    def update_leader(self, region_id: int, leader: Peer) -> bool:
        """Set the leader hint of a cached region to one of its peers;
        False if the region is not cached or `leader` is not its peer."""
        entry = self.get(region_id)
        if entry is None or entry.region.find_peer(leader.id) is None:
            return False
        entry.leader = leader
        return True

    def invalidate(self, region_id: int) -> bool:
        """Forget a region (the next lookup of its keys asks the PD)."""
        entry = self.get(region_id)
        if entry is None:
            return False
        self._remove(entry)
        return True

    def invalidate_region(self, region: Region) -> bool:
        """Forget the cached copy of `region` (a request routed with it
        failed), unless the cache meanwhile holds a newer one of that id."""
        entry = self.get(region.id)
        if entry is None or epoch.is_newer(entry.region.epoch, region.epoch):
            return False
        self._remove(entry)
        return True

    def invalidate_store(self, store_id: StoreId) -> int:
        """Forget every leader hint pointing at `store_id`; returns how many."""
        n = 0
        for entry in self._by_start.values():
            if entry.leader is not None and entry.leader.store_id == store_id:
                entry.leader = None
                n += 1
        return n

    def clear(self) -> None:
        self._by_start.clear()
        self._start_of.clear()

    def _remove(self, entry: CachedRegion) -> None:
        r = entry.region
        del self._by_start[r.start_key]
        del self._start_of[r.id]

    def check_invariants(self) -> None:
        """AssertionError unless entries are disjoint and indexed (for tests)."""
        prev_end: bytes | None = None
        for start, entry in self._by_start.items():
            r = entry.region
            assert r.start_key == start
            assert self._start_of[r.id] == start
            if prev_end is not None:
                assert prev_end and prev_end <= start, (prev_end, start)
            prev_end = r.end_key
        assert len(self._start_of) == len(self._by_start)

"""The PD's regions: the region tree, what each region's leader last
reported, and the rules for changing them (region heartbeats, batch
splits). Pure: no trio, no clock (`now` comes in).

Region heartbeat rules (TiKV PD's PreCheckPutRegion; epoch rules from
`kvproto.epoch`, never re-implemented here):

1. a report whose epoch is behind a DIFFERENT region it overlaps
   (`loses_to_overlap`) is stale;
2. a report whose epoch is behind the known region of the same id
   (`is_stale`), or that comes from an older leader term, is stale;
3. otherwise it replaces the region of its id and every region it overlaps.

A stale report changes nothing and is answered with STALE_REGION. The tree
never has overlaps.

Unlike the rest of the PD's metadata, regions are not written before
memory changes: the tree is re-learnt from heartbeats anyway, so changes
are collected and written in batches by `Regions.flush` (the shell calls
it periodically and at shutdown).

What a heartbeat reports besides the region is `RegionStat`, copied from
the request field by field by name (`RegionStat.from_heartbeat`): a new
field of pdpb.RegionHeartbeatRequest is added there and in `RegionStat`,
nowhere else. From the traffic counts and their interval the heartbeat
derives the region's `Flow` (per second); a heartbeat with an empty
interval measured nothing and keeps the previous flow. Per store, `Regions`
sums the flows of the regions led there (the base of hot-region
scheduling).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from kvproto import pdpb
from kvproto.epoch import is_stale, loses_to_overlap
from kvproto.metapb import Peer, PeerId, Region, RegionId, StoreId
from kvproto.pdpb import PdErrorCode, PeerStats, SplitId
from placement_driver.config import MiB
from placement_driver.errors import PdRequestError, invalid_argument
from placement_driver.region_tree import RegionTree
from placement_driver.storage import MetaStorage

__all__ = [
    "MAX_SPLIT_COUNT",
    "REPORTED_FIELDS",
    "Flow",
    "RegionRecord",
    "RegionStat",
    "Regions",
    "check_region",
]

log = logging.getLogger(__name__)

MAX_SPLIT_COUNT: Final = 1000  # new regions per AskBatchSplit


@dataclass(frozen=True, slots=True)
class Flow:
    """Client traffic per second, written and read (key and value bytes,
    keys), as a region's leader measured it over a heartbeat's interval; or
    the sum of such flows."""

    write_bytes_rate: float = 0.0
    write_keys_rate: float = 0.0
    read_bytes_rate: float = 0.0
    read_keys_rate: float = 0.0

    @classmethod
    def of(cls, request: pdpb.RegionHeartbeatRequest) -> Flow | None:
        """The flow the heartbeat measured; None if its interval is empty."""
        seconds = request.interval_seconds
        if seconds <= 0:
            return None
        return cls(
            request.written_bytes / seconds,
            request.written_keys / seconds,
            request.read_bytes / seconds,
            request.read_keys / seconds,
        )

    @classmethod
    def total(cls, flows: Iterable[Flow]) -> Flow:
        wb = wk = rb = rk = 0.0
        for f in flows:
            wb += f.write_bytes_rate
            wk += f.write_keys_rate
            rb += f.read_bytes_rate
            rk += f.read_keys_rate
        return cls(wb, wk, rb, rk)


NO_FLOW: Final = Flow()


@dataclass(frozen=True, slots=True)
class RegionStat:
    """What the last accepted heartbeat of a region said besides its
    metadata: every field of pdpb.RegionHeartbeatRequest but `header` and
    `region`, under the same names; the flow derived from the latest one
    that measured any; and when it came. Not persisted: a restarted PD knows
    regions but not leaders."""

    leader: Peer | None = None
    term: int = 0
    approximate_size: int = 0
    approximate_keys: int = 0
    down_peers: tuple[PeerStats, ...] = ()
    pending_peers: tuple[Peer, ...] = ()
    written_bytes: int = 0
    written_keys: int = 0
    read_bytes: int = 0
    read_keys: int = 0
    interval_seconds: float = 0.0
    flow: Flow = NO_FLOW
    last_heartbeat: float | None = None  # None: none since this PD started

    @classmethod
    def from_heartbeat(
        cls, request: pdpb.RegionHeartbeatRequest, now: float, previous: Flow = NO_FLOW
    ) -> RegionStat:
        """The stat of an accepted heartbeat; `previous` is the region's flow
        until now, kept if the heartbeat's interval is empty (a new leader
        reports at once: the region's load moved to it, it did not stop)."""
        measured = Flow.of(request)
        return cls(
            **{name: getattr(request, name) for name in REPORTED_FIELDS},
            flow=previous if measured is None else measured,
            last_heartbeat=now,
        )

    def is_pending(self, peer_id: int) -> bool:
        """Whether the leader reported the peer pending (catching up)."""
        return any(p.id == peer_id for p in self.pending_peers)

    @property
    def weight(self) -> int:
        """What one peer of the region adds to its store's region score: the
        approximate size in MiB, at least 1, so that an empty or not yet
        measured region still counts (TiKV PD's empty-region size)."""
        return max(1, round(self.approximate_size / MiB))


# The fields of a RegionStat that a heartbeat fills in, in order.
REPORTED_FIELDS: Final = tuple(
    f.name for f in dataclasses.fields(RegionStat) if f.name not in ("flow", "last_heartbeat")
)
# Reported numbers refused when negative.
_NON_NEGATIVE: Final = (
    "term",
    "approximate_size",
    "approximate_keys",
    "written_bytes",
    "written_keys",
    "read_bytes",
    "read_keys",
)


@dataclass(frozen=True, slots=True)
class RegionRecord:
    region: Region
    stat: RegionStat

    @property
    def leader(self) -> Peer | None:
        return self.stat.leader


class Regions:
    """Every region the PD knows (the region tree) with its `RegionStat`,
    the region changes not yet flushed, and per store the peers (any role),
    their summed weights and the pending peers over the tree (as the
    regions' leaders last reported them), and the regions led there with
    their flows.

    Invariant: the per-store counts, sizes and flows equal a count over the tree
    (kept by `_put`, the one place the tree changes)."""

    def __init__(self, storage: MetaStorage, stored: Iterable[Region]) -> None:
        """Load the stored regions, oldest version first so that a newer
        region wins if records overlap; a record stale against the others
        is dropped (and deleted by the next flush)."""
        self._storage = storage
        self._tree = RegionTree()
        self._stats: dict[RegionId, RegionStat] = {}
        self._store_peers: Counter[StoreId] = Counter()
        self._store_size: Counter[StoreId] = Counter()
        self._store_pending: Counter[StoreId] = Counter()
        # Per store, the flow of each region led there: summed when asked,
        # so that no float error piles up as regions come and go.
        self._store_led: defaultdict[StoreId, dict[RegionId, Flow]] = defaultdict(dict)
        # Not yet flushed: ids to write (their current version), ids to delete.
        self._dirty: set[RegionId] = set()
        self._deleted: set[RegionId] = set()
        for region in sorted(stored, key=lambda r: (r.epoch.version, r.id)):
            try:
                self._check_not_stale(region, 0)
            except PdRequestError as e:
                log.warning("dropping stored region %d: %s", region.id, e.message)
                self._deleted.add(region.id)
                continue
            self._put(region, RegionStat())
        self._dirty.clear()

    # -- reading ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tree)

    def __iter__(self) -> Iterator[RegionRecord]:
        """Every region in key order."""
        return map(self._record, self._tree)

    def containing(self, key: bytes) -> RegionRecord | None:
        region = self._tree.find(key)
        return None if region is None else self._record(region)

    def by_id(self, region_id: int) -> RegionRecord | None:
        region = self._tree.get(RegionId(region_id))
        return None if region is None else self._record(region)

    def scan(self, start_key: bytes, end_key: bytes, limit: int) -> list[RegionRecord]:
        """Regions overlapping [start_key, end_key) in key order, at most
        `limit` (0: no limit)."""
        if limit < 0:
            raise invalid_argument(f"limit must be >= 0, got {limit}")
        if end_key and end_key < start_key:
            raise invalid_argument(f"end key {end_key!r} is before start key {start_key!r}")
        return [self._record(r) for r in self._tree.scan(start_key, end_key, limit)]

    def peer_count(self, store_id: int) -> int:
        """Regions with a peer (any role) on the store."""
        return self._store_peers[StoreId(store_id)]

    def peer_size(self, store_id: int) -> int:
        """The weights of the regions with a peer on the store, summed."""
        return self._store_size[StoreId(store_id)]

    def leader_count(self, store_id: int) -> int:
        """Regions whose leader is on the store (as last reported)."""
        return len(self._store_led.get(StoreId(store_id), ()))

    def pending_peer_count(self, store_id: int) -> int:
        """Peers on the store that their regions' leaders last reported
        pending (catching up)."""
        return self._store_pending[StoreId(store_id)]

    def leader_flow(self, store_id: int) -> Flow:
        """The sum of the flows of the regions whose leader is on the store
        (as last reported)."""
        led = self._store_led.get(StoreId(store_id))
        return Flow.total(led.values()) if led else NO_FLOW

    def _record(self, region: Region) -> RegionRecord:
        return RegionRecord(region, self._stats[region.id])

    # -- changes ------------------------------------------------------------------

    def add_bootstrapped(self, region: Region) -> None:
        """The first region, already written with the bootstrap."""
        self._put(region, RegionStat())
        self._dirty.discard(region.id)

    def heartbeat(
        self,
        request: pdpb.RegionHeartbeatRequest,
        now: float,
        live_store: Callable[[StoreId], object],
    ) -> RegionRecord:
        """Apply a leader's report; raises STALE_REGION if it is stale.
        `live_store(store_id)` raises if the leader's store is not known or
        was removed."""
        region = request.region
        check_region(region)
        leader = request.leader
        if leader is None or region.find_peer(leader.id) != leader:
            raise invalid_argument(
                f"region {region.id}: the leader {leader} is not one of its peers"
            )
        if leader.is_learner:
            raise invalid_argument(f"region {region.id}: a learner cannot be the leader")
        live_store(leader.store_id)
        # The checkers judge members by these lists: a peer that is not a
        # member (a forged or confused report) must not count as one.
        for kind, peers in (
            ("down", [d.peer for d in request.down_peers]),
            ("pending", request.pending_peers),
        ):
            for p in peers:
                member = region.find_peer(p.id)
                if member is None or member.store_id != p.store_id:
                    raise invalid_argument(
                        f"region {region.id}: {kind} peer {p.id} on store {p.store_id} "
                        "is not one of its peers"
                    )
        for name in _NON_NEGATIVE:
            if getattr(request, name) < 0:
                raise invalid_argument(f"region {region.id}: {name} is negative")
        if not (math.isfinite(request.interval_seconds) and request.interval_seconds >= 0):
            raise invalid_argument(
                f"region {region.id}: interval_seconds must be a finite number >= 0, "
                f"got {request.interval_seconds}"
            )
        self._check_not_stale(region, request.term)
        known = self._stats.get(region.id)
        stat = RegionStat.from_heartbeat(request, now, NO_FLOW if known is None else known.flow)
        self._put(region, stat)
        return RegionRecord(region, stat)

    def ask_batch_split(
        self, region: Region, count: int, alloc_ids: Callable[[int], range]
    ) -> list[SplitId]:
        """Ids (from `alloc_ids`) for `count` new regions split off
        `region`: a region id and one peer id per peer of `region`, in the
        order of its peers."""
        check_region(region)
        if not 1 <= count <= MAX_SPLIT_COUNT:
            raise invalid_argument(f"split count must be 1 to {MAX_SPLIT_COUNT}, got {count}")
        if not region.peers:
            raise invalid_argument(f"region {region.id} has no peers")
        known = self._tree.get(region.id)
        if known is None:
            raise PdRequestError(
                PdErrorCode.REGION_NOT_FOUND, f"region {region.id} is not known to the PD"
            )
        _check_not_behind(region, known)
        per_split = 1 + len(region.peers)
        ids = iter(alloc_ids(per_split * count))
        return [
            SplitId(RegionId(next(ids)), tuple(PeerId(next(ids)) for _ in region.peers))
            for _ in range(count)
        ]

    def report_batch_split(self, regions: Sequence[Region]) -> int:
        """Learn the regions a split produced (left to right) before their
        leaders report them. Stale ones are skipped, as heartbeats would be;
        returns how many were applied. A region keeps its known leader if
        that peer is still a member."""
        if len(regions) < 2:
            raise invalid_argument(f"a split produces at least 2 regions, got {len(regions)}")
        for r in regions:
            check_region(r)
        for left, right in itertools.pairwise(regions):
            if not left.end_key or left.end_key != right.start_key:
                raise invalid_argument(
                    f"split regions {left.id} and {right.id} are not adjacent in key order"
                )
        applied = 0
        for r in regions:
            try:
                self._check_not_stale(r, 0)
            except PdRequestError as e:
                log.debug("report_batch_split: skipping %s", e.message)
                continue
            old = self._stats.get(r.id, RegionStat())
            leader = old.leader if old.leader and r.find_peer(old.leader.id) else None
            self._put(r, dataclasses.replace(old, leader=leader))
            applied += 1
        return applied

    def _check_not_stale(self, region: Region, term: int) -> None:
        for other in self._tree.overlapping(region.start_key, region.end_key):
            if other.id != region.id and loses_to_overlap(region.epoch, other.epoch):
                raise PdRequestError(
                    PdErrorCode.STALE_REGION,
                    f"region {region.id} {_epoch(region)} is older than region {other.id} "
                    f"{_epoch(other)} it overlaps",
                )
        known = self._tree.get(region.id)
        if known is None:
            return
        _check_not_behind(region, known)
        known_term = self._stats[region.id].term
        if 0 < term < known_term:
            raise PdRequestError(
                PdErrorCode.STALE_REGION,
                f"region {region.id}: term {term} is older than the PD's {known_term}",
            )

    def _put(self, region: Region, stat: RegionStat) -> None:
        known = self._tree.get(region.id)
        if known is not None:
            self._count(known, self._stats[known.id], -1)
        for removed in self._tree.put(region):
            self._count(removed, self._stats[removed.id], -1)
            del self._stats[removed.id]
            self._dirty.discard(removed.id)
            self._deleted.add(removed.id)
            log.debug("region %d replaced by region %d", removed.id, region.id)
        self._stats[region.id] = stat
        self._count(region, stat, +1)
        if known != region:
            self._dirty.add(region.id)
            self._deleted.discard(region.id)

    def _count(self, region: Region, stat: RegionStat, sign: int) -> None:
        for p in region.peers:
            self._store_peers[p.store_id] += sign
            self._store_size[p.store_id] += sign * stat.weight
        for p in stat.pending_peers:
            self._store_pending[p.store_id] += sign
        if stat.leader is not None:
            led = self._store_led[stat.leader.store_id]
            if sign > 0:
                led[region.id] = stat.flow
            else:
                del led[region.id]

    # -- persistence -------------------------------------------------------------

    def flush(self) -> int:
        """Write the region changes since the last flush in one transaction;
        returns how many records it wrote or deleted. If the write raises,
        the changes stay queued for the next flush."""
        if not (self._dirty or self._deleted):
            return 0
        put = [r for rid in sorted(self._dirty) if (r := self._tree.get(rid)) is not None]
        delete = sorted(self._deleted)
        self._storage.save_regions(put, delete)
        self._dirty.clear()
        self._deleted.clear()
        return len(put) + len(delete)


def check_region(region: Region) -> None:
    """INVALID_ARGUMENT unless `region` is well formed: positive ids, a
    non-empty range, a non-negative epoch, one peer per store."""
    if region.id <= 0:
        raise invalid_argument(f"region id must be > 0, got {region.id}")
    if region.end_key and region.start_key >= region.end_key:
        raise invalid_argument(
            f"region {region.id} has an empty range [{region.start_key!r}, {region.end_key!r})"
        )
    if region.epoch.conf_ver < 0 or region.epoch.version < 0:
        raise invalid_argument(f"region {region.id} has a negative epoch")
    peer_ids = [p.id for p in region.peers]
    store_ids = [p.store_id for p in region.peers]
    if any(i <= 0 for i in peer_ids) or any(s <= 0 for s in store_ids):
        raise invalid_argument(f"region {region.id}: peer and store ids must be > 0")
    if len(set(peer_ids)) != len(peer_ids):
        raise invalid_argument(f"region {region.id}: duplicate peer ids")
    if len(set(store_ids)) != len(store_ids):
        raise invalid_argument(f"region {region.id}: two peers on one store")


def _check_not_behind(region: Region, known: Region) -> None:
    """STALE_REGION if `region`'s epoch is behind `known`, the PD's version
    of the same region."""
    if is_stale(region.epoch, known.epoch):
        raise PdRequestError(
            PdErrorCode.STALE_REGION,
            f"region {region.id}: epoch {_epoch(region)} is older than the PD's {_epoch(known)}",
        )


def _epoch(region: Region) -> str:
    return f"(conf_ver {region.epoch.conf_ver}, version {region.epoch.version})"

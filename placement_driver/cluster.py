"""The PD's cluster metadata and its rules: the pure core.

No trio, no clock, no sockets, no global random: time comes in as an
explicit `now` (seconds), the cluster id from the caller. Durable state is
written through the `MetaStorage` seam, synchronously and BEFORE memory
changes, so a failed write leaves the cluster as it was (the request fails
with an internal error and may be retried). Region metadata is the
exception: the region tree is re-learnt from heartbeats anyway, so changes
are collected and written in batches by `flush_regions` (the shell calls it
periodically and at shutdown).

Refused requests raise `PdRequestError` with a `PdErrorCode`.

Region heartbeat rules (TiKV PD's PreCheckPutRegion; epoch rules from
`kvproto.epoch`, never re-implemented here):

1. a report whose epoch is behind a DIFFERENT region it overlaps
   (`loses_to_overlap`) is stale;
2. a report whose epoch is behind the known region of the same id
   (`is_stale`), or that comes from an older leader term, is stale;
3. otherwise it replaces the region of its id and every region it overlaps.

A stale report changes nothing and is answered with STALE_REGION. The tree
never has overlaps.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from kvproto.epoch import is_stale, loses_to_overlap
from kvproto.metapb import Peer, PeerId, PeerRole, Region, RegionId, Store, StoreId, StoreState
from kvproto.pdpb import PdErrorCode, PeerStats, SplitId, StoreStats
from placement_driver.config import (
    CLUSTER_KEYS,
    SERVER_KEYS,
    ClusterConfig,
    ConfigError,
    cluster_config_from,
    parse_listen_address,
)
from placement_driver.errors import PdRequestError
from placement_driver.id_alloc import DEFAULT_ID_ALLOC_STEP, IdAllocator
from placement_driver.region_tree import RegionTree
from placement_driver.storage import MetaStorage
from placement_driver.stores import OPERATOR_STATES, StoreInfo

__all__ = [
    "MAX_ALLOC_COUNT",
    "MAX_SPLIT_COUNT",
    "Cluster",
    "RegionRecord",
    "RegionReport",
    "RegionStat",
    "StoreTransition",
]

log = logging.getLogger(__name__)

MAX_SPLIT_COUNT = 1000  # new regions per AskBatchSplit
MAX_ALLOC_COUNT = MAX_SPLIT_COUNT * 16  # ids per allocation


@dataclass(frozen=True, slots=True)
class RegionReport:
    """What a region heartbeat says (a pdpb.RegionHeartbeatRequest without
    its header)."""

    region: Region
    leader: Peer | None
    term: int = 0
    approximate_size: int = 0
    approximate_keys: int = 0
    down_peers: tuple[PeerStats, ...] = ()
    pending_peers: tuple[Peer, ...] = ()
    written_bytes: int = 0
    written_keys: int = 0


@dataclass(frozen=True, slots=True)
class RegionStat:
    """What the last accepted heartbeat of a region said besides its
    metadata. Not persisted: a restarted PD knows regions but not leaders."""

    leader: Peer | None = None
    term: int = 0
    approximate_size: int = 0
    approximate_keys: int = 0
    down_peers: tuple[PeerStats, ...] = ()
    pending_peers: tuple[Peer, ...] = ()
    written_bytes: int = 0
    written_keys: int = 0
    last_heartbeat: float | None = None  # None: none since this PD started


@dataclass(frozen=True, slots=True)
class RegionRecord:
    region: Region
    stat: RegionStat

    @property
    def leader(self) -> Peer | None:
        return self.stat.leader


@dataclass(frozen=True, slots=True)
class StoreTransition:
    store_id: StoreId
    old: StoreState
    new: StoreState


class Cluster:
    """Stores, regions, ids and config of one cluster. Single-threaded:
    the shell calls it from one task at a time, never concurrently."""

    def __init__(
        self,
        storage: MetaStorage,
        now: float,
        *,
        config_overrides: Mapping[str, object] | None = None,
        id_alloc_step: int = DEFAULT_ID_ALLOC_STEP,
    ) -> None:
        """Load what `storage` holds. `config_overrides` (from pd.toml and
        flags) win over the stored config; raises ConfigError if the result
        is not valid. Stores loaded get `now` as the base of their
        heartbeat age."""
        self._storage = storage
        meta = storage.load()
        self.cluster_id = meta.cluster_id
        self.ids = IdAllocator(storage, meta.id_bound, id_alloc_step)
        self.config = self._initial_config(meta.config, config_overrides or {})
        self._stores: dict[StoreId, StoreInfo] = {}
        for store in meta.stores:
            info = StoreInfo(store, seen_at=now, operator_state=_operator_state(store.state))
            info.set_state(info.state_at(now, self.config))
            self._stores[store.id] = info
        self._regions = RegionTree()
        self._stats: dict[RegionId, RegionStat] = {}
        # Per store, over the region tree: peers (any role) and pending
        # peers (as the regions' leaders last reported them). Kept by
        # `_put_region` (Invariant: equal to a count over the tree).
        self._store_peers: Counter[StoreId] = Counter()
        self._store_pending: Counter[StoreId] = Counter()
        # Region changes not yet flushed: ids to write (their current
        # version), ids to delete.
        self._dirty: set[RegionId] = set()
        self._deleted: set[RegionId] = set()
        # Oldest version first, so a newer region wins if records overlap.
        for region in sorted(meta.regions, key=lambda r: (r.epoch.version, r.id)):
            try:
                self._check_not_stale(region, 0)
            except PdRequestError as e:
                log.warning("dropping stored region %d: %s", region.id, e.message)
                self._deleted.add(region.id)
                continue
            self._put_region(region, RegionStat())
        self._dirty.clear()

    def _initial_config(
        self, stored: Mapping[str, str], overrides: Mapping[str, object]
    ) -> ClusterConfig:
        known = {k: v for k, v in stored.items() if k in CLUSTER_KEYS}
        for k in stored.keys() - known.keys():
            log.warning("ignoring unknown stored config key %r", k)
        try:
            base = cluster_config_from(known)
        except ConfigError as e:
            log.warning("ignoring the stored config: %s", e)
            base = ClusterConfig()
        config = cluster_config_from(overrides, base) if overrides else base
        for name, value in config.items().items():
            if name in known and known[name] != value:
                log.info(
                    "config %s: %s from pd.toml or flags (stored: %s)", name, value, known[name]
                )
        if config.items() != stored:
            self._storage.save_config(config.items())
        return config

    # -- bootstrap and ids ------------------------------------------------------

    @property
    def is_bootstrapped(self) -> bool:
        return self.cluster_id != 0

    def check_bootstrapped(self) -> None:
        if not self.is_bootstrapped:
            raise PdRequestError(
                PdErrorCode.NOT_BOOTSTRAPPED, "the cluster is not bootstrapped yet"
            )

    def bootstrap(self, store: Store, region: Region, cluster_id: int, now: float) -> None:
        """Accept the first store and the first region (the whole key space,
        one voter on that store) under the new `cluster_id`."""
        if self.is_bootstrapped:
            raise PdRequestError(
                PdErrorCode.ALREADY_BOOTSTRAPPED,
                f"the cluster is already bootstrapped (cluster id {self.cluster_id})",
            )
        if not 0 < cluster_id < 2**64:
            raise ValueError(f"bad cluster id {cluster_id}")
        _check_store(store)
        _check_region(region)
        if region.start_key or region.end_key:
            raise _invalid(
                f"the first region must cover the whole key space, got "
                f"[{region.start_key!r}, {region.end_key!r})"
            )
        if len(region.peers) != 1:
            raise _invalid(f"the first region must have one peer, got {len(region.peers)}")
        peer = region.peers[0]
        if peer.store_id != store.id:
            raise _invalid(
                f"the first region's peer is on store {peer.store_id}, not on store {store.id}"
            )
        if peer.role != PeerRole.VOTER:
            raise _invalid("the first region's peer must be a voter")
        # Ids chosen outside AllocId must never be handed out later.
        self.ids.skip_past(max(store.id, region.id, peer.id))
        meta = dataclasses.replace(store, state=StoreState.UP)
        self._storage.save_bootstrap(cluster_id, meta, region)
        self.cluster_id = cluster_id
        self._stores[store.id] = StoreInfo(meta, seen_at=now)
        self._put_region(region, RegionStat())
        self._dirty.discard(region.id)  # written with the bootstrap
        log.info(
            "bootstrapped cluster %d: store %d at %s, region %d",
            cluster_id,
            store.id,
            store.address,
            region.id,
        )

    def alloc_ids(self, count: int = 1) -> range:
        if not 1 <= count <= MAX_ALLOC_COUNT:
            raise _invalid(f"can allocate 1 to {MAX_ALLOC_COUNT} ids at once, not {count}")
        return self.ids.alloc(count)

    # -- stores -----------------------------------------------------------------

    def stores(self, *, exclude_tombstone: bool = False) -> list[StoreInfo]:
        """Every store, in id order."""
        return [
            s for _, s in sorted(self._stores.items()) if not (exclude_tombstone and s.is_tombstone)
        ]

    def find_store(self, store_id: int) -> StoreInfo | None:
        return self._stores.get(StoreId(store_id))

    def get_store(self, store_id: int) -> StoreInfo:
        """The store; STORE_NOT_FOUND if it is not known."""
        info = self._stores.get(StoreId(store_id))
        if info is None:
            raise PdRequestError(PdErrorCode.STORE_NOT_FOUND, f"store {store_id} is not known")
        return info

    def put_store(self, store: Store, now: float) -> StoreInfo:
        """Register a new store or update the address and labels of a known
        one. The state in `store` is ignored: the PD owns store states."""
        self.check_bootstrapped()
        _check_store(store)
        old = self._stores.get(store.id)
        if old is None and store.id >= self.ids.next_id:
            raise _invalid(f"store id {store.id} was not allocated by this PD (use AllocId)")
        if old is not None and old.is_tombstone:
            raise PdRequestError(
                PdErrorCode.STORE_TOMBSTONE, f"store {store.id} was removed (tombstone)"
            )
        for other in self._stores.values():
            if other.id != store.id and not other.is_tombstone and other.address == store.address:
                raise PdRequestError(
                    PdErrorCode.DUPLICATE_STORE_ADDRESS,
                    f"address {store.address} is used by store {other.id} "
                    f"({other.state.name.lower()}); remove that store first or use another address",
                )
        if old is None:
            info = StoreInfo(dataclasses.replace(store, state=StoreState.UP), seen_at=now)
            self._storage.save_store(info.persisted())
            self._stores[store.id] = info
            log.info("store %d joined at %s", store.id, store.address)
            return info
        meta = dataclasses.replace(store, state=old.state)
        if meta != old.meta:
            new = dataclasses.replace(meta, state=old.operator_state)
            self._storage.save_store(new)
            log.info("store %d updated: %s", store.id, _describe_store(new))
            old.meta = meta
        return old

    def store_heartbeat(self, stats: StoreStats, now: float) -> StoreInfo:
        self.check_bootstrapped()
        info = self.get_store(stats.store_id)
        if info.is_tombstone:
            raise PdRequestError(
                PdErrorCode.STORE_TOMBSTONE, f"store {stats.store_id} was removed (tombstone)"
            )
        for name in ("capacity", "available", "used_size", "region_count", "leader_count"):
            if getattr(stats, name) < 0:
                raise _invalid(f"store stats: {name} is negative")
        info.stats = stats
        info.last_heartbeat = now
        self._set_store_state(info, info.state_at(now, self.config))
        return info

    def update_store_states(self, now: float) -> list[StoreTransition]:
        """Derive every store's state at `now`; returns the changes."""
        changes = []
        for info in self.stores():
            old = info.state
            if self._set_store_state(info, info.state_at(now, self.config)):
                changes.append(StoreTransition(info.id, old, info.state))
        return changes

    def next_store_state_change(self, now: float) -> float | None:
        """The earliest time after `now` at which a store's state changes
        without a heartbeat; None if none will."""
        deadlines = [
            d for s in self._stores.values() if (d := s.next_change(now, self.config)) is not None
        ]
        return min(deadlines, default=None)

    def set_store_state(self, store_id: int, state: StoreState, now: float) -> StoreInfo:
        """An administrator's store state change, persisted before it takes
        effect:

        * OFFLINE: decommission the store (its peers get replaced; it gets
          no new ones); heartbeats no longer change its state;
        * UP: take an Offline store back (its state follows heartbeats again);
        * TOMBSTONE: remove an Offline store that holds no region.

        Disconnected and Down follow from heartbeats and cannot be set; a
        Tombstone store never changes again (STORE_TOMBSTONE)."""
        self.check_bootstrapped()
        info = self.get_store(store_id)
        if info.is_tombstone:
            raise PdRequestError(
                PdErrorCode.STORE_TOMBSTONE, f"store {store_id} was removed (tombstone)"
            )
        if state not in (StoreState.UP, *OPERATOR_STATES):
            raise _invalid(
                f"{state.name} follows from heartbeats and cannot be set; "
                "settable: UP, OFFLINE, TOMBSTONE"
            )
        if state == StoreState.TOMBSTONE:
            if info.operator_state != StoreState.OFFLINE:
                raise _invalid(f"store {store_id} must be made Offline before it is removed")
            count = self.store_region_count(store_id)
            if count:
                raise _invalid(f"store {store_id} still holds {count} regions")
        self._set_operator_state(info, state, now, "by an administrator")
        return info

    def _set_operator_state(self, info: StoreInfo, state: StoreState, now: float, why: str) -> None:
        if state != info.operator_state:
            self._storage.save_store(dataclasses.replace(info.meta, state=state))
            info.operator_state = state
            log.warning("store %d set to %s %s", info.id, state.name, why)
        self._set_store_state(info, info.state_at(now, self.config))

    def bury_empty_offline_stores(self, now: float) -> list[StoreId]:
        """Make every Offline store that no region has a peer on any more a
        Tombstone; returns their ids."""
        buried = []
        for info in self.stores():
            if info.operator_state == StoreState.OFFLINE and not self.store_region_count(info.id):
                self._set_operator_state(
                    info, StoreState.TOMBSTONE, now, "(it was Offline and holds no region)"
                )
                buried.append(info.id)
        return buried

    def store_region_count(self, store_id: int) -> int:
        """Regions with a peer (any role) on the store, in the region tree."""
        return self._store_peers[StoreId(store_id)]

    def store_pending_peer_count(self, store_id: int) -> int:
        """Peers on the store that their regions' leaders last reported
        pending (catching up)."""
        return self._store_pending[StoreId(store_id)]

    def _set_store_state(self, info: StoreInfo, state: StoreState) -> bool:
        if state == info.state:
            return False
        level = logging.INFO if state == StoreState.UP else logging.WARNING
        log.log(level, "store %d is %s (was %s)", info.id, state.name, info.state.name)
        info.set_state(state)
        return True

    # -- regions ----------------------------------------------------------------

    @property
    def region_count(self) -> int:
        return len(self._regions)

    def regions(self) -> Iterator[RegionRecord]:
        """Every region in key order."""
        for region in self._regions:
            yield RegionRecord(region, self._stats[region.id])

    def region_containing(self, key: bytes) -> RegionRecord | None:
        region = self._regions.find(key)
        return None if region is None else RegionRecord(region, self._stats[region.id])

    def region_by_id(self, region_id: int) -> RegionRecord | None:
        region = self._regions.get(RegionId(region_id))
        return None if region is None else RegionRecord(region, self._stats[region.id])

    def get_region(self, key: bytes) -> RegionRecord | None:
        """The region containing `key` (NOT_BOOTSTRAPPED before bootstrap)."""
        self.check_bootstrapped()
        return self.region_containing(key)

    def get_region_by_id(self, region_id: int) -> RegionRecord | None:
        self.check_bootstrapped()
        return self.region_by_id(region_id)

    def scan_regions(self, start_key: bytes, end_key: bytes, limit: int) -> list[RegionRecord]:
        self.check_bootstrapped()
        if limit < 0:
            raise _invalid(f"limit must be >= 0, got {limit}")
        if end_key and end_key < start_key:
            raise _invalid(f"end key {end_key!r} is before start key {start_key!r}")
        return [
            RegionRecord(r, self._stats[r.id])
            for r in self._regions.scan(start_key, end_key, limit)
        ]

    def region_heartbeat(self, report: RegionReport, now: float) -> RegionRecord:
        """Apply a leader's report; raises STALE_REGION if it is stale."""
        self.check_bootstrapped()
        region = report.region
        _check_region(region)
        leader = report.leader
        if leader is None or region.find_peer(leader.id) != leader:
            raise _invalid(f"region {region.id}: the leader {leader} is not one of its peers")
        if leader.is_learner:
            raise _invalid(f"region {region.id}: a learner cannot be the leader")
        store = self.get_store(leader.store_id)
        if store.is_tombstone:
            raise PdRequestError(
                PdErrorCode.STORE_TOMBSTONE, f"store {store.id} was removed (tombstone)"
            )
        for name in ("term", "approximate_size", "approximate_keys"):
            if getattr(report, name) < 0:
                raise _invalid(f"region {region.id}: {name} is negative")
        self._check_not_stale(region, report.term)
        stat = RegionStat(
            leader=leader,
            term=report.term,
            approximate_size=report.approximate_size,
            approximate_keys=report.approximate_keys,
            down_peers=report.down_peers,
            pending_peers=report.pending_peers,
            written_bytes=report.written_bytes,
            written_keys=report.written_keys,
            last_heartbeat=now,
        )
        self._put_region(region, stat)
        return RegionRecord(region, stat)

    def ask_batch_split(self, region: Region, count: int) -> list[SplitId]:
        """Ids for `count` new regions split off `region`: a region id and
        one peer id per peer of `region`, in the order of its peers."""
        self.check_bootstrapped()
        _check_region(region)
        if not 1 <= count <= MAX_SPLIT_COUNT:
            raise _invalid(f"split count must be 1 to {MAX_SPLIT_COUNT}, got {count}")
        if not region.peers:
            raise _invalid(f"region {region.id} has no peers")
        known = self._regions.get(region.id)
        if known is None:
            raise PdRequestError(
                PdErrorCode.REGION_NOT_FOUND, f"region {region.id} is not known to the PD"
            )
        if is_stale(region.epoch, known.epoch):
            raise PdRequestError(
                PdErrorCode.STALE_REGION,
                f"region {region.id}: epoch {_epoch(region)} is older than the PD's "
                f"{_epoch(known)}",
            )
        per_split = 1 + len(region.peers)
        ids = iter(self.alloc_ids(per_split * count))
        return [
            SplitId(RegionId(next(ids)), tuple(PeerId(next(ids)) for _ in region.peers))
            for _ in range(count)
        ]

    def report_batch_split(self, regions: Sequence[Region], now: float) -> int:
        """Learn the regions a split produced (left to right) before their
        leaders report them. Stale ones are skipped, as heartbeats would be;
        returns how many were applied. A region keeps its known leader if
        that peer is still a member."""
        self.check_bootstrapped()
        if len(regions) < 2:
            raise _invalid(f"a split produces at least 2 regions, got {len(regions)}")
        for r in regions:
            _check_region(r)
        for left, right in itertools.pairwise(regions):
            if not left.end_key or left.end_key != right.start_key:
                raise _invalid(
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
            self._put_region(r, dataclasses.replace(old, leader=leader))
            applied += 1
        return applied

    def _check_not_stale(self, region: Region, term: int) -> None:
        for other in self._regions.overlapping(region.start_key, region.end_key):
            if other.id != region.id and loses_to_overlap(region.epoch, other.epoch):
                raise PdRequestError(
                    PdErrorCode.STALE_REGION,
                    f"region {region.id} {_epoch(region)} is older than region {other.id} "
                    f"{_epoch(other)} it overlaps",
                )
        known = self._regions.get(region.id)
        if known is None:
            return
        if is_stale(region.epoch, known.epoch):
            raise PdRequestError(
                PdErrorCode.STALE_REGION,
                f"region {region.id}: epoch {_epoch(region)} is older than the PD's "
                f"{_epoch(known)}",
            )
        known_term = self._stats[region.id].term
        if 0 < term < known_term:
            raise PdRequestError(
                PdErrorCode.STALE_REGION,
                f"region {region.id}: term {term} is older than the PD's {known_term}",
            )

    def _put_region(self, region: Region, stat: RegionStat) -> None:
        known = self._regions.get(region.id)
        if known is not None:
            self._count(known, self._stats[known.id], -1)
        for removed in self._regions.put(region):
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
        for p in stat.pending_peers:
            self._store_pending[p.store_id] += sign

    @property
    def has_unflushed_regions(self) -> bool:
        return bool(self._dirty or self._deleted)

    def flush_regions(self) -> int:
        """Write the region changes since the last flush in one transaction;
        returns how many records it wrote or deleted. If the write raises,
        the changes stay queued for the next flush."""
        if not self.has_unflushed_regions:
            return 0
        put = [r for rid in sorted(self._dirty) if (r := self._regions.get(rid)) is not None]
        delete = sorted(self._deleted)
        self._storage.save_regions(put, delete)
        self._dirty.clear()
        self._deleted.clear()
        return len(put) + len(delete)

    # -- config -----------------------------------------------------------------

    def set_config(self, items: Mapping[str, str]) -> ClusterConfig:
        """Apply config items (text values), all or nothing; persisted
        before it takes effect."""
        for name in items:
            if name in SERVER_KEYS:
                raise PdRequestError(
                    PdErrorCode.UNKNOWN_CONFIG,
                    f"{name} is a start-up option of the PD process (pd.toml or a flag), "
                    "not a cluster config key",
                )
            if name not in CLUSTER_KEYS:
                raise PdRequestError(
                    PdErrorCode.UNKNOWN_CONFIG,
                    f"unknown config key {name!r}; known keys: {', '.join(CLUSTER_KEYS)}",
                )
        try:
            config = cluster_config_from(items, self.config)
        except ConfigError as e:
            raise _invalid(str(e)) from None
        if config != self.config:
            self._storage.save_config(config.items())
            for name, value in items.items():
                log.info("config %s set to %s", name, value)
            self.config = config
        return config


def _operator_state(state: StoreState) -> StoreState:
    return state if state in OPERATOR_STATES else StoreState.UP


def _invalid(message: str) -> PdRequestError:
    return PdRequestError(PdErrorCode.INVALID_ARGUMENT, message)


def _epoch(region: Region) -> str:
    return f"(conf_ver {region.epoch.conf_ver}, version {region.epoch.version})"


def _describe_store(store: Store) -> str:
    labels = ",".join(f"{k}={v}" for k, v in store.labels)
    return f"address {store.address}" + (f", labels {labels}" if labels else "")


def _check_store(store: Store) -> None:
    if store.id <= 0:
        raise _invalid(f"store id must be > 0, got {store.id}")
    try:
        _, port = parse_listen_address(store.address)
    except ValueError as e:
        raise _invalid(f"store {store.id}: bad address: {e}") from None
    if port == 0:
        raise _invalid(f"store {store.id}: address {store.address!r} has port 0")
    keys = [k for k, _ in store.labels]
    if len(set(keys)) != len(keys) or not all(keys):
        raise _invalid(f"store {store.id}: label keys must be non-empty and unique")


def _check_region(region: Region) -> None:
    if region.id <= 0:
        raise _invalid(f"region id must be > 0, got {region.id}")
    if region.end_key and region.start_key >= region.end_key:
        raise _invalid(
            f"region {region.id} has an empty range [{region.start_key!r}, {region.end_key!r})"
        )
    if region.epoch.conf_ver < 0 or region.epoch.version < 0:
        raise _invalid(f"region {region.id} has a negative epoch")
    peer_ids = [p.id for p in region.peers]
    store_ids = [p.store_id for p in region.peers]
    if any(i <= 0 for i in peer_ids) or any(s <= 0 for s in store_ids):
        raise _invalid(f"region {region.id}: peer and store ids must be > 0")
    if len(set(peer_ids)) != len(peer_ids):
        raise _invalid(f"region {region.id}: duplicate peer ids")
    if len(set(store_ids)) != len(store_ids):
        raise _invalid(f"region {region.id}: two peers on one store")

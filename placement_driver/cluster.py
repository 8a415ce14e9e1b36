"""The PD's cluster metadata: the pure core, and the facade the service,
the operator controller, the HTTP API and the tests call.

No trio, no clock, no sockets, no global random: time comes in as an
explicit `now` (seconds), the cluster id from the caller. Durable state is
written through the `MetaStorage` seam, synchronously and BEFORE memory
changes, so a failed write leaves the cluster as it was (the request fails
with an internal error and may be retried). Region metadata is the
exception: it is written in batches by `flush_regions` (see `regions`).

`Cluster` owns the cluster id, the id allocator and the cluster config,
and refuses requests before bootstrap (NOT_BOOTSTRAPPED); the rest it
hands to the two parts that own their state:

* `stores.Stores`: the stores and their lifecycle (joining, heartbeats,
  derived states, decommissioning, burying empty Offline stores);
* `regions.Regions`: the region tree and what each leader last reported
  (region heartbeats and their staleness rules, batch splits, flushing),
  with the per-store peer counts and leaders' flows over the tree.

Refused requests raise `PdRequestError` with a `PdErrorCode`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Final

from kvproto import pdpb
from kvproto.metapb import PeerRole, Region, Store, StoreId, StoreState
from kvproto.pdpb import PdErrorCode, SplitId, StoreStats
from placement_driver.config import (
    CLUSTER_KEYS,
    SERVER_KEYS,
    ClusterConfig,
    ConfigError,
    cluster_config_from,
)
from placement_driver.errors import PdRequestError, invalid_argument
from placement_driver.id_alloc import DEFAULT_ID_ALLOC_STEP, IdAllocator
from placement_driver.regions import MAX_SPLIT_COUNT, Flow, RegionRecord, Regions, check_region
from placement_driver.storage import MetaStorage
from placement_driver.stores import StoreInfo, Stores, StoreTransition, check_store

__all__ = ["MAX_ALLOC_COUNT", "Cluster"]

log = logging.getLogger(__name__)

MAX_ALLOC_COUNT: Final = MAX_SPLIT_COUNT * 16  # ids per allocation


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
        self._regions = Regions(storage, meta.regions)
        self._stores = Stores(
            storage,
            meta.stores,
            now,
            config=lambda: self.config,
            region_count=self._regions.peer_count,
            removed=meta.removed_stores,
            replaced=meta.replaced_stores,
        )

    def _initial_config(
        self, stored: Mapping[str, str], overrides: Mapping[str, object]
    ) -> ClusterConfig:
        known = {k: v for k, v in stored.items() if k in CLUSTER_KEYS}
        for k in stored.keys() - known.keys():
            log.warning("ignoring unknown stored config key %r", k)
        # Key by key: a value stored before its key had a range (or by an
        # older version), now out of range, must not reach the heartbeat
        # answers (a number beyond 64 bits made every store refuse them),
        # nor cost the other keys their stored values.
        for name, value in list(known.items()):
            try:
                cluster_config_from({name: value}, check_rules=False)
            except ConfigError as e:
                del known[name]
                log.error(
                    "stored config %s is refused, using the default %s instead: %s "
                    "(set it again with SetConfig or POST /pd/api/v1/config)",
                    name,
                    ClusterConfig().items()[name],
                    e,
                )
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
        check_store(store)
        check_region(region)
        if region.start_key or region.end_key:
            raise invalid_argument(
                f"the first region must cover the whole key space, got "
                f"[{region.start_key!r}, {region.end_key!r})"
            )
        if len(region.peers) != 1:
            raise invalid_argument(f"the first region must have one peer, got {len(region.peers)}")
        peer = region.peers[0]
        if peer.store_id != store.id:
            raise invalid_argument(
                f"the first region's peer is on store {peer.store_id}, not on store {store.id}"
            )
        if peer.role != PeerRole.VOTER:
            raise invalid_argument("the first region's peer must be a voter")
        # Ids chosen outside AllocId must never be handed out later.
        self.ids.skip_past(max(store.id, region.id, peer.id))
        meta = dataclasses.replace(store, state=StoreState.UP)
        self._storage.save_bootstrap(cluster_id, meta, region)
        self.cluster_id = cluster_id
        self._stores.add_bootstrapped(meta, now)
        self._regions.add_bootstrapped(region)
        log.info(
            "bootstrapped cluster %d: store %d at %s, region %d",
            cluster_id,
            store.id,
            store.address,
            region.id,
        )

    def alloc_ids(self, count: int = 1) -> range:
        if not 1 <= count <= MAX_ALLOC_COUNT:
            raise invalid_argument(f"can allocate 1 to {MAX_ALLOC_COUNT} ids at once, not {count}")
        return self.ids.alloc(count)

    # -- stores (`Stores`) ------------------------------------------------------

    def stores(self, *, exclude_tombstone: bool = False) -> list[StoreInfo]:
        """Every store, in id order."""
        return self._stores.all(exclude_tombstone=exclude_tombstone)

    def find_store(self, store_id: int) -> StoreInfo | None:
        return self._stores.find(store_id)

    def get_store(self, store_id: int) -> StoreInfo:
        """The store; STORE_NOT_FOUND if it is not known."""
        return self._stores.get(store_id)

    def put_store(self, store: Store, now: float) -> StoreInfo:
        """Register a new store or update the address and labels of a known
        one. The state in `store` is ignored: the PD owns store states."""
        self.check_bootstrapped()
        return self._stores.put(store, now, next_id=self.ids.next_id)

    def replace_store(self, store: Store, replaced: int, now: float) -> StoreInfo:
        """Register a new store in the place of store `replaced`, whose data
        was lost (`Stores.replace`): `replaced` becomes a Tombstone, and the
        replica checker re-creates its peers."""
        self.check_bootstrapped()
        return self._stores.replace(store, replaced, now, next_id=self.ids.next_id)

    def store_replacement(self, store_id: int) -> tuple[StoreId | None, StoreId | None]:
        """(the store `store_id` replaced, the store that replaced it); None
        where there is none."""
        return self._stores.replacement_of(store_id), self._stores.replaced_by(store_id)

    def store_heartbeat(self, stats: StoreStats, now: float) -> StoreInfo:
        self.check_bootstrapped()
        return self._stores.heartbeat(stats, now)

    def update_store_states(self, now: float) -> list[StoreTransition]:
        """Derive every store's state at `now`; returns the changes."""
        return self._stores.update_states(now)

    def next_store_state_change(self, now: float) -> float | None:
        """The earliest time after `now` at which a store's state changes
        without a heartbeat; None if none will."""
        return self._stores.next_state_change(now)

    def set_store_state(
        self, store_id: int, state: StoreState, now: float, *, targeted: Collection[StoreId] = ()
    ) -> StoreInfo:
        """An administrator's store state change (`Stores.set_state`):
        OFFLINE (while `max_replicas` other stores are Up), UP again, or
        TOMBSTONE for an Offline store that holds no region and is not in
        `targeted` (the stores running operators target)."""
        self.check_bootstrapped()
        return self._stores.set_state(store_id, state, now, targeted=targeted)

    def remove_tombstone_stores(self, store_id: int | None = None) -> list[StoreInfo]:
        """Take Tombstone stores off the store list (`Stores.remove`): the
        one given (STORE_NOT_FOUND, FAILED_PRECONDITION if it is not a
        Tombstone), or every Tombstone store. Returns them."""
        self.check_bootstrapped()
        if store_id is not None:
            return [self._stores.remove(store_id)]
        return [self._stores.remove(s.id) for s in self.stores() if s.is_tombstone]

    def bury_empty_offline_stores(
        self, now: float, *, keep: Collection[StoreId] = ()
    ) -> list[StoreId]:
        """Make every Offline store that no region has a peer on any more a
        Tombstone, but those in `keep` (stores running operators target);
        returns their ids."""
        return self._stores.bury_empty_offline(now, keep=keep)

    def store_region_count(self, store_id: int) -> int:
        """Regions with a peer (any role) on the store, in the region tree."""
        return self._regions.peer_count(store_id)

    def store_region_size(self, store_id: int) -> int:
        """The weights (`RegionStat.weight`: approximate size in MiB, at
        least 1) of the regions with a peer on the store, summed."""
        return self._regions.peer_size(store_id)

    def store_leader_count(self, store_id: int) -> int:
        """Regions whose leader, as last reported, is on the store."""
        return self._regions.leader_count(store_id)

    def store_pending_peer_count(self, store_id: int) -> int:
        """Peers on the store that their regions' leaders last reported
        pending (catching up)."""
        return self._regions.pending_peer_count(store_id)

    def store_leader_flow(self, store_id: int) -> Flow:
        """The client traffic per second of the regions led on the store:
        the sum of their flows as their leaders last reported them."""
        return self._regions.leader_flow(store_id)

    # -- regions (`Regions`) ----------------------------------------------------

    @property
    def region_count(self) -> int:
        return len(self._regions)

    def regions(self) -> Iterator[RegionRecord]:
        """Every region in key order."""
        return iter(self._regions)

    def region_containing(self, key: bytes) -> RegionRecord | None:
        return self._regions.containing(key)

    def region_by_id(self, region_id: int) -> RegionRecord | None:
        return self._regions.by_id(region_id)

    def get_region(self, key: bytes) -> RegionRecord | None:
        """The region containing `key` (NOT_BOOTSTRAPPED before bootstrap)."""
        self.check_bootstrapped()
        return self._regions.containing(key)

    def get_region_by_id(self, region_id: int) -> RegionRecord | None:
        self.check_bootstrapped()
        return self._regions.by_id(region_id)

    def scan_regions(self, start_key: bytes, end_key: bytes, limit: int) -> list[RegionRecord]:
        self.check_bootstrapped()
        return self._regions.scan(start_key, end_key, limit)

    def region_heartbeat(self, request: pdpb.RegionHeartbeatRequest, now: float) -> RegionRecord:
        """Apply a leader's report (its header is not looked at); raises
        STALE_REGION if it is stale."""
        self.check_bootstrapped()
        return self._regions.heartbeat(request, now, self._stores.get_live)

    def ask_batch_split(self, region: Region, count: int) -> list[SplitId]:
        """Ids for `count` new regions split off `region`: a region id and
        one peer id per peer of `region`, in the order of its peers."""
        self.check_bootstrapped()
        return self._regions.ask_batch_split(region, count, self.alloc_ids)

    def report_batch_split(self, regions: Sequence[Region], now: float) -> int:
        """Learn the regions a split produced (left to right) before their
        leaders report them; returns how many were applied (stale ones are
        skipped). STORE_TOMBSTONE if a peer of them is on a removed store:
        the report comes from one of their peers' stores (the leader's),
        and a removed store holds no region, so it is a removed store
        speaking, or one the PD must not learn peers on."""
        self.check_bootstrapped()
        for r in regions:
            for p in r.peers:
                self._stores.check_not_removed(p.store_id)
        return self._regions.report_batch_split(regions)

    def flush_regions(self) -> int:
        """Write the region changes since the last flush in one transaction;
        returns how many records it wrote or deleted. If the write raises,
        the changes stay queued for the next flush."""
        return self._regions.flush()

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
                    f"unknown config key {_short(name)}; known keys: {', '.join(CLUSTER_KEYS)}",
                )
        try:
            config = cluster_config_from(items, self.config)
        except ConfigError as e:
            raise invalid_argument(str(e)) from None
        if config != self.config:
            self._storage.save_config(config.items())
            for name, value in items.items():
                log.info("config %s set to %s", name, value)
            self.config = config
        return config


def _short(name: str, limit: int = 60) -> str:
    """A key name from a request, quoted and cut to about `limit` characters."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(name)} characters)"

"""Stores as the PD sees them, and the store state machine.

States (metapb.StoreState):

* Up, Disconnected and Down follow from the age of the last heartbeat
  (or, for a store that has not sent one since this PD started, from when
  the PD learnt of it, so that a restarted PD gives every store a full
  grace period):

      age <  store_disconnect_time              -> Up
      age <  max_store_down_time                -> Disconnected
      otherwise                                 -> Down

  A heartbeat makes the store Up again. Disconnected means "do not plan new
  operators on it"; Down means "replace its replicas" (checkers, later).
* Offline (being drained) and Tombstone (removed) are set by an
  administrator (`Stores.set_state`; an Offline store that no region has a
  peer on any more, and that no running operator targets, is made
  Tombstone by `Stores.bury_empty_offline`) and kept as they are, whatever
  the heartbeats say. Only these "operator
  states" are persisted; the others are derived.
* A store whose data was lost (its disk, its data directory wiped) is
  replaced (`Stores.replace`, the store flag `--replace-store ID`): a new
  store, with a new id, registers at its address, and the old one becomes
  a Tombstone at once, though regions still have peers on it: the replica
  checker treats them as dead and re-creates them (on the new store too).
  Refused while the old store is alive (it heartbeated within
  `store_disconnect_time`) or if it is at another address. The
  replacement is persisted with both records and shown by the admin API.
* A Tombstone store may be taken off the store list (`Stores.remove`):
  its record is deleted, and its id is remembered as removed, so that its
  process, started again on its old data directory, is refused
  (STORE_TOMBSTONE) rather than welcomed back as a new store under its old
  id (a new store gets a new id from the allocator).

`StoreInfo` is one store; `Stores` is every store of the cluster and their
lifecycle. Pure: time comes in as an explicit `now` (seconds on the
shell's clock).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from kvproto.metapb import Store, StoreId, StoreState
from kvproto.pdpb import PdErrorCode, StoreStats
from placement_driver.config import ClusterConfig, parse_listen_address
from placement_driver.errors import PdRequestError, failed_precondition, invalid_argument
from placement_driver.storage import MetaStorage

__all__ = ["OPERATOR_STATES", "StoreInfo", "StoreTransition", "Stores", "check_store"]

log = logging.getLogger(__name__)

# States that heartbeats do not change.
OPERATOR_STATES = frozenset({StoreState.OFFLINE, StoreState.TOMBSTONE})


@dataclass(slots=True)
class StoreInfo:
    """One store. Mutated by `Stores` only.

    Invariant: `meta.state` is the current state; `operator_state` is UP,
    OFFLINE or TOMBSTONE, and equals `meta.state` unless that is UP.
    """

    meta: Store
    # When this PD learnt of the store (start or PutStore): the base of the
    # heartbeat age until the first heartbeat.
    seen_at: float
    operator_state: StoreState = StoreState.UP
    stats: StoreStats | None = None
    last_heartbeat: float | None = None

    @property
    def id(self) -> StoreId:
        return self.meta.id

    @property
    def address(self) -> str:
        return self.meta.address

    @property
    def state(self) -> StoreState:
        return self.meta.state

    @property
    def is_tombstone(self) -> bool:
        return self.meta.state == StoreState.TOMBSTONE

    @property
    def last_seen(self) -> float:
        return self.seen_at if self.last_heartbeat is None else self.last_heartbeat

    def persisted(self) -> Store:
        """The record to store: the operator state, not the derived one."""
        return dataclasses.replace(self.meta, state=self.operator_state)

    def state_at(self, now: float, config: ClusterConfig) -> StoreState:
        if self.operator_state in OPERATOR_STATES:
            return self.operator_state
        # Compare against the same sums `next_change` returns, so that
        # waking up at that deadline always sees the new state.
        base = self.last_seen
        if now >= base + config.max_store_down_time:
            return StoreState.DOWN
        if now >= base + config.store_disconnect_time:
            return StoreState.DISCONNECTED
        return StoreState.UP

    def next_change(self, now: float, config: ClusterConfig) -> float | None:
        """When `state_at` will next change without a heartbeat, if ever."""
        if self.operator_state in OPERATOR_STATES:
            return None
        base = self.last_seen
        for deadline in (base + config.store_disconnect_time, base + config.max_store_down_time):
            if now < deadline:
                return deadline
        return None

    def set_state(self, state: StoreState) -> None:
        if state != self.meta.state:
            self.meta = dataclasses.replace(self.meta, state=state)


@dataclass(frozen=True, slots=True)
class StoreTransition:
    store_id: StoreId
    old: StoreState
    new: StoreState


class Stores:
    """Every store of the cluster, by id, and their lifecycle: joining,
    heartbeats, the states derived from them, decommissioning and removal.
    A durable change (a new store, a new address or labels, an operator
    state) is written through `storage` before memory changes.

    It reads two things of the rest of the cluster, given as functions:
    the current cluster `config` (its heartbeat timeouts) and
    `region_count`, how many regions have a peer on a store (a store may
    become a Tombstone only when none has)."""

    def __init__(
        self,
        storage: MetaStorage,
        stored: Iterable[Store],
        now: float,
        *,
        config: Callable[[], ClusterConfig],
        region_count: Callable[[int], int],
        removed: Iterable[int] = (),
        replaced: Mapping[int, int] | None = None,
    ) -> None:
        """Load the stored stores, the ids of the removed ones and the
        replacements (old id -> new id); `now` is the base of their
        heartbeat age."""
        self._storage = storage
        self._config = config
        self._region_count = region_count
        self._removed = {StoreId(i) for i in removed}
        self._replaced = {StoreId(o): StoreId(n) for o, n in (replaced or {}).items()}
        self._by_id: dict[StoreId, StoreInfo] = {}
        for store in stored:
            info = StoreInfo(store, seen_at=now, operator_state=_operator_state(store.state))
            info.set_state(info.state_at(now, config()))
            self._by_id[store.id] = info

    # -- reading ------------------------------------------------------------------

    def all(self, *, exclude_tombstone: bool = False) -> list[StoreInfo]:
        """Every store, in id order."""
        return [
            s for _, s in sorted(self._by_id.items()) if not (exclude_tombstone and s.is_tombstone)
        ]

    def find(self, store_id: int) -> StoreInfo | None:
        return self._by_id.get(StoreId(store_id))

    def get(self, store_id: int) -> StoreInfo:
        """The store; STORE_NOT_FOUND if it is not known (or was taken off
        the list)."""
        info = self._by_id.get(StoreId(store_id))
        if info is None:
            gone = " (it was removed)" if store_id in self._removed else ""
            raise PdRequestError(
                PdErrorCode.STORE_NOT_FOUND, f"store {store_id} is not known{gone}"
            )
        return info

    def get_live(self, store_id: int) -> StoreInfo:
        """The store; STORE_TOMBSTONE if it was removed (Tombstone, or
        taken off the list), STORE_NOT_FOUND if it is not known."""
        self.check_not_removed(store_id)
        return self.get(store_id)

    def check_not_removed(self, store_id: int) -> None:
        """STORE_TOMBSTONE if the store was removed (Tombstone, or taken
        off the list); an unknown id passes."""
        info = self._by_id.get(StoreId(store_id))
        if store_id in self._removed or (info is not None and info.is_tombstone):
            raise _removed(store_id)

    def replaced_by(self, store_id: int) -> StoreId | None:
        """The store that replaced `store_id` (its data was lost), if one did."""
        return self._replaced.get(StoreId(store_id))

    def replacement_of(self, store_id: int) -> StoreId | None:
        """The store `store_id` replaced, if it is a replacement."""
        return next((old for old, new in self._replaced.items() if new == store_id), None)

    def next_state_change(self, now: float) -> float | None:
        """The earliest time after `now` at which a store's state changes
        without a heartbeat; None if none will."""
        config = self._config()
        deadlines = [
            d for s in self._by_id.values() if (d := s.next_change(now, config)) is not None
        ]
        return min(deadlines, default=None)

    # -- changes ------------------------------------------------------------------

    def add_bootstrapped(self, meta: Store, now: float) -> None:
        """The first store, already written with the bootstrap."""
        self._by_id[meta.id] = StoreInfo(meta, seen_at=now)

    def put(self, store: Store, now: float, *, next_id: int) -> StoreInfo:
        """Register a new store (its id below `next_id`, the allocator's)
        or update the address and labels of a known one. The state in
        `store` is ignored: the PD owns store states."""
        check_store(store)
        self.check_not_removed(store.id)
        old = self._by_id.get(store.id)
        if old is None and store.id >= next_id:
            raise invalid_argument(
                f"store id {store.id} was not allocated by this PD (use AllocId)"
            )
        self._check_address_free(store)
        if old is None:
            info = StoreInfo(dataclasses.replace(store, state=StoreState.UP), seen_at=now)
            self._storage.save_store(info.persisted())
            self._by_id[store.id] = info
            log.info("store %d joined at %s", store.id, store.address)
            return info
        meta = dataclasses.replace(store, state=old.state)
        if meta != old.meta:
            new = dataclasses.replace(meta, state=old.operator_state)
            self._storage.save_store(new)
            log.info("store %d updated: %s", store.id, _describe(new))
            old.meta = meta
        return old

    def replace(self, store: Store, replaced: int, now: float, *, next_id: int) -> StoreInfo:
        """Register `store` (a new id below `next_id`) at the address of
        store `replaced`, whose data was lost, and make `replaced` a
        Tombstone: persisted together, then in memory. Accepted again for
        the same pair (a store retrying after a lost answer). Refused:
        STORE_NOT_FOUND for an unknown `replaced`; FAILED_PRECONDITION
        while it is alive (heard from within `store_disconnect_time`: a
        live store is never replaced), once it is a Tombstone, or once
        another store replaced it; INVALID_ARGUMENT if it is at another
        address than `store` or `store` is not a new store."""
        check_store(store)
        done = self._replaced.get(StoreId(replaced))
        if done == store.id:
            return self.get(store.id)
        if done is not None:
            raise failed_precondition(
                f"store {replaced} was already replaced by store {done}: nothing to replace"
            )
        if store.id == replaced or store.id in self._by_id or store.id in self._removed:
            raise invalid_argument(
                f"store {store.id} is not a new store: a replacement joins with a new id"
            )
        if store.id >= next_id:
            raise invalid_argument(
                f"store id {store.id} was not allocated by this PD (use AllocId)"
            )
        old = self.get(replaced)
        if old.is_tombstone:
            raise failed_precondition(
                f"store {replaced} is already a Tombstone: its address is free, "
                "join without replacing it"
            )
        if old.address != store.address:
            raise invalid_argument(
                f"store {replaced} is at {old.address}, not at {store.address}: "
                "a replacement takes the address of the store it replaces "
                "(check the store id and the advertised address)"
            )
        config = self._config()
        age = now - old.last_seen
        if age < config.store_disconnect_time:
            heard = (
                f"its last heartbeat was {age:.1f} s ago"
                if old.last_heartbeat is not None
                else f"this PD started {age:.1f} s ago and has not heard from it yet"
            )
            raise failed_precondition(
                f"store {replaced} may be alive ({heard}): a live store is never replaced; "
                f"stop its process, and retry once it has been silent for "
                f"store_disconnect_time ({config.store_disconnect_time:g} s)"
            )
        new = StoreInfo(dataclasses.replace(store, state=StoreState.UP), seen_at=now)
        self._check_address_free(store, ignore=old.id)
        self._storage.save_replacement(
            dataclasses.replace(old.meta, state=StoreState.TOMBSTONE), new.persisted()
        )
        self._by_id[store.id] = new
        self._replaced[old.id] = store.id
        old.operator_state = StoreState.TOMBSTONE
        self._follow(old, now)
        log.warning(
            "store %d replaced by store %d at %s (its data was lost): store %d is a "
            "Tombstone, and the %d regions with a peer on it get a new one",
            old.id,
            store.id,
            store.address,
            old.id,
            self._region_count(old.id),
        )
        return new

    def _check_address_free(self, store: Store, *, ignore: int = 0) -> None:
        """DUPLICATE_STORE_ADDRESS if a store other than `store` (and
        `ignore`) that is not a Tombstone has `store`'s address."""
        for other in self._by_id.values():
            if (
                other.id not in (store.id, ignore)
                and not other.is_tombstone
                and other.address == store.address
            ):
                raise PdRequestError(
                    PdErrorCode.DUPLICATE_STORE_ADDRESS,
                    f"address {store.address} is used by store {other.id} "
                    f"({other.state.name.lower()}); remove that store first or use another address",
                )

    def heartbeat(self, stats: StoreStats, now: float) -> StoreInfo:
        info = self.get_live(stats.store_id)
        for name in ("capacity", "available", "used_size", "region_count", "leader_count"):
            if getattr(stats, name) < 0:
                raise invalid_argument(f"store stats: {name} is negative")
        info.stats = stats
        info.last_heartbeat = now
        self._follow(info, now)
        return info

    def update_states(self, now: float) -> list[StoreTransition]:
        """Derive every store's state at `now`; returns the changes."""
        changes = []
        for info in self.all():
            old = info.state
            if self._follow(info, now):
                changes.append(StoreTransition(info.id, old, info.state))
        return changes

    def set_state(
        self, store_id: int, state: StoreState, now: float, *, targeted: Collection[StoreId] = ()
    ) -> StoreInfo:
        """An administrator's store state change, persisted before it takes
        effect:

        * OFFLINE: decommission the store (its peers get replaced; it gets
          no new ones); heartbeats no longer change its state. Refused while
          fewer than `max_replicas` other stores are Up: its peers would
          have nowhere to go, and regions would stay short of voters;
        * UP: take an Offline store back (its state follows heartbeats again);
        * TOMBSTONE: remove an Offline store that holds no region and that
          no running operator targets (`targeted`: an order already sent may
          yet put a peer there).

        Disconnected and Down follow from heartbeats and cannot be set
        (INVALID_ARGUMENT); what the cluster's state refuses is
        FAILED_PRECONDITION; a Tombstone store never changes again
        (STORE_TOMBSTONE)."""
        info = self.get_live(store_id)
        if state not in (StoreState.UP, *OPERATOR_STATES):
            raise invalid_argument(
                f"{state.name} follows from heartbeats and cannot be set; "
                "settable: UP, OFFLINE, TOMBSTONE"
            )
        if state == StoreState.OFFLINE and info.operator_state != StoreState.OFFLINE:
            self._check_can_drain(info)
        if state == StoreState.TOMBSTONE:
            if info.operator_state != StoreState.OFFLINE:
                raise failed_precondition(
                    f"store {store_id} must be made Offline before it is removed"
                )
            count = self._region_count(store_id)
            if count:
                raise failed_precondition(f"store {store_id} still holds {count} regions")
            if info.id in targeted:
                raise failed_precondition(
                    f"a running operator still puts a peer or the leadership on store {store_id}"
                )
        self._set_operator_state(info, state, now, "by an administrator")
        return info

    def _check_can_drain(self, info: StoreInfo) -> None:
        """FAILED_PRECONDITION unless `max_replicas` Up stores remain
        without `info`."""
        wanted = self._config().max_replicas
        up = [s.id for s in self.all() if s.id != info.id and s.state == StoreState.UP]
        if len(up) < wanted:
            others = ", ".join(map(str, up)) or "none"
            raise failed_precondition(
                f"store {info.id} cannot be made Offline: {len(up)} other stores are Up "
                f"({others}) and max_replicas is {wanted}; its peers would have nowhere to go "
                "(add a store, or lower max_replicas, first)"
            )

    def remove(self, store_id: int) -> StoreInfo:
        """Take a Tombstone store off the list (persisted first); its id
        stays refused. STORE_NOT_FOUND if unknown, FAILED_PRECONDITION if
        it is not a Tombstone."""
        info = self.get(store_id)
        if not info.is_tombstone:
            raise failed_precondition(
                f"store {store_id} is {info.state.name.capitalize()}: only a Tombstone store "
                "can be removed from the store list (make it Offline; it becomes Tombstone "
                "once it holds no region)"
            )
        self._storage.remove_store(info.id)
        del self._by_id[info.id]
        self._removed.add(info.id)
        log.warning("store %d (tombstone) removed from the store list", info.id)
        return info

    def bury_empty_offline(self, now: float, *, keep: Collection[StoreId] = ()) -> list[StoreId]:
        """Make every Offline store that no region has a peer on any more a
        Tombstone; returns their ids. Stores in `keep` stay Offline: running
        operators target them, and the region tree cannot show a peer an
        order already sent is about to add."""
        buried = []
        for info in self.all():
            if (
                info.operator_state == StoreState.OFFLINE
                and info.id not in keep
                and not self._region_count(info.id)
            ):
                self._set_operator_state(
                    info, StoreState.TOMBSTONE, now, "(it was Offline and holds no region)"
                )
                buried.append(info.id)
        return buried

    def _set_operator_state(self, info: StoreInfo, state: StoreState, now: float, why: str) -> None:
        if state != info.operator_state:
            self._storage.save_store(dataclasses.replace(info.meta, state=state))
            info.operator_state = state
            log.warning("store %d set to %s %s", info.id, state.name, why)
        self._follow(info, now)

    def _follow(self, info: StoreInfo, now: float) -> bool:
        """Set the store's state to the one derived at `now`; whether it
        changed."""
        state = info.state_at(now, self._config())
        if state == info.state:
            return False
        level = logging.INFO if state == StoreState.UP else logging.WARNING
        log.log(level, "store %d is %s (was %s)", info.id, state.name, info.state.name)
        info.set_state(state)
        return True


def check_store(store: Store) -> None:
    """INVALID_ARGUMENT unless `store` is well formed: a positive id, an
    address with a port, unique non-empty label keys."""
    if store.id <= 0:
        raise invalid_argument(f"store id must be > 0, got {store.id}")
    try:
        _, port = parse_listen_address(store.address)
    except ValueError as e:
        raise invalid_argument(f"store {store.id}: bad address: {e}") from None
    if port == 0:
        raise invalid_argument(f"store {store.id}: address {store.address!r} has port 0")
    keys = [k for k, _ in store.labels]
    if len(set(keys)) != len(keys) or not all(keys):
        raise invalid_argument(f"store {store.id}: label keys must be non-empty and unique")


def _removed(store_id: int) -> PdRequestError:
    return PdRequestError(
        PdErrorCode.STORE_TOMBSTONE,
        f"store {store_id} was removed from the cluster (tombstone); "
        "a removed store never comes back: start it with an empty data directory "
        "to join as a new store",
    )


def _operator_state(state: StoreState) -> StoreState:
    return state if state in OPERATOR_STATES else StoreState.UP


def _describe(store: Store) -> str:
    labels = ",".join(f"{k}={v}" for k, v in store.labels)
    return f"address {store.address}" + (f", labels {labels}" if labels else "")

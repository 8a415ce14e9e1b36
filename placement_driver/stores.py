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
* Offline (being drained) and Tombstone (removed) are set by operators
  (later issue) and kept as they are, whatever the heartbeats say. Only
  these "operator states" are persisted; the others are derived.

Pure: time comes in as an explicit `now` (seconds on the shell's clock).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvproto.metapb import Store, StoreId, StoreState
from kvproto.pdpb import StoreStats
from placement_driver.config import ClusterConfig

__all__ = ["OPERATOR_STATES", "StoreInfo"]

# States that heartbeats do not change.
OPERATOR_STATES = frozenset({StoreState.OFFLINE, StoreState.TOMBSTONE})


@dataclass(slots=True)
class StoreInfo:
    """One store. Mutated by `Cluster` only.

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

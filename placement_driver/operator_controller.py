"""The operator controller: which operators run, and what each region's
leader is told. Pure: no trio, no clock (`now` comes in), called from one
task at a time like `Cluster`.

Rules:

* At most one running operator per region; adding a second one is refused
  (`OperatorExistsError`), whoever asks.
* Limits: operators of the replica checker run at most
  `replica_schedule_limit` at once (0 turns the checker off), those of the
  schedulers (`schedulers`) `leader_schedule_limit` (leader transfers) and
  `region_schedule_limit` (replica moves); an administrator's operators
  (split, transfer-leader, add-peer, remove-peer, transfer-peer:
  `admin_operators`) are not limited. Per store, the choice of target
  stores honours `max_snapshot_count` and `max_pending_peer_count`,
  counting the operators still running (`OpInfluence`).
* It is the PD's `OperatorHook`: on each accepted region heartbeat it
  advances the region's operator with the report and the current store
  states (steps done, success, cancel: see `operators`) and answers its
  current step; a region without one gets the replica checker run on it
  (within the limit), and the first step of the new operator at once.
* `patrol` (periodically, from the shell): times out operators whose step is
  past its deadline, cancels those whose region left the region tree,
  buries Offline stores that hold no region any more (Tombstone) unless a
  running operator still targets them (an order it sent may yet put a peer
  there: the store stays Offline until the operator ends), and runs the
  replica checker over every region heard from since this PD started.
* Timeouts per step (`OperatorTimeouts`): generous defaults, 1 min for a
  step that moves no data, 10 min for one that needs a snapshot.
* Finished operators (success, timeout, canceled) are kept in a bounded
  history, oldest first; the oldest is dropped when it is full. Operators
  are not persisted: a restarted PD starts with none, and the checker
  picks up whatever a half-done operator left (e.g. a learner).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from kvproto import pdpb
from kvproto.metapb import RegionId, StoreId, StoreState
from kvproto.pdpb import PdErrorCode
from placement_driver.admin_operators import plan_admin_operator
from placement_driver.cluster import Cluster
from placement_driver.errors import OperatorExistsError, PdRequestError, invalid_argument
from placement_driver.operators import (
    Operator,
    OperatorKind,
    OperatorStatus,
    OperatorTimeouts,
    SplitRegion,
    StoreStateOf,
)
from placement_driver.region_check import OpInfluence
from placement_driver.regions import MAX_SPLIT_COUNT, RegionRecord
from placement_driver.replica_checker import check_replicas

__all__ = ["DEFAULT_HISTORY_SIZE", "OperatorController", "PatrolResult"]

log = logging.getLogger(__name__)

DEFAULT_HISTORY_SIZE: Final = 256


@dataclass(frozen=True, slots=True)
class PatrolResult:
    created: tuple[Operator, ...] = ()
    finished: tuple[Operator, ...] = ()  # timed out or canceled by this patrol
    buried: tuple[StoreId, ...] = ()  # stores made Tombstone


class OperatorController:
    def __init__(
        self,
        history_size: int = DEFAULT_HISTORY_SIZE,
        timeouts: OperatorTimeouts | None = None,
    ) -> None:
        if history_size < 1:
            raise ValueError(f"history size must be >= 1, got {history_size}")
        self.timeouts = timeouts or OperatorTimeouts()
        self._running: dict[RegionId, Operator] = {}
        # Regions whose running operator no heartbeat has answered yet.
        self._unsent: set[RegionId] = set()
        # Called when an operator starts (the PD server answers the stores'
        # long polls for regions to report: `regions_waiting`).
        self.on_start: Callable[[], None] | None = None
        self._history: deque[Operator] = deque(maxlen=history_size)
        # Counts since start for the PD's metrics (placement_driver.metrics
        # reads them when scraped): started by (kind, desc), finished by
        # (kind, desc, status), and started by each scheduler.
        self.created_counts: Counter[tuple[str, str]] = Counter()
        self.finished_counts: Counter[tuple[str, str, str]] = Counter()
        self.scheduler_counts: Counter[str] = Counter()

    # -- reading -----------------------------------------------------------------

    def get(self, region_id: int) -> Operator | None:
        """The region's running operator."""
        return self._running.get(RegionId(region_id))

    def latest(self, region_id: int) -> Operator | None:
        """The region's running operator, else its newest one in the history."""
        op = self.get(region_id)
        if op is not None:
            return op
        for old in reversed(self._history):
            if old.region_id == region_id:
                return old
        return None

    def running(self) -> list[Operator]:
        """Running operators in region id order."""
        return [op for _, op in sorted(self._running.items())]

    def history(self) -> list[Operator]:
        """Finished operators, oldest first."""
        return list(self._history)

    def running_count(self, kind: OperatorKind) -> int:
        return sum(1 for op in self._running.values() if op.kind == kind)

    def room(self, cluster: Cluster, kind: OperatorKind) -> int:
        """How many more operators of `kind` may start now: its limit in
        the cluster config less those running (administrators' operators
        are not limited)."""
        config = cluster.config
        match kind:
            case OperatorKind.ADMIN:
                return sys.maxsize
            case OperatorKind.REPLICA:
                limit = config.replica_schedule_limit
            case OperatorKind.LEADER:
                limit = config.leader_schedule_limit
            case OperatorKind.REGION:
                limit = config.region_schedule_limit
        return max(0, limit - self.running_count(kind))

    def regions_waiting(self, cluster: Cluster, store_id: StoreId) -> tuple[RegionId, ...]:
        """Regions led on `store_id` whose operator started since their last
        heartbeat (a patrol or the API made it): its first step goes out in
        the answer to the next one, which the store is asked to send now."""
        waiting = []
        for region_id in sorted(self._unsent):
            record = cluster.get_region_by_id(region_id)
            if region_id not in self._running or record is None:
                self._unsent.discard(region_id)
            elif record.leader is not None and record.leader.store_id == store_id:
                waiting.append(region_id)
        return tuple(waiting)

    def target_stores(self) -> frozenset[StoreId]:
        """The stores running operators still put a peer, a voter or the
        leadership on."""
        return frozenset(s for op in self._running.values() for s in op.target_stores())

    def influence(self, cluster: Cluster) -> OpInfluence:
        """What the running operators' remaining steps will do to the stores."""
        influence = OpInfluence()
        for op in self._running.values():
            influence.add(op.remaining_steps(), cluster.region_by_id(op.region_id))
        return influence

    # -- adding and finishing -------------------------------------------------------

    def add(self, op: Operator, now: float, *, scheduler: str | None = None) -> None:
        """Start `op`; OperatorExistsError if its region has one running.
        `scheduler`: the name of the scheduler that made it (counted in the
        metric shardkv_pd_scheduler_operators_total): every scheduler passes
        it."""
        assert op.is_running and op.current == 0
        running = self._running.get(op.region_id)
        if running is not None:
            raise OperatorExistsError(op.region_id, running.describe())
        op.start(now)
        self._running[op.region_id] = op
        self._unsent.add(op.region_id)
        if self.on_start is not None:
            self.on_start()
        self.created_counts[op.kind.value, op.desc] += 1
        if scheduler is not None:
            self.scheduler_counts[scheduler] += 1
        log.info("operator started: %s", op.describe())

    def cancel(self, region_id: int, now: float, reason: str) -> Operator | None:
        op = self._running.get(RegionId(region_id))
        if op is not None:
            op.finish(OperatorStatus.CANCELED, now, reason)
            self._retire(op)
        return op

    def _retire(self, op: Operator) -> None:
        assert not op.is_running
        del self._running[op.region_id]
        self._history.append(op)
        self.finished_counts[op.kind.value, op.desc, op.status.value] += 1
        level = logging.INFO if op.status == OperatorStatus.SUCCESS else logging.WARNING
        log.log(
            level,
            "operator %s: %s%s",
            op.status.value,
            op.describe(),
            f" ({op.reason})" if op.reason else "",
        )

    # -- the heartbeat hook -------------------------------------------------------

    def on_region_heartbeat(
        self, cluster: Cluster, record: RegionRecord, now: float
    ) -> pdpb.RegionHeartbeatResponse | None:
        store_state = _store_states(cluster)
        self._unsent.discard(record.region.id)
        op = self._running.get(record.region.id)
        if op is not None:
            op.update(record, now, store_state)
            if op.is_running:
                op.check_timeout(now, self.timeouts)
            if op.is_running:
                return op.next_order(record, store_state)
            self._retire(op)
        new = self._check(cluster, record, now, None)
        return None if new is None else new.next_order(record, store_state)

    def _check(
        self, cluster: Cluster, record: RegionRecord, now: float, influence: OpInfluence | None
    ) -> Operator | None:
        """Run the replica checker on a region without an operator, within
        the limit; start and return what it makes. `influence` (that of the
        running operators, computed here if None) gets the new one's."""
        if self.room(cluster, OperatorKind.REPLICA) <= 0:
            return None
        if influence is None:
            influence = self.influence(cluster)
        op = check_replicas(cluster, record, influence)
        if op is None:
            return None
        self.add(op, now)
        influence.add(op.steps, record)
        return op

    # -- periodic ----------------------------------------------------------------------

    def patrol(self, cluster: Cluster, now: float) -> PatrolResult:
        finished: list[Operator] = []
        for op in self.running():
            record = cluster.region_by_id(op.region_id)
            if record is None:
                op.finish(OperatorStatus.CANCELED, now, "the region is gone from the region tree")
            else:
                op.check_timeout(now, self.timeouts)
            if not op.is_running:
                self._retire(op)
                finished.append(op)
        buried = cluster.bury_empty_offline_stores(now, keep=self.target_stores())
        created: list[Operator] = []
        influence = self.influence(cluster)
        for record in cluster.regions():
            if self.room(cluster, OperatorKind.REPLICA) <= 0:
                break
            if record.stat.last_heartbeat is None or record.region.id in self._running:
                continue
            new = self._check(cluster, record, now, influence)
            if new is not None:
                created.append(new)
        return PatrolResult(tuple(created), tuple(finished), tuple(buried))

    # -- administrators' operators ---------------------------------------------------

    def add_admin(
        self,
        cluster: Cluster,
        region_id: int,
        plan: Callable[[RegionRecord], Operator],
        now: float,
    ) -> Operator:
        """Start the operator `plan` makes for the region (it raises
        PdRequestError to refuse). NOT_BOOTSTRAPPED, REGION_NOT_FOUND, or
        OperatorExistsError if the region has a running operator (checked
        before planning: a plan may take new peer ids). Its first step
        reaches the leader with the region's next heartbeat, which the
        leader's store is asked for."""
        cluster.check_bootstrapped()
        record = cluster.region_by_id(region_id)
        if record is None:
            raise PdRequestError(PdErrorCode.REGION_NOT_FOUND, f"region {region_id} is not known")
        running = self.get(region_id)
        if running is not None:
            raise OperatorExistsError(running.region_id, running.describe())
        op = plan(record)
        self.add(op, now)
        return op

    def admin_operator(
        self, cluster: Cluster, name: str, region_id: int, store_ids: dict[str, int], now: float
    ) -> Operator:
        """Start the administrator's operator `name` (`admin_operators`)."""
        influence = self.influence(cluster)
        return self.add_admin(
            cluster,
            region_id,
            lambda record: plan_admin_operator(cluster, record, name, store_ids, influence),
            now,
        )

    def split_region(
        self, cluster: Cluster, region_id: int, keys: Sequence[bytes], now: float
    ) -> Operator:
        """Start an operator splitting the region at `keys` (strictly
        increasing, strictly inside the region; none: where the store's size
        scan says). REGION_NOT_FOUND, INVALID_ARGUMENT, or
        OperatorExistsError if the region has a running operator. The step
        reaches the leader with the region's next heartbeat."""
        keys = tuple(keys)
        return self.add_admin(cluster, region_id, lambda record: _plan_split(record, keys), now)


def _plan_split(record: RegionRecord, keys: tuple[bytes, ...]) -> Operator:
    region = record.region
    if len(keys) > MAX_SPLIT_COUNT:
        raise invalid_argument(f"at most {MAX_SPLIT_COUNT} split keys at once, got {len(keys)}")
    previous = region.start_key
    for key in keys:
        if key <= previous:
            raise invalid_argument(
                f"split key {key!r} is not inside region {region.id} after {previous!r} "
                "(keys must be strictly increasing and strictly inside the region)"
            )
        if region.end_key and key >= region.end_key:
            raise invalid_argument(
                f"split key {key!r} is not inside region {region.id} "
                f"[{region.start_key!r}, {region.end_key!r})"
            )
        previous = key
    step = SplitRegion(region.epoch.version, keys)
    return Operator(region.id, "split-region", OperatorKind.ADMIN, (step,), region.epoch)


def _store_states(cluster: Cluster) -> StoreStateOf:
    """The stores' current states as operators read them (None: unknown)."""

    def state(store_id: StoreId) -> StoreState | None:
        info = cluster.find_store(store_id)
        return None if info is None else info.state

    return state

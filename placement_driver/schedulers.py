"""The PD's schedulers: which are active, their pauses and counters, one
scheduling run over them, and their documents in the admin API. Pure: no
trio, no clock (`now` comes in).

Schedulers (each in its module):

    name                  what it does                                 operator kind
    balance-leader        spreads leaders by leader count              LEADER
    balance-region        spreads replicas by region score             REGION
    evict-leader-<store>  moves every leader off the store             LEADER

balance-leader and balance-region are active by default; an evict-leader
scheduler is added with a store id. The active set is persisted in the PD's
storage (`MetaStorage.save_schedulers`, written before it changes in
memory): a restarted PD runs the same set. Pauses and counters are not
persisted: a restarted PD runs every scheduler, counting from 0.

A run (`SchedulerController.run`, after the operator controller's patrol,
so the replica checker has first pick of the regions and of the limits)
offers each active, unpaused scheduler, evict-leader ones first, then
balance-leader, then balance-region, up to BATCH operators (LEADER_BATCH
for leader transfers), fewer if its
operator kind's limit (`leader_schedule_limit`, `region_schedule_limit`)
leaves less room; the operators it proposes start at once. One
`ScheduleContext` serves the whole run: each scheduler sees the operators
running and those proposed before it (regions taken, store scores moved).

Counters for the metrics endpoint: the operators each scheduler starts
are counted by the operator controller (`OperatorController.add(...,
scheduler=name)`: `scheduler_counts`); `SchedulerStats.runs` counts runs per
scheduler and outcome (scheduled: at least one operator; balanced: nothing
to do; limited: its kind at its limit; paused).

Refusals: an unknown name or bad argument is INVALID_ARGUMENT, an
evict-leader for an unknown store STORE_NOT_FOUND, for a Tombstone store
STORE_TOMBSTONE (`PdRequestError`); adding an active scheduler raises
`SchedulerExistsError`, naming a missing one `SchedulerNotFoundError`.
"""

from __future__ import annotations

import enum
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from kvproto.metapb import StoreId
from kvproto.pdpb import PdErrorCode
from placement_driver.balance_leader import BalanceLeader
from placement_driver.balance_region import BalanceRegion
from placement_driver.cluster import Cluster
from placement_driver.config import MAX_DURATION
from placement_driver.errors import (
    PdRequestError,
    SchedulerExistsError,
    SchedulerNotFoundError,
    invalid_argument,
)
from placement_driver.evict_leader import EVICT_LEADER, EvictLeader
from placement_driver.operator_controller import OperatorController
from placement_driver.operators import Operator, OperatorKind
from placement_driver.region_check import ClusterView
from placement_driver.schedule_context import ScheduleContext, Scheduler

__all__ = [
    "BATCH",
    "DEFAULT_SCHEDULERS",
    "LEADER_BATCH",
    "Outcome",
    "SchedulerController",
    "SchedulerEntry",
    "SchedulerStats",
    "make_scheduler",
    "scheduler_json",
]

log = logging.getLogger(__name__)

# Operators one scheduler may propose per run (TiKV PD's scheduler batch):
# enough to keep stores busy between runs, few enough that each run stays
# short and the next one sees what they did. Leader transfers are cheap and
# a run's cost is mostly its one pass over the regions (the context's
# index: ~15 ms at 10,000 regions), so a run fills the leader limit's room
# up to LEADER_BATCH; replica moves (a snapshot each) go BATCH at a time.
BATCH: Final = 4
LEADER_BATCH: Final = 64
DEFAULT_SCHEDULERS: Final = (BalanceLeader.name, BalanceRegion.name)
KNOWN_KINDS: Final = (BalanceLeader.name, BalanceRegion.name, EVICT_LEADER)
_EVICT_NAME: Final = re.compile(re.escape(EVICT_LEADER) + r"-([1-9][0-9]{0,18})")


def make_scheduler(name: str, store_id: int | None = None) -> Scheduler:
    """The scheduler named `name` ("evict-leader" takes `store_id`; its full
    name "evict-leader-<store_id>" carries it). INVALID_ARGUMENT otherwise."""
    match = _EVICT_NAME.fullmatch(name)
    if match is not None:
        named = int(match[1])
        if store_id is not None and store_id != named:
            raise invalid_argument(f"{name} names store {named}, not store {store_id}")
        name, store_id = EVICT_LEADER, named
    if name == EVICT_LEADER:
        if store_id is None:
            raise invalid_argument(f"{EVICT_LEADER} needs a store_id")
        return EvictLeader(StoreId(store_id))
    if store_id is not None:
        raise invalid_argument(f"{name} takes no store_id")
    if name == BalanceLeader.name:
        return BalanceLeader()
    if name == BalanceRegion.name:
        return BalanceRegion()
    raise invalid_argument(f"unknown scheduler {_short(name)}; known: {', '.join(KNOWN_KINDS)}")


def _run_order(scheduler: Scheduler) -> tuple[int, int]:
    # Evicting first: a store about to be maintained matters more than balance.
    if isinstance(scheduler, EvictLeader):
        return (0, scheduler.store_id)
    return (1 if isinstance(scheduler, BalanceLeader) else 2, 0)


class Outcome(enum.Enum):
    """How one scheduler's turn in a run went."""

    SCHEDULED = "scheduled"  # it proposed at least one operator
    BALANCED = "balanced"  # it had nothing to do
    LIMITED = "limited"  # its operator kind was at its limit: not asked
    PAUSED = "paused"


@dataclass(slots=True)
class SchedulerStats:
    """Runs since this PD started, by scheduler name and outcome (for
    metrics; the operators they started are the operator controller's
    `scheduler_counts`)."""

    runs: Counter[tuple[str, Outcome]] = field(default_factory=Counter)


@dataclass(slots=True)
class SchedulerEntry:
    """An active scheduler: its pause (until `paused_until` on the PD's
    clock) and the operators it created since it was added."""

    scheduler: Scheduler
    paused_until: float | None = None
    operators_created: int = 0

    @property
    def name(self) -> str:
        return self.scheduler.name

    def is_paused(self, now: float) -> bool:
        return self.paused_until is not None and now < self.paused_until


class SchedulerStorage(Protocol):
    """Where the active set is kept (`MetaStorage` is one)."""

    def save_schedulers(self, names: Sequence[str]) -> None: ...

    def load_schedulers(self) -> list[str] | None: ...


class SchedulerController:
    """The active schedulers, in run order. Single-threaded, like `Cluster`."""

    def __init__(self, storage: SchedulerStorage | None = None) -> None:
        """Load the stored set from `storage` (the defaults if none was ever
        stored; a stored name no longer known is skipped with a warning).
        Without storage the set lives in memory only."""
        self._storage = storage
        self.stats = SchedulerStats()
        stored = None if storage is None else storage.load_schedulers()
        self._entries: list[SchedulerEntry] = []
        for name in DEFAULT_SCHEDULERS if stored is None else stored:
            try:
                self._entries.append(SchedulerEntry(make_scheduler(name)))
            except PdRequestError as e:
                log.warning("ignoring stored scheduler %r: %s", name, e.message)
        self._entries.sort(key=lambda e: _run_order(e.scheduler))

    # -- reading -----------------------------------------------------------------

    def active(self) -> list[SchedulerEntry]:
        """The active schedulers in run order."""
        return list(self._entries)

    def get(self, name: str) -> SchedulerEntry:
        for entry in self._entries:
            if entry.name == name:
                return entry
        raise SchedulerNotFoundError(name)

    def evicting(self) -> frozenset[StoreId]:
        """The stores evict-leader schedulers empty (paused or not: a pause
        stops the moving, not the promise that no leader comes back)."""
        return frozenset(
            e.scheduler.store_id for e in self._entries if isinstance(e.scheduler, EvictLeader)
        )

    # -- changes (persisted first) ---------------------------------------------

    def add(self, view: ClusterView, name: str, store_id: int | None = None) -> SchedulerEntry:
        """Activate a scheduler (see the module's refusals)."""
        scheduler = make_scheduler(name, store_id)
        if scheduler.store_id is not None:
            info = view.find_store(scheduler.store_id)
            if info is None:
                raise PdRequestError(
                    PdErrorCode.STORE_NOT_FOUND, f"store {scheduler.store_id} is not known"
                )
            if info.is_tombstone:
                raise PdRequestError(
                    PdErrorCode.STORE_TOMBSTONE, f"store {scheduler.store_id} is a tombstone"
                )
        if any(e.name == scheduler.name for e in self._entries):
            raise SchedulerExistsError(scheduler.name)
        entry = SchedulerEntry(scheduler)
        entries = sorted([*self._entries, entry], key=lambda e: _run_order(e.scheduler))
        self._save(entries)
        log.info("scheduler %s added", entry.name)
        return entry

    def remove(self, name: str) -> SchedulerEntry:
        entry = self.get(name)
        self._save([e for e in self._entries if e is not entry])
        log.info("scheduler %s removed", name)
        return entry

    def pause(self, name: str, seconds: float, now: float) -> SchedulerEntry:
        """Pause the scheduler for `seconds` from `now`; 0 resumes it."""
        entry = self.get(name)
        if not (math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION):
            raise invalid_argument(f"a pause lasts 0 to {MAX_DURATION:g} seconds, not {seconds}")
        entry.paused_until = now + seconds if seconds > 0 else None
        if seconds > 0:
            log.info("scheduler %s paused for %g s", name, seconds)
        else:
            log.info("scheduler %s resumed", name)
        return entry

    def _save(self, entries: list[SchedulerEntry]) -> None:
        if self._storage is not None:
            self._storage.save_schedulers([e.name for e in entries])
        self._entries = entries

    # -- scheduling ----------------------------------------------------------------

    def run(self, cluster: Cluster, operators: OperatorController, now: float) -> list[Operator]:
        """Offer every active, unpaused scheduler its turn; start and return
        the operators they propose."""
        stats = self.stats
        active = []
        for entry in self._entries:
            if entry.is_paused(now):
                stats.runs[(entry.name, Outcome.PAUSED)] += 1
            else:
                active.append(entry)
        if not active:
            return []
        ctx = ScheduleContext(
            cluster,
            operators.influence(cluster),
            {op.region_id for op in operators.running()},
            self.evicting(),
        )
        created: list[Operator] = []
        for entry in active:
            batch = LEADER_BATCH if entry.scheduler.kind == OperatorKind.LEADER else BATCH
            budget = min(batch, operators.room(cluster, entry.scheduler.kind))
            made = 0
            while made < budget and (op := entry.scheduler.propose(ctx)) is not None:
                operators.add(op, now, scheduler=entry.name)
                ctx.take(op)
                created.append(op)
                made += 1
            entry.operators_created += made
            outcome = Outcome.LIMITED if budget == 0 else Outcome.BALANCED
            stats.runs[(entry.name, Outcome.SCHEDULED if made else outcome)] += 1
        return created


# -- the admin API's documents and requests ---------------------------------------------


def scheduler_json(entry: SchedulerEntry, now: float) -> dict[str, Any]:
    """`paused_until`: the seconds from `now` until it resumes (null while
    it runs), like the API's other times, relative to the PD's clock."""
    paused = entry.paused_until if entry.is_paused(now) else None
    return {
        "name": entry.name,
        "paused_until": None if paused is None else round(paused - now, 3),
        "store_id": entry.scheduler.store_id,
        "operators_created": entry.operators_created,
    }


def schedulers_json(controller: SchedulerController, now: float) -> dict[str, Any]:
    return {"schedulers": [scheduler_json(e, now) for e in controller.active()]}


def add_from_json(
    controller: SchedulerController, view: ClusterView, body: Mapping[str, Any]
) -> SchedulerEntry:
    """POST /schedulers: {"name": "balance-leader"} or {"name":
    "evict-leader", "store_id": 4}."""
    unknown = sorted(body.keys() - {"name", "store_id"})
    if unknown:
        raise invalid_argument(f"unknown field {_short(unknown[0])}; give name (and store_id)")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_argument(f"name must be a scheduler name, got {_short(name)}")
    store_id = body.get("store_id")
    if store_id is not None and (
        isinstance(store_id, bool) or not isinstance(store_id, int) or not 0 < store_id < 2**64
    ):
        raise invalid_argument(
            f"store_id must be a positive integer below 2^64, got {_short(store_id)}"
        )
    return controller.add(view, name, store_id)


def pause_from_json(
    controller: SchedulerController, name: str, body: Mapping[str, Any], now: float
) -> SchedulerEntry:
    """POST /schedulers/{name}: {"delay": seconds} pauses it that long, 0 resumes."""
    controller.get(name)  # a missing scheduler is 404 whatever the body
    unknown = sorted(body.keys() - {"delay"})
    delay = body.get("delay")
    if unknown or isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise invalid_argument(f'give {{"delay": seconds}} (0 resumes), got {_short(dict(body))}')
    if isinstance(delay, int) and not 0 <= delay <= MAX_DURATION:
        # float() of a 400-digit int raises OverflowError (it was a 500).
        raise invalid_argument(f"a pause lasts 0 to {MAX_DURATION:g} seconds, not {_short(delay)}")
    return controller.pause(name, float(delay), now)


def _short(value: object, limit: int = 80) -> str:
    """The repr of a value from a request, cut to about `limit` characters."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} characters)"

"""What the balance schedulers share: the cluster view of one scheduling
run (`ScheduleContext`), the store scores, the tolerance, and the
`Scheduler` interface. Pure: no trio, no clock, no randomness; every
choice is by a total order (ties broken by store id, then region id), so
the same view always gives the same operators.

Scores, on the stores that are Up, counting what running operators and
those proposed earlier in the same run are about to do (`OpInfluence`):

* leader score: the regions led on the store;
* region score: the weights of the regions with a peer on the store
  (`RegionStat.weight`: approximate size in MiB, at least 1, so that
  region count and size both count).

Tolerance (TiKV PD's tolerant-size-ratio): a scheduler moves a leader from
store S to store T only if score(S) - score(T) > 2 * ratio, and a replica
of a region of weight w only if score(S) - score(T) > 2 * ratio * w. A
move changes the difference by 2 (2 * w), so it never turns the imbalance
around, and stores within the tolerance are left alone: no flapping. The
ratio is the config's `tolerant_size_ratio`, or if that is 0, 1/200 of the
most regions on one store, at least 1 (larger clusters tolerate more).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from kvproto.metapb import Peer, RegionId, StoreId, StoreState
from placement_driver.operators import Operator, OperatorKind, Step, in_joint
from placement_driver.region_check import ClusterView, OpInfluence, RegionCheck
from placement_driver.regions import RegionRecord
from placement_driver.stores import StoreInfo

__all__ = ["ADAPTIVE_TOLERANCE", "ScheduleContext", "Scheduler", "SchedulerView"]

# With `tolerant_size_ratio` 0: this share of the most regions on one store.
ADAPTIVE_TOLERANCE: Final = 1 / 200


class SchedulerView(ClusterView, Protocol):
    """What schedulers read of the cluster (`Cluster` is one)."""

    def regions(self) -> Iterator[RegionRecord]: ...

    def region_by_id(self, region_id: int) -> RegionRecord | None: ...


class Scheduler(Protocol):
    """One scheduler: proposes operators one at a time over a context."""

    @property
    def name(self) -> str:
        """Its name in the API: "balance-leader", "evict-leader-4", ..."""
        ...

    @property
    def kind(self) -> OperatorKind:
        """The kind of its operators (whose limit bounds it)."""
        ...

    @property
    def store_id(self) -> StoreId | None:
        """The store it is about, if any."""
        ...

    def propose(self, ctx: ScheduleContext) -> Operator | None:
        """The next operator (not started), or None when it has nothing
        (more) to do. It plans only regions `ctx.free` allows."""
        ...


@dataclass(slots=True)
class ScheduleContext:
    """The cluster as one scheduling run sees it. `busy` holds the regions
    with a running operator; `take` adds each operator proposed during the
    run to `busy` and to `influence`, so that the next proposal sees it."""

    view: SchedulerView
    influence: OpInfluence
    busy: set[RegionId]
    evicting: frozenset[StoreId] = frozenset()  # stores evict-leader empties
    _up: list[StoreInfo] | None = field(default=None, init=False)
    _led: dict[StoreId, list[RegionRecord]] = field(default_factory=dict, init=False)
    _hosted: dict[StoreId, list[RegionRecord]] = field(default_factory=dict, init=False)
    _indexed: bool = field(default=False, init=False)

    # -- stores ------------------------------------------------------------------

    def up_stores(self) -> list[StoreInfo]:
        """The Up stores, in id order: the stores balanced among."""
        if self._up is None:
            self._up = [s for s in self.view.stores() if s.state == StoreState.UP]
        return self._up

    def leader_score(self, store_id: StoreId) -> int:
        return self.view.store_leader_count(store_id) + self.influence.leader_delta[store_id]

    def region_score(self, store_id: StoreId) -> int:
        return self.view.store_region_size(store_id) + self.influence.size_delta[store_id]

    def tolerance(self) -> float:
        ratio = self.view.config.tolerant_size_ratio
        if ratio > 0:
            return ratio
        most = max((self.view.store_region_count(s.id) for s in self.up_stores()), default=0)
        return max(1.0, most * ADAPTIVE_TOLERANCE)

    # -- regions -----------------------------------------------------------------

    def led_on(self, store_id: StoreId) -> list[RegionRecord]:
        """The regions led on the store, in key order."""
        self._index()
        return self._led.get(store_id, [])

    def hosted_on(self, store_id: StoreId) -> list[RegionRecord]:
        """The regions with a peer on the store, in key order."""
        self._index()
        return self._hosted.get(store_id, [])

    def _index(self) -> None:
        # Once per run, and only if a scheduler gets past its cheap checks:
        # one pass over the region tree.
        if self._indexed:
            return
        led: defaultdict[StoreId, list[RegionRecord]] = defaultdict(list)
        hosted: defaultdict[StoreId, list[RegionRecord]] = defaultdict(list)
        for record in self.view.regions():
            if record.leader is not None:
                led[record.leader.store_id].append(record)
            for p in record.region.peers:
                hosted[p.store_id].append(record)
        self._led, self._hosted, self._indexed = dict(led), dict(hosted), True

    def free(self, record: RegionRecord) -> bool:
        """Whether a scheduler may plan for the region: heard from since
        this PD started, its leader known, not in a joint configuration, no
        operator running (nor proposed in this run)."""
        return (
            record.stat.last_heartbeat is not None
            and record.leader is not None
            and not in_joint(record.region)
            and record.region.id not in self.busy
        )

    def check(self, record: RegionRecord) -> RegionCheck:
        """The region's judgments (`region_check`), never moving the
        leadership to an evicting store."""
        return RegionCheck(self.view, record, self.influence, no_leaders=self.evicting)

    def sources(
        self, score: Callable[[StoreId], int], floor: int, margin: float
    ) -> Iterator[tuple[StoreId, int]]:
        """The Up stores and their scores, the highest first (ties: the
        lowest id), while a score is above `floor` by more than `margin`:
        below that no move from the store can pass the tolerance."""
        for info in sorted(self.up_stores(), key=lambda s: (-score(s.id), s.id)):
            if score(info.id) - floor <= margin:
                return
            yield info.id, score(info.id)

    def leader_moves(self, store_id: StoreId) -> Iterator[tuple[RegionRecord, Peer]]:
        """The regions led on the store that may move their leadership (free
        to plan, a healthy majority), in key order, each with the voter to
        move it to: healthy, on an Up store that is not evicting, the lowest
        leader score (ties: the lowest store id)."""
        for record in self.led_on(store_id):
            if not self.free(record):
                continue
            check = self.check(record)
            if not check.has_quorum():
                continue
            candidates = [
                p
                for p in check.healthy_voters()
                if p.store_id != store_id and p.store_id not in self.evicting
            ]
            best = min(
                candidates, key=lambda p: (self.leader_score(p.store_id), p.store_id), default=None
            )
            if best is not None:
                yield record, best

    def operator(
        self, record: RegionRecord, desc: str, kind: OperatorKind, steps: list[Step]
    ) -> Operator:
        region = record.region
        return Operator(region.id, desc, kind, tuple(steps), region.epoch)

    def take(self, op: Operator) -> None:
        """Count a proposed operator in the rest of the run."""
        self.busy.add(op.region_id)
        self.influence.add(op.steps, self.view.region_by_id(op.region_id))

"""Operators: plans of steps for one region, the pure model (no I/O, no clock: `now` comes in).

An operator is a short plan for ONE region: a sequence of steps, each of
which the region's leader can carry out alone. The PD never drives a store:
it answers the region's heartbeat with the operator's current step, and
learns from later heartbeats whether the step is done.

The steps, what each asks of the leader and when it is done, are in `steps.py`.

Rules:

* Delivery: the current step goes out on every heartbeat of the region
  until a heartbeat shows it done, with the epoch that heartbeat reported
  (the store refuses a conf change whose `conf_ver` is not the region's, so
  a step sent twice is applied at most once). Two exceptions, where a
  second proposal would NOT be refused and would change the region twice:
  nothing is sent while the region is in a joint configuration (the store
  leaves it by itself), and AddLearner is not sent again once the learner
  is a member (it is catching up by snapshot: "pending").
* Epoch: the steps must explain every move of the region's epoch since the
  operator was planned (`origin`), counting only what the reported region
  shows (TiKV PD's ConfVerChanged): `conf_ver` may have moved by at most
  the bumps of the finished steps plus those of the current step that the
  report shows under way (a learner added but catching up: 1; a joint
  change entered but not left: 1 of its 2; a step not begun: 0). A simple
  change bumps it once, a joint change twice (enter and leave); `version`
  may move only through a SplitRegion step. Any other move means someone
  else changed the region (e.g. a late order of a forgotten operator
  removed a peer) and the plan is stale: the operator is CANCELED, before
  its step can change the region a second time.
  It is also canceled when its current step can no longer finish (the peer
  to promote is gone, the peer to remove became the leader, ...), and when
  a store the current step puts a peer, a voter or the leadership on
  (`targets()`) is no longer fit for it: Down, Offline, Tombstone or
  unknown (`UNFIT_TARGET_STATES`; Disconnected is tolerated, a short
  silence, e.g. of a store busy receiving the step's snapshot). The PD
  never buries a store that a running operator still targets.
* Leader: a joint step never demotes the leader. If the leadership came back
  to a peer the step demotes (after an earlier TransferLeader moved it
  away), the step's order is replaced by a transfer of the leadership to
  another healthy voter (the operator's own TransferLeader target first),
  and the joint change goes out once a report shows the new leader; with
  no such voter, the operator is canceled.
* Time: each step has a deadline counted from when it became current
  (`OperatorTimeouts`): `snapshot` for a step that needs a snapshot
  (AddLearner: the new peer catches up), `step` for the others. A step past
  it times the operator out (TIMEOUT).

`Operator` is mutable progress; only `OperatorController` mutates it.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from kvproto import pdpb
from kvproto.metapb import Peer, PeerRole, Region, RegionEpoch, RegionId, StoreId, StoreState
from placement_driver.regions import RegionRecord
from placement_driver.steps import (
    UNFIT_TARGET_STATES,
    AddLearner,
    ChangePeers,
    PromoteLearner,
    RemovePeer,
    SplitRegion,
    Step,
    StoreStateOf,
    TransferLeader,
    describe_peer,
    in_joint,
    unfit_target,
)

# The steps are re-exported: callers plan operators from one module.
__all__ = [
    "UNFIT_TARGET_STATES",
    "AddLearner",
    "ChangePeers",
    "Operator",
    "OperatorKind",
    "OperatorStatus",
    "OperatorTimeouts",
    "PromoteLearner",
    "RemovePeer",
    "SplitRegion",
    "Step",
    "StoreStateOf",
    "TransferLeader",
    "describe_peer",
    "in_joint",
]


# -- operators -------------------------------------------------------------------------


class OperatorKind(enum.Enum):
    """Who made an operator: limits count operators by kind."""

    ADMIN = "admin"  # an administrator's order (manual split): no limit
    REPLICA = "replica"  # the replica checker: replica_schedule_limit
    LEADER = "leader"  # balance-leader, evict-leader: leader_schedule_limit
    REGION = "region"  # balance-region: region_schedule_limit


@dataclass(frozen=True, slots=True)
class OperatorTimeouts:
    """How long a step may take, in seconds (TiKV PD's fast and slow step
    wait times)."""

    step: float = 60.0  # promote, remove, joint change, transfer leader, split
    snapshot: float = 10 * 60.0  # add learner: the new peer catches up

    def __post_init__(self) -> None:
        if not (self.step > 0 and self.snapshot > 0):
            raise ValueError(f"operator timeouts must be > 0, got {self}")

    def of(self, step: Step) -> float:
        return self.snapshot if step.needs_snapshot else self.step


class OperatorStatus(enum.Enum):
    RUNNING = "running"
    SUCCESS = "success"  # every step done
    TIMEOUT = "timeout"  # a step not done in time
    CANCELED = "canceled"  # stale (unexplained epoch move, step impossible, region gone)


@dataclass(slots=True)
class Operator:
    """One region's plan and its progress.

    Invariant: 0 <= current <= len(steps); current == len(steps) iff status
    is SUCCESS; `finished_at` is set iff status is not RUNNING.
    """

    region_id: RegionId
    desc: str  # what it is for, e.g. "add-replica", "replace-down-peer"
    kind: OperatorKind
    steps: tuple[Step, ...]
    origin: RegionEpoch  # the epoch the steps were planned on
    status: OperatorStatus = OperatorStatus.RUNNING
    current: int = 0  # index of the step being carried out
    created_at: float = 0.0
    step_started_at: float = 0.0
    finished_at: float | None = None
    reason: str = ""  # why it timed out or was canceled
    # When each finished step was seen done, in step order.
    step_finished_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("an operator has at least one step")

    def start(self, now: float) -> None:
        self.created_at = self.step_started_at = now

    @property
    def is_running(self) -> bool:
        return self.status == OperatorStatus.RUNNING

    @property
    def current_step(self) -> Step | None:
        return self.steps[self.current] if self.current < len(self.steps) else None

    def describe(self) -> str:
        steps = "; ".join(s.describe() for s in self.steps)
        return f"{self.desc} of region {self.region_id} ({self.kind.value}): {steps}"

    def remaining_steps(self) -> tuple[Step, ...]:
        """The current step and those after it (none once finished)."""
        return self.steps[self.current :] if self.is_running else ()

    def target_stores(self) -> frozenset[StoreId]:
        """The stores its remaining steps put a peer, a voter or the
        leadership on (those of finished steps show in the region tree)."""
        return frozenset(s for step in self.remaining_steps() for s in step.targets())

    # -- progress (the controller calls these) -----------------------------------

    def update(self, record: RegionRecord, now: float, store_state: StoreStateOf) -> None:
        """Learn from a report of the region: finish the steps it shows
        done, then succeed, or cancel if the report (or the state of a store
        the current step targets, by `store_state`) says so."""
        assert self.is_running and record.region.id == self.region_id
        while (step := self.current_step) is not None and step.is_done(record):
            self.current += 1
            self.step_started_at = now
            self.step_finished_at.append(now)
        step = self.current_step
        if step is None:
            self.finish(OperatorStatus.SUCCESS, now)
            return
        reason = (
            self._unexplained_epoch(record.region, step)
            or step.problem(record)
            or unfit_target(step, store_state)
            or self._no_handoff(step, record, store_state)
        )
        if reason is not None:
            self.finish(OperatorStatus.CANCELED, now, f"step {self.current + 1}: {reason}")

    def _unexplained_epoch(self, region: Region, step: Step) -> str | None:
        # Only what the report shows counts: a step's budget is not spent
        # until the region shows its change, or someone else's change of the
        # same size would pass for it and the step would then change the
        # region a second time.
        epoch = region.epoch
        moved = epoch.conf_ver - self.origin.conf_ver
        shown = sum(s.conf_ver_bumps for s in self.steps[: self.current])
        shown += step.bumps_shown(region)
        if moved > shown:
            return (
                f"conf_ver moved from {self.origin.conf_ver} to {epoch.conf_ver}, "
                f"the operator's changes the region shows explain {shown}: "
                "someone else changed its membership"
            )
        if epoch.version != self.origin.version and not any(
            isinstance(s, SplitRegion) for s in self.steps[: self.current]
        ):
            return f"version moved from {self.origin.version} to {epoch.version}"
        return None

    def _no_handoff(
        self, step: Step, record: RegionRecord, store_state: StoreStateOf
    ) -> str | None:
        """Why the leadership cannot be moved off a peer `step` demotes."""
        leader = record.leader
        if (
            isinstance(step, ChangePeers)
            and leader is not None
            and leader.id in step.demoted()
            and self._handoff(step, record, store_state) is None
        ):
            return (
                f"peer {leader.id} to demote is the leader, "
                "and no other healthy voter can take over"
            )
        return None

    def _handoff(
        self, step: ChangePeers, record: RegionRecord, store_state: StoreStateOf
    ) -> Peer | None:
        """The voter to lead before `step` demotes the leader: one the step
        keeps a voter, on an Up store, neither reported down nor pending;
        the target of the operator's own TransferLeader steps first (it was
        chosen with the whole cluster in view), then the lowest peer id."""
        demoted = step.demoted()
        down = {d.peer.id for d in record.stat.down_peers}
        candidates = [
            p
            for p in record.region.peers
            if p.role == PeerRole.VOTER
            and p.id not in demoted
            and p.id not in down
            and not record.stat.is_pending(p.id)
            and store_state(p.store_id) == StoreState.UP
        ]
        chosen = {s.to.id for s in self.steps if isinstance(s, TransferLeader)}
        return min(candidates, key=lambda p: (p.id not in chosen, p.id), default=None)

    def check_timeout(self, now: float, timeouts: OperatorTimeouts) -> bool:
        """Time the operator out if its current step is past its deadline."""
        step = self.current_step
        if not self.is_running or step is None:
            return False
        limit = timeouts.of(step)
        if now < self.step_started_at + limit:
            return False
        self.finish(
            OperatorStatus.TIMEOUT,
            now,
            f"step {self.current + 1} ({step.describe()}) not done in {limit:g} s",
        )
        return True

    def next_order(
        self, record: RegionRecord, store_state: StoreStateOf
    ) -> pdpb.RegionHeartbeatResponse | None:
        """The response carrying the current step, planned on the epoch
        just reported; None while the step's change is under way. A joint
        step that would demote the leader sends a transfer of the
        leadership instead (the step stays current)."""
        step = self.current_step
        region = record.region
        if not self.is_running or step is None or in_joint(region) or step.in_flight(region):
            return None
        order = step.order()
        leader = record.leader
        if isinstance(step, ChangePeers) and leader is not None and leader.id in step.demoted():
            to = self._handoff(step, record, store_state)
            if to is None:  # `update` cancels such an operator; never demote the leader
                return None
            order = TransferLeader(to).order()
        return dataclasses.replace(order, region_id=region.id, region_epoch=region.epoch)

    def finish(self, status: OperatorStatus, now: float, reason: str = "") -> None:
        assert self.is_running and status != OperatorStatus.RUNNING
        self.status = status
        self.finished_at = now
        self.reason = reason

"""Operators and their steps: the pure model (no I/O, no clock: `now` comes in).

An operator is a short plan for ONE region: a sequence of steps, each of
which the region's leader can carry out alone. The PD never drives a store:
it answers the region's heartbeat with the operator's current step, and
learns from later heartbeats whether the step is done.

Steps, what the leader is told, and when a step is done (a check on the
region the leader reports, never on what the PD sent):

    step            order (RegionHeartbeatResponse)        done when the report shows
    AddLearner      change_peer ADD_LEARNER new peer       the peer as LEARNER, not pending
    PromoteLearner  change_peer ADD_VOTER learner          the peer as VOTER
    RemovePeer      change_peer REMOVE peer                no peer of that id
    ChangePeers     change_peer with 2+ changes (joint)    every peer in its target role,
                    (promote + demote: ADD_VOTER +         the joint config left
                    ADD_LEARNER; never REMOVE a voter)
    TransferLeader  transfer_leader peer                   that peer as the leader
    SplitRegion     split_region keys                      `version` past the planned one

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias

from kvproto import pdpb
from kvproto.metapb import (
    Peer,
    PeerId,
    PeerRole,
    Region,
    RegionEpoch,
    RegionId,
    StoreId,
    StoreState,
)
from kvproto.raft_cmdpb import ChangePeer, ChangePeerRequest, ChangePeerType
from placement_driver.regions import RegionRecord

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

_JOINT_ROLES = frozenset({PeerRole.INCOMING_VOTER, PeerRole.DEMOTING_VOTER})
# A peer's role inside the joint configuration a change enters.
_JOINT_ROLE_OF: Final = {
    ChangePeerType.ADD_VOTER: PeerRole.INCOMING_VOTER,
    ChangePeerType.ADD_LEARNER: PeerRole.DEMOTING_VOTER,
}

# A store's current state, None if the PD does not know the store (the
# controller passes the cluster's).
StoreStateOf: TypeAlias = Callable[[StoreId], StoreState | None]

# A step is not sent to put a peer, a voter or the leadership on a store in
# one of these states (nor on an unknown store): its data would be on a
# store being drained or gone. Disconnected is not here: a store that
# missed a few heartbeats (one busy receiving a snapshot, say) may well
# finish the step, and the step's deadline bounds the wait.
UNFIT_TARGET_STATES: Final = frozenset({StoreState.DOWN, StoreState.OFFLINE, StoreState.TOMBSTONE})


def in_joint(region: Region) -> bool:
    """Whether the region is in a joint configuration (left automatically)."""
    return any(p.role in _JOINT_ROLES for p in region.peers)


def describe_peer(peer: Peer) -> str:
    return f"peer {peer.id} on store {peer.store_id}"


def _wrong_store(region: Region, peer: Peer) -> str | None:
    """Why `peer` cannot be (or become) a member of `region`: another peer
    of the region on its store, or its id on another store."""
    same_id = region.find_peer(peer.id)
    if same_id is not None and same_id.store_id != peer.store_id:
        return f"peer {peer.id} is on store {same_id.store_id}, not on store {peer.store_id}"
    other = region.peer_on_store(peer.store_id)
    if other is not None and other.id != peer.id:
        return f"store {peer.store_id} already holds peer {other.id} of the region"
    return None


def _change_peer(*changes: ChangePeer) -> pdpb.RegionHeartbeatResponse:
    request = ChangePeerRequest(changes)
    return pdpb.RegionHeartbeatResponse(pdpb.ResponseHeader(), change_peer=request)


# -- steps ---------------------------------------------------------------------------
#
# Every step has: `kind` (stable name), `describe()`, `conf_ver_bumps`,
# `needs_snapshot`, `is_done(record)`, `in_flight(region)` (its change is
# visible but not finished: do not send it again), `bumps_shown(region)`
# (how many of its `conf_ver_bumps` the region shows: 0 before it, all once
# done), `targets()` (the stores it puts a peer, a voter or the leadership
# on), `problem(record)` (why it can no longer finish, or None) and
# `order()` (the response carrying it; the controller fills in the epoch).


@dataclass(frozen=True, slots=True)
class AddLearner:
    """Add a new peer as a learner; it catches up (usually by snapshot)."""

    peer: Peer  # a new id from the PD's allocator; role LEARNER

    kind: ClassVar[str] = "add_learner"
    conf_ver_bumps: ClassVar[int] = 1
    needs_snapshot: ClassVar[bool] = True

    def describe(self) -> str:
        return f"add learner {describe_peer(self.peer)}"

    def is_done(self, record: RegionRecord) -> bool:
        p = record.region.find_peer(self.peer.id)
        return p is not None and p.is_learner and not record.stat.is_pending(p.id)

    def in_flight(self, region: Region) -> bool:
        return region.find_peer(self.peer.id) is not None

    def bumps_shown(self, region: Region) -> int:
        p = region.find_peer(self.peer.id)
        return int(p is not None and p.is_learner and p.store_id == self.peer.store_id)

    def targets(self) -> tuple[StoreId, ...]:
        return (self.peer.store_id,)

    def problem(self, record: RegionRecord) -> str | None:
        p = record.region.find_peer(self.peer.id)
        if p is not None and not p.is_learner:
            return f"peer {p.id} is a {p.role.name.lower()}, not a learner"
        return _wrong_store(record.region, self.peer)

    def order(self) -> pdpb.RegionHeartbeatResponse:
        return _change_peer(ChangePeer(ChangePeerType.ADD_LEARNER, self.peer))


@dataclass(frozen=True, slots=True)
class PromoteLearner:
    """Make a learner a voter (a simple conf change)."""

    peer: Peer

    kind: ClassVar[str] = "promote_learner"
    conf_ver_bumps: ClassVar[int] = 1
    needs_snapshot: ClassVar[bool] = False

    def describe(self) -> str:
        return f"promote learner {describe_peer(self.peer)}"

    def is_done(self, record: RegionRecord) -> bool:
        p = record.region.find_peer(self.peer.id)
        return p is not None and p.role == PeerRole.VOTER

    def in_flight(self, region: Region) -> bool:
        return False

    def bumps_shown(self, region: Region) -> int:
        p = region.find_peer(self.peer.id)
        return int(p is not None and p.role == PeerRole.VOTER)

    def targets(self) -> tuple[StoreId, ...]:
        return (self.peer.store_id,)

    def problem(self, record: RegionRecord) -> str | None:
        if record.region.find_peer(self.peer.id) is None:
            return f"peer {self.peer.id} is not a member"
        return _wrong_store(record.region, self.peer)

    def order(self) -> pdpb.RegionHeartbeatResponse:
        voter = Peer(self.peer.id, self.peer.store_id, PeerRole.VOTER)
        return _change_peer(ChangePeer(ChangePeerType.ADD_VOTER, voter))


@dataclass(frozen=True, slots=True)
class RemovePeer:
    """Remove a learner, or a voter (a simple conf change). Never the
    leader: a plan moves the leadership away first."""

    peer: Peer

    kind: ClassVar[str] = "remove_peer"
    conf_ver_bumps: ClassVar[int] = 1
    needs_snapshot: ClassVar[bool] = False

    def describe(self) -> str:
        return f"remove {describe_peer(self.peer)}"

    def is_done(self, record: RegionRecord) -> bool:
        return record.region.find_peer(self.peer.id) is None

    def in_flight(self, region: Region) -> bool:
        return False

    def bumps_shown(self, region: Region) -> int:
        return int(region.find_peer(self.peer.id) is None)

    def targets(self) -> tuple[StoreId, ...]:
        return ()

    def problem(self, record: RegionRecord) -> str | None:
        leader = record.leader
        if leader is not None and leader.id == self.peer.id:
            return f"peer {self.peer.id} to remove is the leader"
        return None

    def order(self) -> pdpb.RegionHeartbeatResponse:
        return _change_peer(ChangePeer(ChangePeerType.REMOVE, self.peer))


@dataclass(frozen=True, slots=True)
class ChangePeers:
    """Several changes at once: a joint configuration, left automatically
    by the store. Used to promote a learner and demote a voter together
    (ADD_VOTER + ADD_LEARNER), so that the voter count never drops. A voter
    is never REMOVEd inside a joint change (the store refuses it): it is
    demoted here and removed as a learner by a later RemovePeer."""

    changes: tuple[ChangePeer, ...]

    kind: ClassVar[str] = "change_peers"
    conf_ver_bumps: ClassVar[int] = 2  # enter joint, leave joint
    needs_snapshot: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if len(self.changes) < 2:
            raise ValueError("a joint change has at least two changes; use a simple step")
        ids = [c.peer.id for c in self.changes]
        if len(set(ids)) != len(ids):
            raise ValueError("a joint change touches each peer once")

    def describe(self) -> str:
        parts = []
        for c in self.changes:
            verb = {
                ChangePeerType.ADD_VOTER: "promote",
                ChangePeerType.ADD_LEARNER: "demote",
                ChangePeerType.REMOVE: "remove",
            }[c.change_type]
            parts.append(f"{verb} {describe_peer(c.peer)}")
        return "joint: " + ", ".join(parts)

    def is_done(self, record: RegionRecord) -> bool:
        return self._reached(record.region)

    def _reached(self, region: Region) -> bool:
        for c in self.changes:
            p = region.find_peer(c.peer.id)
            if c.change_type == ChangePeerType.REMOVE:
                if p is not None:
                    return False
                continue
            want = PeerRole.VOTER if c.change_type == ChangePeerType.ADD_VOTER else PeerRole.LEARNER
            if p is None or p.role != want:
                return False
        return not in_joint(region)

    def in_flight(self, region: Region) -> bool:
        return in_joint(region)

    def bumps_shown(self, region: Region) -> int:
        if self._reached(region):
            return self.conf_ver_bumps
        # Entered but not left: only if the joint configuration is this
        # step's, each peer in its joint role (someone else's joint change
        # explains nothing). A learner REMOVEd in the change is simply gone.
        if not in_joint(region):
            return 0
        for c in self.changes:
            p = region.find_peer(c.peer.id)
            if c.change_type == ChangePeerType.REMOVE:
                if p is not None:
                    return 0
            elif p is None or p.role != _JOINT_ROLE_OF[c.change_type]:
                return 0
        return 1

    def targets(self) -> tuple[StoreId, ...]:
        return tuple(
            c.peer.store_id for c in self.changes if c.change_type == ChangePeerType.ADD_VOTER
        )

    def demoted(self) -> frozenset[PeerId]:
        """The peers this step takes the vote from (demoted or removed)."""
        return frozenset(
            c.peer.id for c in self.changes if c.change_type != ChangePeerType.ADD_VOTER
        )

    def problem(self, record: RegionRecord) -> str | None:
        region = record.region
        for c in self.changes:
            if c.change_type == ChangePeerType.REMOVE:
                continue
            if region.find_peer(c.peer.id) is None:
                return f"peer {c.peer.id} is not a member"
            reason = _wrong_store(region, c.peer)
            if reason is not None:
                return reason
        return None

    def order(self) -> pdpb.RegionHeartbeatResponse:
        return _change_peer(*self.changes)


@dataclass(frozen=True, slots=True)
class TransferLeader:
    """Move the leadership to a voter."""

    to: Peer

    kind: ClassVar[str] = "transfer_leader"
    conf_ver_bumps: ClassVar[int] = 0
    needs_snapshot: ClassVar[bool] = False

    def describe(self) -> str:
        return f"transfer leader to {describe_peer(self.to)}"

    def is_done(self, record: RegionRecord) -> bool:
        return record.leader is not None and record.leader.id == self.to.id

    def in_flight(self, region: Region) -> bool:
        return False

    def bumps_shown(self, region: Region) -> int:
        return 0

    def targets(self) -> tuple[StoreId, ...]:
        return (self.to.store_id,)

    def problem(self, record: RegionRecord) -> str | None:
        p = record.region.find_peer(self.to.id)
        if p is None or p.role != PeerRole.VOTER:
            return f"peer {self.to.id} is not a voter"
        return None

    def order(self) -> pdpb.RegionHeartbeatResponse:
        return pdpb.RegionHeartbeatResponse(pdpb.ResponseHeader(), transfer_leader=self.to)


@dataclass(frozen=True, slots=True)
class SplitRegion:
    """Split the region at `keys` (strictly increasing, strictly inside the
    region), or where the store's size scan says if `keys` is empty. The
    region keeps its id for the leftmost part, with its `version` moved
    past `version`."""

    version: int  # the region's version the split was planned on
    keys: tuple[bytes, ...] = ()

    kind: ClassVar[str] = "split_region"
    conf_ver_bumps: ClassVar[int] = 0
    needs_snapshot: ClassVar[bool] = False

    def describe(self) -> str:
        if not self.keys:
            return "split by size"
        return "split at " + ", ".join(repr(k) for k in self.keys)

    def is_done(self, record: RegionRecord) -> bool:
        return record.region.epoch.version > self.version

    def in_flight(self, region: Region) -> bool:
        return False

    def bumps_shown(self, region: Region) -> int:
        return 0

    def targets(self) -> tuple[StoreId, ...]:
        return ()

    def problem(self, record: RegionRecord) -> str | None:
        return None

    def order(self) -> pdpb.RegionHeartbeatResponse:
        return pdpb.RegionHeartbeatResponse(
            pdpb.ResponseHeader(), split_region=pdpb.SplitRegion(self.keys)
        )


Step: TypeAlias = (
    AddLearner | PromoteLearner | RemovePeer | ChangePeers | TransferLeader | SplitRegion
)


def _unfit_target(step: Step, store_state: StoreStateOf) -> str | None:
    """Why `step` must not put anything on one of its target stores."""
    for store_id in step.targets():
        state = store_state(store_id)
        if state is None:
            return f"target store {store_id} is not known"
        if state in UNFIT_TARGET_STATES:
            return f"target store {store_id} is {state.name.lower()}"
    return None


# -- operators -------------------------------------------------------------------------


class OperatorKind(enum.Enum):
    """Who made an operator: limits count operators by kind."""

    ADMIN = "admin"  # an administrator's order (manual split): no limit
    REPLICA = "replica"  # the replica checker: replica_schedule_limit


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
            or _unfit_target(step, store_state)
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

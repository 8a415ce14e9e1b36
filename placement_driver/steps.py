"""Operator steps: what one step asks of a region's leader, when the
reported region shows it done or under way, and what could stop it (pure:
no I/O, no clock). `operators` strings them into an `Operator`.

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

Every step also says how many `conf_ver` bumps it makes and how many of
them a reported region shows (`bumps_shown`: the epoch rule of
`operators`), and which stores it puts a peer, a voter or the leadership on
(`targets`: a step is not sent to a store that is Down, Offline, Tombstone
or unknown, `UNFIT_TARGET_STATES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

from kvproto import pdpb
from kvproto.metapb import Peer, PeerId, PeerRole, Region, StoreId, StoreState
from kvproto.raft_cmdpb import ChangePeer, ChangePeerRequest, ChangePeerType
from placement_driver.regions import RegionRecord

__all__ = [
    "UNFIT_TARGET_STATES",
    "AddLearner",
    "ChangePeers",
    "PromoteLearner",
    "RemovePeer",
    "SplitRegion",
    "Step",
    "StoreStateOf",
    "TransferLeader",
    "describe_peer",
    "in_joint",
    "unfit_target",
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


def unfit_target(step: Step, store_state: StoreStateOf) -> str | None:
    """Why `step` must not put anything on one of its target stores."""
    for store_id in step.targets():
        state = store_state(store_id)
        if state is None:
            return f"target store {store_id} is not known"
        if state in UNFIT_TARGET_STATES:
            return f"target store {store_id} is {state.name.lower()}"
    return None

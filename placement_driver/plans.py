"""Region plans: the steps that add, move and remove a region's peers and
its leadership, and the health rules every plan is checked against. Pure:
no I/O, no clock, no randomness; the only effect is taking new peer ids
from the view's id allocator.

Shared by whoever makes operators: the replica checker
(`replica_checker`), the administrator's operators (`admin_operators`),
and the schedulers.

Health: a voter is healthy when its store is known and not Down or
Tombstone (an Offline store still serves until it is emptied; a
Disconnected one has missed a few heartbeats only), the leader does not
report it down and it is not pending (catching up). `keeps_quorum` checks
that every configuration a plan passes through, after each of its steps
(both halves of a joint one), keeps a majority of healthy voters; a learner
the plan adds counts as healthy once promoted, since its AddLearner step
finishes only when it has caught up.

The plans:

* a new voter: `AddLearner` new, `PromoteLearner` new (`add_voter`);
* a voter replaced by learner `new` (`replacement`): [`AddLearner` new,]
  `ChangePeers` (promote new + demote old, joint, so the voter count never
  drops), `RemovePeer` old (now a learner);
* a learner moved: `AddLearner` new, `RemovePeer` old (`move_learner`);
* before any of them takes the vote from the leader: `TransferLeader` to
  the best other healthy voter on an Up store (`handoff`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvproto.metapb import Peer, PeerId, PeerRole, StoreId, StoreState
from kvproto.raft_cmdpb import ChangePeer, ChangePeerType
from placement_driver.config import ClusterConfig
from placement_driver.operators import (
    AddLearner,
    ChangePeers,
    PromoteLearner,
    RemovePeer,
    Step,
    TransferLeader,
)
from placement_driver.regions import RegionRecord
from placement_driver.stores import StoreInfo

__all__ = ["DEAD_STATES", "ClusterView", "OpInfluence", "RegionPlanner"]

# Voters on stores in these states cannot vote.
DEAD_STATES = frozenset({StoreState.DOWN, StoreState.TOMBSTONE})


class ClusterView(Protocol):
    """What a planner reads of the cluster (`Cluster` is one)."""

    @property
    def config(self) -> ClusterConfig: ...

    def stores(self, *, exclude_tombstone: bool = False) -> list[StoreInfo]: ...

    def find_store(self, store_id: int) -> StoreInfo | None: ...

    def store_region_count(self, store_id: int) -> int: ...

    def store_pending_peer_count(self, store_id: int) -> int: ...

    def alloc_ids(self, count: int = 1) -> range: ...


@dataclass(slots=True)
class OpInfluence:
    """What running operators are about to do to stores, so that a checker
    does not send every region to the same store: the change in region
    count per store (a learner still to add: +1, a peer still to remove:
    -1) and the snapshots still to come per store (one per learner still to
    add)."""

    region_delta: Counter[StoreId] = field(default_factory=Counter)
    snapshots_in: Counter[StoreId] = field(default_factory=Counter)

    def add(self, steps: Iterable[Step]) -> None:
        for step in steps:
            if isinstance(step, AddLearner):
                self.region_delta[step.peer.store_id] += 1
                self.snapshots_in[step.peer.store_id] += 1
            elif isinstance(step, RemovePeer):
                self.region_delta[step.peer.store_id] -= 1


class RegionPlanner:
    """Judgments and plans for one region (`record`) in a cluster view."""

    def __init__(self, view: ClusterView, record: RegionRecord, influence: OpInfluence) -> None:
        self.view = view
        self.record = record
        self.region = record.region
        self.influence = influence
        self.config = view.config

    # -- store and peer judgments -----------------------------------------------------

    def state(self, store_id: StoreId) -> StoreState:
        """The store's state; an unknown store counts as a Tombstone."""
        info = self.view.find_store(store_id)
        return StoreState.TOMBSTONE if info is None else info.state

    def regions_on(self, store_id: StoreId) -> int:
        return self.view.store_region_count(store_id) + self.influence.region_delta[store_id]

    def fill_order(self, peer: Peer) -> tuple[int, int]:
        """Smaller is the emptier store."""
        return (self.regions_on(peer.store_id), peer.store_id)

    def is_down(self, peer: Peer) -> bool:
        return any(d.peer.id == peer.id for d in self.record.stat.down_peers)

    def healthy(self, peer: Peer) -> bool:
        """Whether the peer can acknowledge the leader's appends now."""
        return (
            self.state(peer.store_id) not in DEAD_STATES
            and not self.is_down(peer)
            and not self.record.stat.is_pending(peer.id)
        )

    def keeps_quorum(self, steps: Sequence[Step]) -> bool:
        """Whether a majority of the voters is healthy in every configuration
        the steps pass through: a voter removed or demoted while others are
        down could leave a group that cannot commit, not even the change
        that would repair it."""
        # Peer id -> healthy, for the voters and the learners as the steps go.
        voters = {p.id: self.healthy(p) for p in self.region.peers if p.role == PeerRole.VOTER}
        learners = {p.id: self.healthy(p) for p in self.region.peers if p.is_learner}

        def change(config: dict[PeerId, bool], kind: ChangePeerType, peer_id: PeerId) -> None:
            """`config` (the voters) and `learners` after one change."""
            if kind == ChangePeerType.ADD_VOTER:
                if peer_id not in config:
                    config[peer_id] = learners.pop(peer_id, False)
            elif kind == ChangePeerType.ADD_LEARNER:
                learners[peer_id] = config.pop(peer_id, learners.get(peer_id, False))
            else:
                config.pop(peer_id, None)
                learners.pop(peer_id, None)

        for step in steps:
            if isinstance(step, AddLearner):
                # Healthy by the time anything promotes it: the step is done
                # only once the learner has caught up.
                learners[step.peer.id] = True
            elif isinstance(step, PromoteLearner):
                change(voters, ChangePeerType.ADD_VOTER, step.peer.id)
            elif isinstance(step, RemovePeer):
                change(voters, ChangePeerType.REMOVE, step.peer.id)
            elif isinstance(step, ChangePeers):
                # Joint: the outgoing half is `voters` as they were, checked
                # already; the incoming half must hold a majority too.
                incoming = dict(voters)
                for c in step.changes:
                    change(incoming, c.change_type, c.peer.id)
                voters = incoming
            if 2 * sum(voters.values()) <= len(voters):
                return False
        return True

    # -- plans ------------------------------------------------------------------------

    def new_leader(self, leaving: Peer) -> Peer | None:
        """The healthy voter on an Up store to lead instead of `leaving`:
        the emptiest store's."""
        candidates = [
            p
            for p in self.region.peers
            if p.role == PeerRole.VOTER
            and p.id != leaving.id
            and self.healthy(p)
            and self.state(p.store_id) == StoreState.UP
        ]
        return min(candidates, key=self.fill_order, default=None)

    def handoff(self, leaving: Peer) -> list[Step] | None:
        """The steps that move the leadership off `leaving` before a plan
        takes its vote: none if it does not lead, a TransferLeader, or None
        if no other voter can lead."""
        leader = self.record.leader
        if leader is None or leader.id != leaving.id:
            return []
        new_leader = self.new_leader(leaving)
        return None if new_leader is None else [TransferLeader(new_leader)]

    def new_peer(self, store_id: StoreId) -> Peer:
        """A new learner on the store, its id taken from the allocator (only
        for a plan that is proposed)."""
        (peer_id,) = self.view.alloc_ids(1)
        return Peer(PeerId(peer_id), store_id, PeerRole.LEARNER)

    @staticmethod
    def add_voter(new: Peer) -> list[Step]:
        """The steps that add `new` (a learner not yet a member) as a voter."""
        return [AddLearner(new), PromoteLearner(new)]

    @staticmethod
    def replacement(voter: Peer, new: Peer, *, add: bool) -> list[Step]:
        """The steps that put learner `new` (added first if `add`) in the
        place of `voter`."""
        demoted = Peer(voter.id, voter.store_id, PeerRole.LEARNER)
        swap = ChangePeers(
            (
                ChangePeer(ChangePeerType.ADD_VOTER, Peer(new.id, new.store_id)),
                ChangePeer(ChangePeerType.ADD_LEARNER, demoted),
            )
        )
        return [AddLearner(new), swap, RemovePeer(demoted)] if add else [swap, RemovePeer(demoted)]

    @staticmethod
    def move_learner(learner: Peer, new: Peer) -> list[Step]:
        """The steps that move a learner to `new`'s store."""
        return [AddLearner(new), RemovePeer(learner)]

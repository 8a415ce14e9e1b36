"""The replica checker: a pure function of a cluster view and one region,
returning the operator that brings the region closer to `max_replicas`
healthy voters, or None.

No I/O, no clock, no randomness; every choice is by a total order (ties
broken by store id), so the same view always gives the same operator. The
only effect is taking new peer ids from the view's id allocator.

Rules, in order (the first that applies wins):

0. Nothing for a region without a known leader, in a joint configuration
   (the store is leaving it), or whose voters on live stores (not Down, not
   Tombstone) are no majority: it could not commit a conf change anyway.
1. A peer on a store to vacate (Down, Offline, Tombstone, unknown):
   * a learner is removed: `RemovePeer`;
   * a voter, while the region has at most `max_replicas` voters, is
     replaced on the best target store: [`TransferLeader` away if it leads],
     `AddLearner` new, `ChangePeers` (promote new + demote old, joint, so the
     voter count never drops), `RemovePeer` old (now a learner). With no
     target store, the rules below still run (rule 3 removes it if the
     region has voters to spare).
2. Fewer voters than `max_replicas`: promote a learner on an Up store that
   has caught up (`PromoteLearner`; a learner still catching up is waited
   for), or `AddLearner` on the best target store then `PromoteLearner`.
3. More voters than `max_replicas`: remove the worst voter (on a store to
   vacate first, then Disconnected, then the fullest store; ties: the
   highest store id) with `RemovePeer` - after a `TransferLeader` to the
   best other healthy voter if it is the leader.
4. Learners left over by an operator that did not finish (a PD restart, a
   timeout) while the region has its voters: `RemovePeer`.

The best target store: Up, holding no peer of the region, known from a
store heartbeat, not busy, used ratio at most LOW_SPACE_RATIO, fewer than
`max_snapshot_count` snapshots on their way in (operators that still have to
add a learner there) and fewer than `max_pending_peer_count` pending peers;
among those, the fewest regions (counting the peers operators are adding
and removing), ties to the lowest store id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from kvproto.metapb import Peer, PeerId, PeerRole, StoreId, StoreState
from kvproto.raft_cmdpb import ChangePeer, ChangePeerType
from placement_driver.config import ClusterConfig
from placement_driver.operators import (
    AddLearner,
    ChangePeers,
    Operator,
    OperatorKind,
    PromoteLearner,
    RemovePeer,
    Step,
    TransferLeader,
    in_joint,
)
from placement_driver.regions import RegionRecord
from placement_driver.stores import StoreInfo

__all__ = [
    "DEAD_STATES",
    "LOW_SPACE_RATIO",
    "VACATE_STATES",
    "ClusterView",
    "OpInfluence",
    "check_replicas",
]

# A store whose used ratio (1 - available / capacity) is above this gets no
# new peers (TiKV PD's low-space-ratio default).
LOW_SPACE_RATIO: Final = 0.8
# Peers on stores in these states are moved elsewhere.
VACATE_STATES = frozenset({StoreState.DOWN, StoreState.OFFLINE, StoreState.TOMBSTONE})
# Voters on stores in these states cannot vote.
DEAD_STATES = frozenset({StoreState.DOWN, StoreState.TOMBSTONE})


class ClusterView(Protocol):
    """What a checker reads of the cluster (`Cluster` is one)."""

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


def check_replicas(
    view: ClusterView, record: RegionRecord, influence: OpInfluence | None = None
) -> Operator | None:
    """The replica operator for `record`'s region (not started), or None."""
    return _Check(view, record, influence or OpInfluence()).run()


class _Check:
    def __init__(self, view: ClusterView, record: RegionRecord, influence: OpInfluence) -> None:
        self.view = view
        self.record = record
        self.region = record.region
        self.influence = influence
        self.config = view.config

    # -- store judgments -----------------------------------------------------------

    def state(self, store_id: StoreId) -> StoreState:
        info = self.view.find_store(store_id)
        return StoreState.TOMBSTONE if info is None else info.state

    def regions_on(self, store_id: StoreId) -> int:
        return self.view.store_region_count(store_id) + self.influence.region_delta[store_id]

    def to_vacate(self, peer: Peer) -> bool:
        return self.state(peer.store_id) in VACATE_STATES

    def accepts_peers(self, info: StoreInfo) -> bool:
        config = self.config
        stats = info.stats
        if info.state != StoreState.UP or stats is None or stats.is_busy:
            return False
        if stats.capacity > 0 and stats.available < stats.capacity * (1 - LOW_SPACE_RATIO):
            return False
        snapshots = max(self.influence.snapshots_in[info.id], stats.receiving_snap_count)
        if snapshots >= config.max_snapshot_count:
            return False
        return self.view.store_pending_peer_count(info.id) < config.max_pending_peer_count

    def target(self) -> StoreInfo | None:
        taken = {p.store_id for p in self.region.peers}
        candidates = [s for s in self.view.stores() if s.id not in taken and self.accepts_peers(s)]
        return min(candidates, key=lambda s: (self.regions_on(s.id), s.id), default=None)

    def fill_order(self, peer: Peer) -> tuple[int, int]:
        """Smaller is the emptier store."""
        return (self.regions_on(peer.store_id), peer.store_id)

    def removal_order(self, peer: Peer) -> tuple[int, int, int]:
        """Larger is removed first."""
        state = self.state(peer.store_id)
        rank = 2 if state in VACATE_STATES else 1 if state == StoreState.DISCONNECTED else 0
        return (rank, self.regions_on(peer.store_id), peer.store_id)

    def new_leader(self, leaving: Peer) -> Peer | None:
        """The healthy voter to lead instead of `leaving`."""
        down = {d.peer.id for d in self.record.stat.down_peers}
        candidates = [
            p
            for p in self.region.peers
            if p.role == PeerRole.VOTER
            and p.id != leaving.id
            and p.id not in down
            and not self.record.stat.is_pending(p.id)
            and self.state(p.store_id) == StoreState.UP
        ]
        return min(candidates, key=self.fill_order, default=None)

    def new_peer(self, store: StoreInfo) -> Peer:
        (peer_id,) = self.view.alloc_ids(1)
        return Peer(PeerId(peer_id), store.id, PeerRole.LEARNER)

    def operator(self, desc: str, *steps: Step) -> Operator:
        return Operator(self.region.id, desc, OperatorKind.REPLICA, steps, self.region.epoch)

    # -- the rules -------------------------------------------------------------------

    def run(self) -> Operator | None:
        leader = self.record.leader
        if leader is None or in_joint(self.region):
            return None
        voters = [p for p in self.region.peers if p.role == PeerRole.VOTER]
        learners = [p for p in self.region.peers if p.is_learner]
        alive = [v for v in voters if self.state(v.store_id) not in DEAD_STATES]
        if 2 * len(alive) <= len(voters):
            return None
        rules: list[Callable[[list[Peer], list[Peer], Peer], Operator | None]] = [
            self.replace_vacated,
            self.make_up,
            self.remove_extra_voter,
            self.remove_extra_learner,
        ]
        for rule in rules:
            op = rule(voters, learners, leader)
            if op is not None:
                return op
        return None

    def replace_vacated(
        self, voters: list[Peer], learners: list[Peer], leader: Peer
    ) -> Operator | None:
        for learner in learners:
            if self.to_vacate(learner):
                why = self.state(learner.store_id).name.lower()
                return self.operator(f"remove-{why}-learner", RemovePeer(learner))
        if len(voters) > self.config.max_replicas:
            return None  # rule 3 removes one instead
        for voter in voters:
            if not self.to_vacate(voter):
                continue
            store = self.target()
            if store is None:
                return None
            steps: list[Step] = []
            if voter.id == leader.id:
                new_leader = self.new_leader(voter)
                if new_leader is None:
                    return None
                steps.append(TransferLeader(new_leader))
            new = self.new_peer(store)
            demoted = Peer(voter.id, voter.store_id, PeerRole.LEARNER)
            steps += [
                AddLearner(new),
                ChangePeers(
                    (
                        ChangePeer(ChangePeerType.ADD_VOTER, Peer(new.id, new.store_id)),
                        ChangePeer(ChangePeerType.ADD_LEARNER, demoted),
                    )
                ),
                RemovePeer(demoted),
            ]
            why = self.state(voter.store_id).name.lower()
            return self.operator(f"replace-{why}-peer", *steps)
        return None

    def make_up(self, voters: list[Peer], learners: list[Peer], leader: Peer) -> Operator | None:
        if len(voters) >= self.config.max_replicas:
            return None
        ready = [p for p in learners if self.state(p.store_id) == StoreState.UP]
        if ready:
            caught_up = [p for p in ready if not self.record.stat.is_pending(p.id)]
            if not caught_up:
                return None  # wait for it
            best = min(caught_up, key=self.fill_order)
            return self.operator("promote-learner", PromoteLearner(best))
        store = self.target()
        if store is None:
            return None
        new = self.new_peer(store)
        return self.operator("add-replica", AddLearner(new), PromoteLearner(new))

    def remove_extra_voter(
        self, voters: list[Peer], learners: list[Peer], leader: Peer
    ) -> Operator | None:
        if len(voters) <= self.config.max_replicas:
            return None
        victim = max(voters, key=self.removal_order)
        if victim.id != leader.id:
            return self.operator("remove-extra-replica", RemovePeer(victim))
        new_leader = self.new_leader(victim)
        if new_leader is None:
            return None
        return self.operator("remove-extra-replica", TransferLeader(new_leader), RemovePeer(victim))

    def remove_extra_learner(
        self, voters: list[Peer], learners: list[Peer], leader: Peer
    ) -> Operator | None:
        if not learners or len(voters) < self.config.max_replicas:
            return None
        return self.operator("remove-extra-learner", RemovePeer(learners[0]))

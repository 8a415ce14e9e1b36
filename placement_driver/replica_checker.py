"""The replica checker: a pure function of a cluster view and one region,
returning the operator that brings the region closer to `max_replicas`
healthy voters, or None.

No I/O, no clock, no randomness; every choice is by a total order (ties
broken by store id), so the same view always gives the same operator. The
only effect is taking new peer ids from the view's id allocator.

A voter is healthy when its store is known and not Down or Tombstone (an
Offline store still serves until it is emptied; a Disconnected one has
missed a few heartbeats only), the leader does not report it down and it is
not pending (catching up). No operator is proposed unless every
configuration it passes through, after each of its steps (both halves of a
joint one), keeps a majority of healthy voters; a learner the operator adds
counts as healthy once promoted, since its AddLearner step finishes only
when it has caught up.

Rules, in order (the first that applies wins; a rule that waits stops the
others):

0. Nothing for a region without a known leader, in a joint configuration
   (the store is leaving it), or whose healthy voters are no majority: it
   could not commit a conf change anyway, and a joint one could be stuck.
1. A peer on a store to vacate (Down, Offline, Tombstone, unknown):
   * a learner is removed: `RemovePeer`;
   * a voter (the least healthy first), while the region has at most
     `max_replicas` voters, is replaced: [`TransferLeader` away if it
     leads], `ChangePeers` (promote the replacement + demote the old voter,
     joint, so the voter count never drops), `RemovePeer` old (now a
     learner). The replacement is a learner the region already has on an Up
     store, not reported down (one that caught up first; one still catching
     up is waited for: a learner an operator added before it timed out or
     the PD restarted, whose snapshot takes long); else `AddLearner` new on
     the best target store first. With neither, the rules below still run
     (rule 3 removes the voter if the region has voters to spare).
2. Fewer voters than `max_replicas`: promote a learner on an Up store, not
   reported down, that has caught up (`PromoteLearner`; a learner still
   catching up is waited for), or `AddLearner` on the best target store then
   `PromoteLearner`.
3. More voters than `max_replicas`: remove the worst voter whose removal
   keeps a healthy majority (least healthy first: on a Down, Tombstone or
   unknown store, reported down, pending, on an Offline store, on a
   Disconnected store; then the fullest store; ties: the highest store id)
   with `RemovePeer` - after a `TransferLeader` to the best other healthy
   voter if it is the leader. None if no removal keeps one.
4. Learners left over by an operator that did not finish (a PD restart, a
   timeout) while the region has its voters: `RemovePeer` - but not the
   learners rule 1 would use to replace the voters on stores to vacate.

The best target store: Up, holding no peer of the region, known from a
store heartbeat, not busy, used ratio at most LOW_SPACE_RATIO, fewer than
`max_snapshot_count` snapshots on their way in (operators that still have to
add a learner there) and fewer than `max_pending_peer_count` pending peers;
among those, the fewest regions (counting the peers operators are adding
and removing), ties to the lowest store id.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeAlias

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


class _Wait(enum.Enum):
    """A rule's verdict that the region must wait (for a learner to catch
    up): no operator, and the later rules must not run either."""

    WAIT = enum.auto()


_Verdict: TypeAlias = Operator | _Wait | None


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

    def is_down(self, peer: Peer) -> bool:
        return any(d.peer.id == peer.id for d in self.record.stat.down_peers)

    def healthy(self, peer: Peer) -> bool:
        """Whether the peer can acknowledge the leader's appends now."""
        return (
            self.state(peer.store_id) not in DEAD_STATES
            and not self.is_down(peer)
            and not self.record.stat.is_pending(peer.id)
        )

    def unhealthiness(self, peer: Peer) -> int:
        """Larger is the less healthy (and the first to go)."""
        state = self.state(peer.store_id)
        if state in DEAD_STATES:
            return 5
        if self.is_down(peer):
            return 4
        if self.record.stat.is_pending(peer.id):
            return 3
        if state == StoreState.OFFLINE:
            return 2
        return 1 if state == StoreState.DISCONNECTED else 0

    def removal_order(self, peer: Peer) -> tuple[int, int, int]:
        """Larger is removed first."""
        return (self.unhealthiness(peer), self.regions_on(peer.store_id), peer.store_id)

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

    def spares(self, learners: list[Peer]) -> list[Peer]:
        """Learners that can become voters of the region, best first: on an
        Up store, not reported down; caught up first, then the emptiest."""
        usable = [
            p for p in learners if self.state(p.store_id) == StoreState.UP and not self.is_down(p)
        ]
        return sorted(usable, key=lambda p: (self.record.stat.is_pending(p.id), self.fill_order(p)))

    def voters_to_replace(self, voters: list[Peer]) -> list[Peer]:
        """The voters on stores to vacate that rule 1 replaces (the least
        healthy first); none while the region has voters to spare."""
        if len(voters) > self.config.max_replicas:
            return []
        leaving = [v for v in voters if self.to_vacate(v)]
        return sorted(leaving, key=self.removal_order, reverse=True)

    def new_leader(self, leaving: Peer) -> Peer | None:
        """The healthy voter to lead instead of `leaving`."""
        candidates = [
            p
            for p in self.region.peers
            if p.role == PeerRole.VOTER
            and p.id != leaving.id
            and self.healthy(p)
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
        if 2 * sum(self.healthy(v) for v in voters) <= len(voters):
            return None
        rules: list[Callable[[list[Peer], list[Peer], Peer], _Verdict]] = [
            self.replace_vacated,
            self.make_up,
            self.remove_extra_voter,
            self.remove_extra_learner,
        ]
        for rule in rules:
            verdict = rule(voters, learners, leader)
            if isinstance(verdict, _Wait):
                return None
            if verdict is not None:
                return verdict
        return None

    def replace_vacated(self, voters: list[Peer], learners: list[Peer], leader: Peer) -> _Verdict:
        for learner in learners:
            if self.to_vacate(learner):
                why = self.state(learner.store_id).name.lower()
                return self.operator(f"remove-{why}-learner", RemovePeer(learner))
        spares = self.spares(learners)
        for voter in self.voters_to_replace(voters):
            steps: list[Step] = []
            if voter.id == leader.id:
                new_leader = self.new_leader(voter)
                if new_leader is None:
                    continue
                steps.append(TransferLeader(new_leader))
            store: StoreInfo | None = None
            if spares:
                new = spares[0]
                if self.record.stat.is_pending(new.id):
                    # Adding another would leave two learners to catch up,
                    # and this one removed as extra once the other is promoted.
                    return _Wait.WAIT
            else:
                store = self.target()
                if store is None:
                    return None
                # Its id is taken only for a plan that is proposed.
                new = Peer(PeerId(0), store.id, PeerRole.LEARNER)
            if not self.keeps_quorum(steps + self.replacement(voter, new, add=store is not None)):
                continue
            if store is not None:
                new = self.new_peer(store)
            steps += self.replacement(voter, new, add=store is not None)
            why = self.state(voter.store_id).name.lower()
            return self.operator(f"replace-{why}-peer", *steps)
        return None

    def replacement(self, voter: Peer, new: Peer, *, add: bool) -> list[Step]:
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

    def make_up(self, voters: list[Peer], learners: list[Peer], leader: Peer) -> _Verdict:
        if len(voters) >= self.config.max_replicas:
            return None
        spares = self.spares(learners)
        if spares:
            best = spares[0]
            if self.record.stat.is_pending(best.id):
                return _Wait.WAIT
            steps: tuple[Step, ...] = (PromoteLearner(best),)
            desc = "promote-learner"
        else:
            store = self.target()
            if store is None:
                return None
            new = self.new_peer(store)
            steps = (AddLearner(new), PromoteLearner(new))
            desc = "add-replica"
        return self.operator(desc, *steps) if self.keeps_quorum(steps) else None

    def remove_extra_voter(
        self, voters: list[Peer], learners: list[Peer], leader: Peer
    ) -> _Verdict:
        if len(voters) <= self.config.max_replicas:
            return None
        for victim in sorted(voters, key=self.removal_order, reverse=True):
            steps: list[Step] = []
            if victim.id == leader.id:
                new_leader = self.new_leader(victim)
                if new_leader is None:
                    continue
                steps.append(TransferLeader(new_leader))
            steps.append(RemovePeer(victim))
            if self.keeps_quorum(steps):
                return self.operator("remove-extra-replica", *steps)
        return None

    def remove_extra_learner(
        self, voters: list[Peer], learners: list[Peer], leader: Peer
    ) -> _Verdict:
        if not learners or len(voters) < self.config.max_replicas:
            return None
        # A replacement still catching up for a voter that must go: removing
        # it would start the replacement over, forever if its snapshot takes
        # longer than an operator step may.
        kept = {p.id for p in self.spares(learners)[: len(self.voters_to_replace(voters))]}
        extra = [p for p in learners if p.id not in kept]
        if not extra:
            return None
        return self.operator("remove-extra-learner", RemovePeer(extra[0]))

"""The replica checker: a pure function of a cluster view and one region,
returning the operator that brings the region closer to `max_replicas`
healthy voters, or None.

No I/O, no clock, no randomness; every choice is by a total order (ties
broken by store id), so the same view always gives the same operator. The
only effect is taking new peer ids from the view's id allocator.

Health, the quorum simulation and which stores accept a new peer are
`region_check`'s (shared with the balance schedulers). No operator is
proposed unless every configuration it passes through, after each of its
steps (both halves of a joint one), keeps a majority of healthy voters.

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

The best target store: among the stores that accept a new peer
(`region_check.accepts_peers`) and hold none of the region, the fewest
regions (counting the peers operators are adding and removing), ties to the
lowest store id.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeAlias

from kvproto.metapb import Peer, PeerRole, StoreState
from placement_driver.operators import (
    AddLearner,
    Operator,
    OperatorKind,
    PromoteLearner,
    RemovePeer,
    Step,
    TransferLeader,
    in_joint,
)
from placement_driver.region_check import DEAD_STATES, ClusterView, OpInfluence, RegionCheck
from placement_driver.regions import RegionRecord
from placement_driver.stores import StoreInfo

__all__ = ["check_replicas"]


class _Wait(enum.Enum):
    """A rule's verdict that the region must wait (for a learner to catch
    up): no operator, and the later rules must not run either."""

    WAIT = enum.auto()


_Verdict: TypeAlias = Operator | _Wait | None


def check_replicas(
    view: ClusterView, record: RegionRecord, influence: OpInfluence | None = None
) -> Operator | None:
    """The replica operator for `record`'s region (not started), or None."""
    return _Check(view, record, influence or OpInfluence()).run()


class _Check(RegionCheck):
    # -- store judgments -----------------------------------------------------------

    def target(self) -> StoreInfo | None:
        return min(self.new_homes(), key=lambda s: (self.regions_on(s.id), s.id), default=None)

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

    def operator(self, desc: str, *steps: Step) -> Operator:
        return Operator(self.region.id, desc, OperatorKind.REPLICA, steps, self.region.epoch)

    # -- the rules -------------------------------------------------------------------

    def run(self) -> Operator | None:
        leader = self.record.leader
        if leader is None or in_joint(self.region):
            return None
        if not self.has_quorum():
            return None
        voters = [p for p in self.region.peers if p.role == PeerRole.VOTER]
        learners = [p for p in self.region.peers if p.is_learner]
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
            if voter.id == leader.id and self.new_leader(voter) is None:
                continue
            to: Peer | StoreInfo
            if spares:
                to = spares[0]
                if self.record.stat.is_pending(to.id):
                    # Adding another would leave two learners to catch up,
                    # and this one removed as extra once the other is promoted.
                    return _Wait.WAIT
            else:
                store = self.target()
                if store is None:
                    return None
                to = store
            steps = self.move_voter(voter, to)
            if steps is None:
                continue
            why = self.state(voter.store_id).name.lower()
            return self.operator(f"replace-{why}-peer", *steps)
        return None

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

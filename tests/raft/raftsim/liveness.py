"""The end of a simulated run: heal everything, then check that the group
lives again within bounds.

Liveness (`heal` then `await_leader`, `drain`, `await_catch_up`): once the
network is healed (no cuts, no loss, delays of at most `Faults.delay_max`
time units, under two ticks) and every crashed member restarted, a leader
with a quorum of followers in its term must exist within
`LEADER_BOUND_ELECTIONS * election_ticks` ticks (with PreVote; see
`LEADER_BOUND_ELECTIONS_NO_PREVOTE` without). Why that bound: a deposed
leader steps down within one election timeout (CheckQuorum), followers stop
honouring a leader's lease one election timeout after hearing from it, and
every follower campaigns within its randomized timeout (< 2 election
timeouts) after that; each further round of split votes costs at most
2 election timeouts, so 10 election timeouts leave room for three failed
rounds after the first. Then every accepted proposal must be decided
(committed, or overwritten by another committed entry) within
`DRAIN_BOUND_ELECTIONS` election timeouts plus `ticks_per_entry()` per
undecided index (a window of `max_inflight` one-entry appends per round
trip may be all that moves), proposals of a leader that kept its leadership
to the end must be committed, and every live member must apply everything
committed within `CATCH_UP_BOUND_ELECTIONS` election timeouts (plus
`ticks_per_entry()` per entry the furthest behind node lacks).
"""

from __future__ import annotations

from raft.quorum import VoteResult

from .driver import Driver
from .network import Faults
from .operations import Operations
from .trace import LivenessFailure
from .world import SimNode, World

LEADER_BOUND_ELECTIONS = 10
# Without PreVote a node whose log cannot win still bumps the term each time
# it times out, resetting everyone's timer; a round elects a leader only if a
# node with a winning log times out first (probability >= 1/voters), so the
# bound is probabilistic: 100 election timeouts (measured worst: 19).
LEADER_BOUND_ELECTIONS_NO_PREVOTE = 100
DRAIN_BOUND_ELECTIONS = 30
CATCH_UP_BOUND_ELECTIONS = 40


class Liveness:
    def __init__(self, world: World, driver: Driver, ops: Operations) -> None:
        self.world = world
        self.driver = driver
        self.ops = ops
        self.params = world.params
        self.nodes = world.nodes
        self.checker = world.checker
        self.note = world.note

    def heal(self) -> None:
        """End every fault: no cuts, no loss, no crash points; restart every
        crashed node that is still a member."""
        self.note(0, "HEAL")
        self.world.net.heal()
        self.world.net.faults = Faults()
        self.params.crash_in_persist = 0.0
        for n in list(self.nodes.values()):
            n.paused_until = min(n.paused_until, self.world.now)
            if n.rn is None and not n.tombstone:
                self.driver.restart(n.id)

    def stable_leader(self) -> SimNode | None:
        """A live leader that a quorum of its voters follows in its term."""
        for n in self.world.leaders():
            r = n.rn.raft  # type: ignore[union-attr]
            following: dict[int, bool] = {}
            for i in r.trk.config.voters.ids():
                f = self.nodes.get(i)
                if f is not None and f.rn is not None:
                    fr = f.rn.raft
                    if fr.term == r.term and fr.lead == r.id:
                        following[i] = True
            if r.trk.config.voters.vote_result(following) == VoteResult.WON:
                return n
        return None

    def await_leader(self) -> int:
        """Run until a stable leader exists; returns the ticks it took."""
        start = self.world.now
        rounds = (
            LEADER_BOUND_ELECTIONS if self.params.pre_vote else LEADER_BOUND_ELECTIONS_NO_PREVOTE
        )
        bound = rounds * self.params.election_ticks
        ok = self.world.run_until(
            lambda: self.stable_leader() is not None,
            max_time=start + self.params.max_tick_time(bound),
        )
        if not ok:
            raise self.world.failure(
                LivenessFailure, f"no stable leader within {bound} ticks of healing"
            )
        return (self.world.now - start) // self.params.tick_interval

    def undecided(self) -> list[int]:
        c = self.checker
        return [pid for pid, p in c.proposals.items() if c.proposal_outcome(p) == "undecided"]

    def drain(self) -> int:
        """Propose fillers through the leader until every accepted proposal
        is decided and a filler committed; returns the ticks it took."""
        start = self.world.now
        c = self.checker
        lead = self.stable_leader()
        top = max((p.index for p in c.proposals.values()), default=0)
        backlog = max(0, top - lead.rn.commit_index) if lead and lead.rn else top
        bound = (
            DRAIN_BOUND_ELECTIONS * self.params.election_ticks
            + backlog * self.params.ticks_per_entry()
        )
        deadline = start + self.params.max_tick_time(bound)
        fillers: list[int] = []
        while True:
            committed_filler = any(
                c.proposal_outcome(c.proposals[p]) == "committed" for p in fillers
            )
            if committed_filler and not self.undecided():
                return (self.world.now - start) // self.params.tick_interval
            if self.world.now >= deadline:
                raise self.world.failure(
                    LivenessFailure,
                    f"proposals {self.undecided()[:20]} still undecided {bound} ticks after "
                    "a leader was elected",
                )
            lead = self.stable_leader()
            if lead is not None and lead.rn is not None:
                top = max((p.index for p in c.proposals.values()), default=0)
                mine = [p for p in fillers if c.proposals[p].term == lead.rn.term]
                gap = top - lead.rn.last_index
                for _ in range(max(0 if mine else 1, min(gap, 32))):
                    idx = self.ops.propose(lead.id, kind="filler")
                    if idx is None:
                        break
                    fillers.append(self.ops.last_pid)
            self.world.run_for(self.params.tick_interval)

    def await_catch_up(self) -> int:
        """Run until every member of the leader's config applied all that was
        committed when this began (writing a little meanwhile, so snapshots
        keep being taken); returns the ticks it took."""
        start = self.world.now
        lead = self.stable_leader()
        if lead is None:
            self.await_leader()
            lead = self.stable_leader()
        assert lead is not None and lead.rn is not None
        target = lead.rn.commit_index
        lowest = min((n.app.applied for n in self.nodes.values() if n.app is not None), default=0)
        backlog = max(0, target - lowest)
        bound = (
            CATCH_UP_BOUND_ELECTIONS * self.params.election_ticks
            + backlog * self.params.ticks_per_entry()
        )
        deadline = start + self.params.max_tick_time(bound)
        k = 0
        while True:
            behind = self._behind(target)
            if not behind:
                return (self.world.now - start) // self.params.tick_interval
            if self.world.now >= deadline:
                raise self.world.failure(
                    LivenessFailure,
                    f"members {behind} did not apply up to {target} within {bound} ticks",
                )
            k += 1
            lead = self.stable_leader()
            if lead is not None and k % 2 == 0:
                self.ops.propose(lead.id, kind="filler")
            self.world.run_for(self.params.tick_interval)

    def _behind(self, target: int) -> list[str]:
        lead = self.stable_leader()
        if lead is None or lead.rn is None:
            return ["(no leader)"]
        out = []
        for i in lead.rn.conf_state().all_ids():
            n = self.nodes.get(i)
            if n is None or n.app is None or n.app.applied < target:
                out.append(str(i))
        return out

    def check_leaders_kept_their_proposals(self) -> None:
        """Every accepted proposal was decided, and none accepted by the
        leader of the highest term was lost while it kept leading. (A stale
        leader may still think it leads an older term, e.g. cut off with
        CheckQuorum off: its proposals may be lost.)"""
        c = self.checker
        top = max(c.leaders, default=0)
        for p in c.proposals.values():
            out = c.proposal_outcome(p)
            if out == "undecided":
                raise self.world.failure(LivenessFailure, f"proposal {p} was never decided")
            if out == "superseded" and p.term == top and (p.node, p.term) not in c.tenures_ended:
                raise self.world.failure(
                    LivenessFailure,
                    f"proposal {p} was lost although node {p.node} still leads term {p.term}, "
                    "the highest term",
                )

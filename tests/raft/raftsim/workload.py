"""Random workloads and faults for a `Simulation`, and a full randomized run.

`Chaos` schedules one action at a time, at random intervals, in storms
that alternate with calm spells (operations only): proposals,
ReadIndex reads, leader transfers, crashes (and later restarts), pauses
(a stalled process: its clock and inbox stop for a while), network
partitions (symmetric splits, one-way cuts, an isolated leader; healed
later), changes of the network's loss / duplication / delay rates, and,
with `membership`, conf changes through the leader: add a learner (a fresh,
empty node), promote a learner, remove a voter or learner, replace a voter
with a fresh node or a learner through a joint config (two changes, AUTO:
left automatically), demote a voter while promoting a learner, single
changes through an implicit joint config, and explicit joint configs left
by an empty conf change.

`run_random` is the standard run: `steps` steps of chaos, then heal and the
liveness checks of `Simulation` (see its module docstring for the bounds).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from raft import ConfChangeSingle, ConfChangeTransition, ConfChangeType

from .cluster import Simulation
from .network import Faults
from .params import Options
from .trace import TRACE_LEN
from .world import SimNode

ADD_VOTER = ConfChangeType.ADD_NODE
ADD_LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE_NODE
AUTO = ConfChangeTransition.AUTO
IMPLICIT = ConfChangeTransition.JOINT_IMPLICIT
EXPLICIT = ConfChangeTransition.JOINT_EXPLICIT

MIN_VOTERS = 3
MAX_VOTERS = 5
MAX_LEARNERS = 2


@dataclass(slots=True)
class Profile:
    """Which kinds of chaos a run gets, and how often (relative weights)."""

    propose: int = 40
    read: int = 8
    transfer: int = 2
    crash: int = 3
    # Crash every node at once (a power failure), restart them later.
    power_failure: int = 0
    # Stall a node (clock and inbox stop) for a while.
    pause: int = 1
    partition: int = 3
    weather: int = 2
    membership: int = 0
    # Probabilities, each time a node is seen leading a new term, of
    # crashing or isolating it shortly after (while it replicates).
    kill_new_leader: float = 0.0
    isolate_new_leader: float = 0.0
    # Probability that a crash picks a node with an unwritten Ready.
    crash_unpersisted: float = 0.5
    # How long a partition lasts (time units) before it heals.
    partition_min: int = 50
    partition_max: int = 1500
    # Time units between two actions.
    gap_min: int = 2
    gap_max: int = 30
    # Storms (every kind of action) alternate with calm spells (operations
    # only: proposals, reads, transfers, membership changes), in time units.
    storm_min: int = 100
    storm_max: int = 1500
    calm_min: int = 100
    calm_max: int = 1500


@dataclass(slots=True)
class SimReport:
    seed: int
    steps: int
    time: int
    params: str
    stats: Counter[str] = field(default_factory=Counter)
    ticks_to_leader: int = 0
    ticks_to_drain: int = 0
    ticks_to_catch_up: int = 0


def conf_changes(*changes: tuple[ConfChangeType, int]) -> tuple[ConfChangeSingle, ...]:
    """`conf_changes((ADD_LEARNER, 4), (REMOVE, 1))`: the changes of a ConfChange."""
    return tuple(ConfChangeSingle(t, i) for t, i in changes)


class Chaos:
    """Drives a Simulation with random actions (weights from a Profile)
    until `stop()`; new-leader nemeses hook into `Simulation.leader_hooks`."""

    def __init__(self, sim: Simulation, profile: Profile | None = None) -> None:
        self.sim = sim
        self.rng = sim.rng
        self.profile = p = profile or Profile()
        self.active = False
        acts = [
            (p.propose, self.propose),
            (p.read, self.read),
            (p.transfer, self.transfer),
            (p.crash, self.crash),
            (p.power_failure, self.power_failure),
            (p.pause, self.pause),
            (p.partition, self.partition),
            (p.weather, self.weather),
            (p.membership, self.change_membership),
        ]
        self._actions = [a for w, a in acts if w > 0]
        self._weights = [w for w, _ in acts if w > 0]
        calm = {self.propose, self.read, self.transfer, self.change_membership}
        self._calm_actions = [a for w, a in acts if w > 0 and a in calm]
        self._calm_weights = [w for w, a in acts if w > 0 and a in calm]
        self.storm = True

    def start(self) -> None:
        self.active = True
        self.sim.schedule(self.rng.randint(1, 20), self._on_action)
        self._on_weather_turns(None, None)
        if self.profile.kill_new_leader or self.profile.isolate_new_leader:
            self.sim.leader_hooks.append(self._on_new_leader)

    def _on_new_leader(self, n: SimNode) -> None:
        if not self.active:
            return
        p, rng = self.profile, self.rng
        if p.kill_new_leader and rng.random() < p.kill_new_leader:
            self.sim.schedule(rng.randint(0, 40), self._on_kill_leader, n.id, n.gen)
        elif p.isolate_new_leader and rng.random() < p.isolate_new_leader:
            self.sim.schedule(rng.randint(0, 40), self._on_isolate_leader, n.id, n.gen)

    def _on_kill_leader(self, nid: int, gen: int) -> None:
        n = self.sim.nodes[nid]
        if self.active and n.gen == gen:
            self.sim.crash(nid, "nemesis: new leader")
            self.sim.schedule(self.rng.randint(20, 400), self._on_restart, nid)

    def _on_isolate_leader(self, nid: int, gen: int) -> None:
        n = self.sim.nodes[nid]
        if self.active and n.gen == gen:
            self.sim.net.isolate(nid, [i for i, m in self.sim.nodes.items() if not m.tombstone])
            self.sim.note(nid, "nemesis: isolated new leader")
            p = self.profile
            self.sim.schedule(
                self.rng.randint(p.partition_min, p.partition_max), self._on_heal_partition
            )

    def stop(self) -> None:
        self.active = False

    def _on_weather_turns(self, _a: Any, _b: Any) -> None:
        if not self.active:
            return
        p, rng = self.profile, self.rng
        self.storm = not self.storm
        lo, hi = (p.storm_min, p.storm_max) if self.storm else (p.calm_min, p.calm_max)
        self.sim.note(0, "STORM" if self.storm else "CALM")
        self.sim.schedule(rng.randint(lo, hi), self._on_weather_turns)

    def _on_action(self, _a: Any, _b: Any) -> None:
        if not self.active:
            return
        if self.storm:
            self.rng.choices(self._actions, self._weights)[0]()
        elif self._calm_actions:
            self.rng.choices(self._calm_actions, self._calm_weights)[0]()
        p = self.profile
        self.sim.schedule(self.rng.randint(p.gap_min, p.gap_max), self._on_action)

    # -- helpers ----------------------------------------------------------------------------

    def _live(self) -> list[SimNode]:
        return [n for n in self.sim.nodes.values() if n.rn is not None]

    def _target(self, p_leader: float) -> SimNode | None:
        lead = self.sim.leader()
        if lead is not None and self.rng.random() < p_leader:
            return lead
        live = self._live()
        return self.rng.choice(live) if live else None

    # -- actions -------------------------------------------------------------------------------

    def propose(self) -> None:
        n = self._target(0.85)
        if n is None:
            return
        for _ in range(self.rng.choice((1, 1, 1, 2, 5))):
            self.sim.propose(n.id)

    def read(self) -> None:
        n = self._target(0.7)
        if n is not None:
            self.sim.read_index(n.id)

    def transfer(self) -> None:
        lead = self.sim.leader()
        if lead is None or lead.rn is None:
            return
        ids = lead.rn.conf_state().all_ids()
        self.sim.transfer_leader(lead.id, self.rng.choice(ids))

    def crash(self) -> None:
        unwritten = [n for n in self._live() if n.rd is not None]
        if unwritten and self.rng.random() < self.profile.crash_unpersisted:
            victim: SimNode | None = self.rng.choice(unwritten)
        else:
            victim = self._target(0.4)
        if victim is None:
            return
        self.sim.crash(victim.id, "chaos")
        self.sim.schedule(self.rng.randint(20, 800), self._on_restart, victim.id)

    def pause(self) -> None:
        n = self._target(0.4)
        if n is not None:
            self.sim.pause(n.id, self.rng.randint(20, 400))

    def power_failure(self) -> None:
        live = self._live()
        for n in live:
            self.sim.crash(n.id, "power failure")
        delay = self.rng.randint(20, 300)
        for n in live:
            self.sim.schedule(delay + self.rng.randint(0, 30), self._on_restart, n.id)
        self.sim.stats["power_failures"] += 1

    def _on_restart(self, nid: int, _: Any) -> None:
        if self.active:
            self.sim.restart(nid)

    def partition(self) -> None:
        sim, rng = self.sim, self.rng
        ids = [n.id for n in sim.nodes.values() if not n.tombstone]
        if len(ids) < 2:
            return
        kind = rng.choice(("split", "split", "one-way", "isolate-leader", "heal"))
        if kind == "heal":
            sim.net.heal()
        elif kind == "split":
            rng.shuffle(ids)
            k = rng.randint(1, len(ids) - 1)
            sim.net.partition([ids[:k], ids[k:]])
        elif kind == "one-way":
            a = rng.choice(ids)
            outgoing = rng.random() < 0.5
            others = [b for b in ids if b != a]
            for b in rng.sample(others, rng.randint(1, len(others))):
                sim.net.cut(a, b) if outgoing else sim.net.cut(b, a)
        else:
            lead = sim.leader()
            if lead is None:
                return
            sim.net.isolate(lead.id, ids)
        sim.note(0, "partition", f"{kind}: cut {sorted(sim.net.cut_links)}")
        p = self.profile
        sim.schedule(rng.randint(p.partition_min, p.partition_max), self._on_heal_partition)
        sim.stats[f"partition:{kind}"] += 1

    def _on_heal_partition(self, _a: Any, _b: Any) -> None:
        if self.active and self.sim.net.cut_links:
            self.sim.net.heal()
            self.sim.note(0, "partition healed")

    def weather(self) -> None:
        rng = self.rng
        f = Faults(
            drop=rng.choice((0.0, 0.0, 0.01, 0.05, 0.2)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            delay_max=rng.choice((5, 12, 30)),
            long_delay=rng.choice((0.0, 0.01, 0.05)),
        )
        self.sim.net.faults = f
        self.sim.note(0, "network", f)

    def change_membership(self) -> None:
        sim, rng = self.sim, self.rng
        lead = sim.leader()
        if lead is None or lead.rn is None:
            return
        cs = lead.rn.conf_state()
        if cs.is_joint:
            if not cs.auto_leave:
                sim.propose_conf_change(lead.id, ())  # leave the explicit joint config
            return
        voters, learners = list(cs.voters), list(cs.learners)
        ops = []
        if len(learners) < MAX_LEARNERS:
            ops.append("add-learner")
        if learners and len(voters) < MAX_VOTERS:
            ops.append("promote")
        if len(voters) > MIN_VOTERS:
            ops.append("remove-voter")
        if learners:
            ops += ["remove-learner", "swap"]
        ops.append("replace-voter")
        op = rng.choice(ops)
        transition = AUTO
        if op == "add-learner":
            changes = conf_changes((ADD_LEARNER, sim.allocate_node_id()))
        elif op == "promote":
            changes = conf_changes((ADD_VOTER, rng.choice(learners)))
        elif op == "remove-voter":
            changes = conf_changes((REMOVE, rng.choice(voters)))
        elif op == "remove-learner":
            changes = conf_changes((REMOVE, rng.choice(learners)))
        elif op == "swap":
            # Demote a voter and promote a learner at once: joint.
            changes = conf_changes(
                (ADD_LEARNER, rng.choice(voters)), (ADD_VOTER, rng.choice(learners))
            )
        else:
            new = rng.choice(learners) if learners and rng.random() < 0.5 else None
            changes = conf_changes(
                (ADD_VOTER, new if new is not None else sim.allocate_node_id()),
                (REMOVE, rng.choice(voters)),
            )
        if len(changes) == 1 and rng.random() < 0.2:
            transition = IMPLICIT
        elif len(changes) == 2 and rng.random() < 0.2:
            transition = EXPLICIT
        fresh = [c.node_id for c in changes if c.node_id == sim.allocate_node_id()]
        if sim.propose_conf_change(lead.id, changes, transition) is not None:
            for _ in fresh:
                sim.add_empty_node()
        sim.stats[f"membership:{op}"] += 1


FLAVORS = ("mixed", "mixed", "leader-hunter", "crashy", "flaky-net")


def random_flavor(
    rng: random.Random, membership: bool, flavor: str | None = None
) -> tuple[str, Profile, Options]:
    """Pick a kind of chaos (unless `flavor` is given) and the matching
    profile and cluster options; `None` options are drawn by Simulation."""
    flavor = flavor or rng.choice(FLAVORS)
    opts = Options()
    if flavor == "mixed":
        p = Profile(power_failure=1, kill_new_leader=0.1, isolate_new_leader=0.1)
    elif flavor == "leader-hunter":
        # Leaders die or get cut off right after winning, often with one
        # entry per append: old-term entries get replicated piecemeal.
        p = Profile(
            kill_new_leader=0.5,
            isolate_new_leader=0.4,
            partition=6,
            partition_min=20,
            partition_max=300,
        )
        if rng.random() < 0.7:
            opts.max_size_per_msg = 1
            opts.max_inflight = 1
    elif flavor == "crashy":
        # Crashes that land between a Ready and its write, power failures.
        p = Profile(
            power_failure=3,
            crash=6,
            crash_unpersisted=0.9,
            partition=1,
            storm_min=200,
            storm_max=2000,
            calm_min=50,
            calm_max=500,
        )
        opts.persist_delay_max = 20
        opts.crash_in_persist = 0.01
    elif flavor == "flaky-net":
        p = Profile(partition=8, partition_min=10, partition_max=200, weather=6, crash=1)
    else:
        raise ValueError(f"unknown flavor {flavor!r}")
    if membership:
        p.membership = 6
    return flavor, p, opts


def run_random(
    seed: int,
    steps: int,
    *,
    membership: bool = False,
    flavor: str | None = None,
    options: Options | None = None,
    profile: Profile | None = None,
    reproduce: str = "",
    trace_len: int | None = TRACE_LEN,
) -> SimReport:
    """`steps` steps of chaos, then heal and check liveness; raises a
    `SimulationFailure` on any violation. The flavor of chaos, the profile
    and the options are drawn from the seed unless given."""
    rng = random.Random(seed)
    name, drawn_profile, drawn_options = random_flavor(rng, membership, flavor)
    sim = Simulation(
        seed, options or drawn_options, reproduce=reproduce, trace_len=trace_len, rng=rng
    )
    sim.flavor = name
    chaos = Chaos(sim, profile or drawn_profile)
    chaos.start()
    sim.run_steps(steps)
    chaos.stop()
    chaos_steps = sim.step
    sim.heal()
    report = SimReport(seed, chaos_steps, sim.now, sim.describe_params())
    report.ticks_to_leader = sim.await_leader()
    report.ticks_to_drain = sim.drain()
    sim.check_leaders_kept_their_proposals()
    report.ticks_to_catch_up = sim.await_catch_up()
    report.steps = sim.step
    report.time = sim.now
    report.stats.update(sim.stats)
    report.stats.update({f"net:{k}": v for k, v in sim.net.stats.items()})
    report.stats.update(sim.checker.proposal_summary())
    report.stats.update({f"reads:{k}": v for k, v in sim.checker.read_count.items()})
    report.stats["elections"] = sim.checker.elections
    report.stats["max_term"] = max(sim.checker.leaders, default=0)
    report.stats["max_commit"] = sim.checker.max_committed
    return report

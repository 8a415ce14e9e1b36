"""A deterministic simulation of a Raft group: nodes, disks, network, time.

One plain-Python event loop: a heap of timed events (ticks per node, message
deliveries, disk writes completing, snapshot reports, workload actions),
processed one at a time; each processed event is one *step*. One
`random.Random(seed)` makes every random choice (timing, faults, crash
points, workload, and the seed of each RaftNode's own rng), so a seed
replays exactly. No trio: its scheduler shuffles on purpose.

`Simulation` is what tests drive; it puts together:

* `params.Params`: the shape of the group (`Options`, the rest drawn from
  the seed);
* `world.World`: what every part shares (the rng, the clock and the event
  heap, the nodes, the network, the checker, the trace, the counters) and
  the failure report;
* `driver.Driver`: how a node is driven (the contract of `raft.node`), its
  lives (crash, restart, pause) and its snapshots;
* `operations.Operations`: proposals, conf changes, reads, leader transfers;
* `liveness.Liveness`: `heal`, then the liveness checks and their bounds.

After every step the `Checker` (see `invariants.py`) checks the node the
step touched. A failure raises `SafetyViolation`, `LivenessFailure` or
`RaftCrashed` carrying the seed, step, last events, node states and a
`reproduce:` line.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

from raft import ConfChangeSingle, ConfChangeTransition, ConfState

from .driver import Driver
from .liveness import Liveness
from .network import Network
from .operations import Operations
from .params import Options, Params
from .trace import TRACE_LEN, SimulationFailure
from .world import SimNode, World


class Simulation:
    def __init__(
        self,
        seed: int,
        options: Options | None = None,
        *,
        reproduce: str = "",
        trace_len: int | None = TRACE_LEN,
        rng: random.Random | None = None,
    ) -> None:
        """`rng`, if given, must be `random.Random(seed)` (possibly already
        used by the caller to pick `options`): the one source of randomness."""
        self.seed = seed
        self.reproduce = reproduce or f"Simulation(seed={seed})"
        self.rng = rng = rng if rng is not None else random.Random(seed)
        self.params = Params.draw(options or Options(), rng)
        self.world = world = World(
            seed, self.params, rng, reproduce=self.reproduce, trace_len=trace_len
        )
        self.driver = Driver(world)
        world.net = Network(rng, world.schedule, self.driver.on_deliver, self.driver.on_drop)
        self.ops = Operations(world, self.driver)
        self.liveness = Liveness(world, self.driver, self.ops)
        # The world's parts that are never replaced, as tests know them.
        self.trace = world.trace
        self.checker = world.checker
        self.net = world.net
        self.nodes = world.nodes
        self.stats = world.stats
        # Called with a node right after it is first seen leading a term.
        self.leader_hooks = world.leader_hooks
        self.driver.bootstrap()

    @property
    def now(self) -> int:
        return self.world.now

    @property
    def step(self) -> int:
        return self.world.step

    @property
    def flavor(self) -> str:
        """The kind of chaos, set by whoever drives it."""
        return self.world.flavor

    @flavor.setter
    def flavor(self, flavor: str) -> None:
        self.world.flavor = flavor

    @property
    def tick_interval(self) -> int:
        return self.params.tick_interval

    @property
    def ever_members(self) -> set[int]:
        """Ids ever in an applied config."""
        return self.world.ever_members

    @property
    def latest_conf(self) -> tuple[int, ConfState]:
        """The latest committed config, with its index."""
        return self.world.latest_conf

    def describe_params(self) -> str:
        return self.world.describe_params()

    # -- the event loop and the failure report (`World`) ------------------------------

    def schedule(
        self, delay: int, fn: Callable[[Any, Any], None], a: Any = None, b: Any = None
    ) -> None:
        self.world.schedule(delay, fn, a, b)

    def run_steps(self, n: int, until: Callable[[], bool] | None = None) -> bool:
        return self.world.run_steps(n, until)

    def run_until(self, until: Callable[[], bool], *, max_time: int) -> bool:
        return self.world.run_until(until, max_time=max_time)

    def run_for(self, duration: int) -> None:
        self.world.run_for(duration)

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return self.world.guard()

    def failure(self, cls: type[SimulationFailure], reason: str, **kw: Any) -> SimulationFailure:
        return self.world.failure(cls, reason, **kw)

    def report_text(self) -> str:
        return self.world.report_text()

    def note(self, node: int, what: str, obj: Any = None) -> None:
        self.world.note(node, what, obj)

    def live_nodes(self) -> list[SimNode]:
        return self.world.live_nodes()

    def leaders(self) -> list[SimNode]:
        return self.world.leaders()

    def leader(self) -> SimNode | None:
        return self.world.leader()

    # -- the nodes' lives (`Driver`) ------------------------------------------------------

    def add_empty_node(self) -> int:
        return self.driver.add_empty_node()

    def allocate_node_id(self) -> int:
        return self.driver.allocate_node_id()

    def crash(self, nid: int, why: str = "crash") -> None:
        self.driver.crash(nid, why)

    def restart(self, nid: int) -> None:
        self.driver.restart(nid)

    def pause(self, nid: int, duration: int) -> None:
        self.driver.pause(nid, duration)

    def take_snapshot(self, n: SimNode, compact: bool = True) -> None:
        self.driver.take_snapshot(n, compact)

    # -- client operations (`Operations`) ---------------------------------------------------

    def propose(self, nid: int, kind: str = "put") -> int | None:
        return self.ops.propose(nid, kind)

    def propose_conf_change(
        self,
        nid: int,
        changes: tuple[ConfChangeSingle, ...],
        transition: ConfChangeTransition = ConfChangeTransition.AUTO,
    ) -> int | None:
        return self.ops.propose_conf_change(nid, changes, transition)

    def read_index(self, nid: int) -> None:
        self.ops.read_index(nid)

    def transfer_leader(self, nid: int, to: int) -> None:
        self.ops.transfer_leader(nid, to)

    # -- liveness (`Liveness`) ----------------------------------------------------------------

    def ticks_per_entry(self) -> int:
        return self.params.ticks_per_entry()

    def max_tick_time(self, ticks: int) -> int:
        return self.params.max_tick_time(ticks)

    def heal(self) -> None:
        self.liveness.heal()

    def stable_leader(self) -> SimNode | None:
        return self.liveness.stable_leader()

    def await_leader(self) -> int:
        return self.liveness.await_leader()

    def undecided(self) -> list[int]:
        return self.liveness.undecided()

    def drain(self) -> int:
        return self.liveness.drain()

    def await_catch_up(self) -> int:
        return self.liveness.await_catch_up()

    def check_leaders_kept_their_proposals(self) -> None:
        self.liveness.check_leaders_kept_their_proposals()

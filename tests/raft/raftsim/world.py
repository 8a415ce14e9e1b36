"""What the parts of one Raft simulation share: the one `random.Random`, the
clock and the heap of timed events (each processed event is one step), the
drawn `Params`, the nodes, the network, the invariant checker, the trace
and the counters; and the failure report built from them.
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from raft import ConfState, RaftNode, Ready, Role
from raft.describe import describe_raft

from .app import KvStateMachine
from .disk import SimDisk
from .invariants import Checker
from .network import Network
from .params import Params
from .trace import (
    TRACE_LEN,
    RaftCrashed,
    SafetyViolation,
    SimulationFailure,
    Trace,
    Violation,
)


@dataclass(slots=True)
class SimNode:
    id: int
    disk: SimDisk
    tick_every: int
    rn: RaftNode | None = None
    app: KvStateMachine | None = None
    gen: int = 0  # bumped by crash and restart: events of older lives are void
    rd: Ready | None = None  # the outstanding Ready, being written
    tombstone: bool = False  # removed from the group and destroyed
    snapshot_building: bool = False
    led_term: int = 0  # the last term this node was seen leading
    installed_snapshot: int = 0  # index of the last snapshot it installed from a leader
    paused_until: int = 0  # a stalled process: its events wait until then
    ready_due: bool = False  # a deferred ready() is scheduled
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def alive(self) -> bool:
        return self.rn is not None


class World:
    def __init__(
        self,
        seed: int,
        params: Params,
        rng: random.Random,
        *,
        reproduce: str,
        trace_len: int | None = TRACE_LEN,
    ) -> None:
        self.seed = seed
        self.params = params
        self.rng = rng
        self.reproduce = reproduce
        self.flavor = "custom"  # the kind of chaos, set by whoever drives it
        self.now = 0
        self.step = 0
        self._seq = 0
        self._heap: list[tuple[int, int, Callable[[Any, Any], None], Any, Any]] = []
        self.trace = Trace(trace_len)
        self.checker = Checker()
        # Set once the handlers of its deliveries and drops exist (`Driver`).
        self.net: Network
        self.nodes: dict[int, SimNode] = {}
        self.stats: Counter[str] = Counter()
        # Ids ever in an applied config, and the latest committed config.
        self.ever_members: set[int] = set()
        self.latest_conf: tuple[int, ConfState] = (0, ConfState())
        # Called with a node right after it is first seen leading a term.
        self.leader_hooks: list[Callable[[SimNode], None]] = []

    def describe_params(self) -> str:
        return f"flavor={self.flavor} {self.params.describe()}"

    # -- the event loop -----------------------------------------------------------------

    def schedule(
        self, delay: int, fn: Callable[[Any, Any], None], a: Any = None, b: Any = None
    ) -> None:
        heapq.heappush(self._heap, (self.now + delay, self._seq, fn, a, b))
        self._seq += 1

    def run_steps(self, n: int, until: Callable[[], bool] | None = None) -> bool:
        """Process `n` events (or fewer, once `until()` holds after one)."""
        return self._loop(self.step + n, None, until)

    def run_until(self, until: Callable[[], bool], *, max_time: int) -> bool:
        """Process events until `until()` holds or simulation time passes
        `max_time` (absolute); returns whether `until()` held."""
        return self._loop(None, max_time, until)

    def run_for(self, duration: int) -> None:
        self._loop(None, self.now + duration, None)

    def _loop(
        self, max_step: int | None, max_time: int | None, until: Callable[[], bool] | None
    ) -> bool:
        heap = self._heap
        pop = heapq.heappop
        with self.guard():
            if until is not None and until():
                return True
            while heap:
                if max_step is not None and self.step >= max_step:
                    return False
                if max_time is not None and heap[0][0] > max_time:
                    self.now = max_time
                    return False
                t, _, fn, a, b = pop(heap)
                self.now = t
                self.step += 1
                fn(a, b)
                if until is not None and until():
                    return True
            raise AssertionError("the event heap ran dry")

    # -- the failure report -------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn anything raised inside into a SimulationFailure with the seed,
        the trace and the reproduce line."""
        try:
            yield
        except SimulationFailure:
            raise
        except Violation as v:
            raise self.failure(SafetyViolation, str(v), invariant=v.invariant) from v
        except Exception as e:
            raise self.failure(RaftCrashed, f"{type(e).__name__}: {e}") from e

    def failure(self, cls: type[SimulationFailure], reason: str, **kw: Any) -> SimulationFailure:
        return cls(
            seed=self.seed,
            step=self.step,
            time=self.now,
            reason=reason,
            report=self.report_text(),
            reproduce=self.reproduce,
            **kw,
        )

    def report_text(self) -> str:
        n = len(self.trace.events)
        lines = [f"params: {self.describe_params()}", f"last {n} events:", self.trace.render()]
        lines.append("nodes:")
        for node in self.nodes.values():
            if node.tombstone:
                lines.append(f"{node.id}: tombstone")
            elif node.rn is None:
                lines.append(f"{node.id}: DOWN (disk: {node.disk.hard_state})")
            else:
                lines.append(describe_raft(node.rn.raft))
        if self.net.cut_links:
            lines.append(f"cut links: {sorted(self.net.cut_links)}")
        return "\n".join(lines)

    def note(self, node: int, what: str, obj: Any = None) -> None:
        self.trace.add(self.step, self.now, node, what, obj)

    # -- the nodes ----------------------------------------------------------------------

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.rn is not None]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.rn is not None and n.rn.role == Role.LEADER]

    def leader(self) -> SimNode | None:
        """The live leader of the highest term, if any."""
        best: SimNode | None = None
        best_term = -1
        for n in self.leaders():
            term = n.rn.term if n.rn is not None else -1
            if term > best_term:
                best, best_term = n, term
        return best

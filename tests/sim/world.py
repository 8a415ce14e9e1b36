"""The simulation's world: one virtual clock, one heap of timed events, one
`random.Random`, and the network between stores, clients and the PD.

Plain Python, single-threaded: the same seed replays the same run (trio
shuffles its run queue on purpose, so nothing here runs on trio). Every
random choice comes from `World.rng`, in an order fixed by the events.

The network:

* Raft traffic between stores is datagrams: each batch is delivered after a
  random delay (reordering them), dropped, or delivered twice, as
  `Faults` says; a cut link drops what is sent on it.
* Client calls are TCP connections (`Net.call`): never duplicated; a call
  to a store that is down fails at once (connection refused), one whose
  store crashes before answering fails with "connection lost", one over a
  cut link hangs until its timeout. `Faults.lose_answer` cuts the connection
  after the store took the request (it may apply it): the answer is lost.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kvproto.rpc import (
    RpcCallError,
    RpcConnectionLostError,
    RpcTimeoutError,
    RpcUnavailableError,
)

# Wall clock of the simulated machines at time 0 (ms since the epoch): the
# stores stamp commands with it, clients open sessions with it.
WALL_CLOCK_START_MS = 1_800_000_000_000


class World:
    def __init__(self, seed: int, trace_lines: int = 4000) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.trace: deque[str] = deque(maxlen=trace_lines)
        self.events = 0

    def at(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` `delay` seconds from now."""
        heapq.heappush(self._heap, (self.now + max(delay, 0.0), next(self._seq), fn, args))

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            when, _, fn, args = heapq.heappop(self._heap)
            self.now = when
            self.events += 1
            fn(*args)
        self.now = max(self.now, t)

    def wall_ms(self) -> int:
        return WALL_CLOCK_START_MS + int(self.now * 1000)

    def log(self, line: str) -> None:
        self.trace.append(f"{self.now:9.4f} {line}")


@dataclass(slots=True)
class Faults:
    """Rates of the network's faults (delays in seconds)."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay_min: float = 0.0002
    delay_max: float = 0.002
    # An occasional long delay reorders a lot.
    long_delay: float = 0.0
    long_delay_max: float = 0.3
    # A client call whose answer is lost (the connection breaks after the
    # store took the request).
    lose_answer: float = 0.0


class Server(Protocol):
    """What a network endpoint that answers calls looks like: when its
    process dies it calls every function in `connections` (each breaks one
    open call; a dict, not a set, so the order replays) and bumps
    `incarnation`."""

    up: bool
    incarnation: int
    connections: dict[Callable[[], None], None]

    def serve(self, request: object, respond: Callable[[object], None]) -> None: ...


class Net:
    def __init__(self, world: World) -> None:
        self.world = world
        self.faults = Faults()
        # Directed links that are cut: (from, to), endpoint names.
        self.cut: set[tuple[str, str]] = set()
        self.stats: Counter[str] = Counter()

    def allows(self, src: str, dst: str) -> bool:
        return (src, dst) not in self.cut

    def delay(self) -> float:
        f = self.faults
        if f.long_delay and self.world.rng.random() < f.long_delay:
            return self.world.rng.uniform(f.delay_max, f.long_delay_max)
        return self.world.rng.uniform(f.delay_min, f.delay_max)

    def partition(self, group: set[str], others: set[str]) -> None:
        for a in group:
            for b in others:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def heal(self) -> None:
        self.cut.clear()

    # -- datagrams (Raft traffic) ------------------------------------------------

    def datagram(self, src: str, dst: str, deliver: Callable[[], None]) -> None:
        rng = self.world.rng
        if not self.allows(src, dst):
            self.stats["datagrams cut"] += 1
            return
        if self.faults.drop and rng.random() < self.faults.drop:
            self.stats["datagrams dropped"] += 1
            return
        copies = 2 if self.faults.duplicate and rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            self.world.at(self.delay(), self._arrive, src, dst, deliver)
        self.stats["datagrams"] += copies

    def _arrive(self, src: str, dst: str, deliver: Callable[[], None]) -> None:
        if self.allows(src, dst):
            deliver()
        else:
            self.stats["datagrams cut"] += 1

    # -- calls (client RPC, over TCP) ---------------------------------------------

    def call(
        self,
        src: str,
        dst: str,
        server: Server,
        request: object,
        timeout: float,
        done: Callable[[object], None],
    ) -> None:
        """Call `server` (named `dst`); `done` gets the response or an
        `RpcCallError`, exactly once."""
        world = self.world
        answered = False

        def finish(outcome: object) -> None:
            nonlocal answered
            if not answered:
                answered = True
                server.connections.pop(broken, None)
                done(outcome)

        def broken() -> None:
            world.at(self.delay(), finish, RpcConnectionLostError(f"{dst}: connection lost"))

        def timeout_fired() -> None:
            finish(RpcTimeoutError(f"no answer from {dst} in {timeout:.3f} s"))

        world.at(timeout, timeout_fired)
        if not server.up:
            self.stats["calls refused"] += 1
            world.at(self.delay(), finish, RpcUnavailableError(f"{dst}: connection refused"))
            return
        if not self.allows(src, dst):
            self.stats["calls hanging"] += 1
            return  # a partition: nothing comes back before the timeout
        incarnation = server.incarnation
        lose = self.faults.lose_answer and world.rng.random() < self.faults.lose_answer

        def arrive() -> None:
            if not server.up or server.incarnation != incarnation:
                lost: RpcCallError = RpcConnectionLostError(f"{dst}: connection lost")
                world.at(self.delay(), finish, lost)
                return
            if not self.allows(src, dst):
                return
            server.connections[broken] = None
            server.serve(request, respond)

        def respond(response: object) -> None:
            if answered:
                return
            if server.incarnation != incarnation:
                return  # the process died: its connections failed already
            if lose:
                self.stats["answers lost"] += 1
                world.at(self.delay(), finish, RpcConnectionLostError(f"{dst}: connection lost"))
                return
            if not self.allows(dst, src):
                return
            world.at(self.delay(), finish, response)

        world.at(self.delay(), arrive)
        self.stats["calls"] += 1

"""The store's Raft clock: one tick every `tick_interval`, delivered
through the store loop, and never more than one waiting for it.

Why at most one waiting: a loop that falls behind (thousands of regions
woken at once, a long fsync) used to find several ticks queued and run
them in one round, with none of the messages that arrived meanwhile
stepped between them. Its leaders then saw their followers silent for
several ticks and stepped down (CheckQuorum), its followers' election
timers fired, and the elections made the loop slower still: 10,000 fresh
regions on 3 stores ended with 4 leaders (benchmarks/regions.py). Skipping
a tick while one waits makes an overloaded store's Raft time run slower
than real time, never faster, which is what the safety arguments need:
followers' election timers may only run late (leader leases rely on
followers not electing before an election timeout of real time,
`store_node.lease`), and a sleeping region's liveness checks only notice
later.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

__all__ = ["Ticker"]

log = logging.getLogger(__name__)

C = TypeVar("C")


class Ticker(Generic[C]):
    """Submits `on_tick` to the loop (`submit`) every `interval` seconds of
    trio time, never two closer than the interval, and not while the last
    one has not run yet (counted in `skipped`)."""

    def __init__(
        self,
        interval: float,
        submit: Callable[[Callable[[C], None]], Awaitable[None]],
        on_tick: Callable[[C], None],
    ) -> None:
        self.interval = interval
        self._submit = submit
        self._on_tick = on_tick
        self.waiting = False  # a tick is queued and has not run yet
        self.skipped = 0

    async def run(self) -> None:
        next_tick = trio.current_time() + self.interval
        while True:
            await trio.sleep_until(next_tick)
            # Never two ticks closer than the interval, even after a stall:
            # followers' election timers must not run ahead of real time.
            next_tick = max(next_tick + self.interval, trio.current_time() + self.interval)
            if self.waiting:
                self.skipped += 1
                continue
            self.waiting = True
            await self._submit(self._fire)

    def _fire(self, target: C) -> None:
        self.waiting = False
        self._on_tick(target)

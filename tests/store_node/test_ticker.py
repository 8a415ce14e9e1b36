"""The store's Raft clock (store_node.ticker) under trio's MockClock: a
tick every interval while the loop keeps up; while the loop is stuck, one
tick waits and the rest are skipped, so a slow store's Raft time runs
slow, never in a burst (several ticks in one round made leaders of a
overloaded store step down with their followers' answers still queued)."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from store_node.ticker import Ticker


class Loop:
    """A stand-in for the store loop: queued events run when `drain` is
    called (a stuck loop: nobody calls it)."""

    def __init__(self) -> None:
        self.queue: list[Callable[[Loop], None]] = []
        self.ticks: list[float] = []

    async def submit(self, event: Callable[[Loop], None]) -> None:
        self.queue.append(event)

    def drain(self) -> int:
        events, self.queue = self.queue, []
        for event in events:
            event(self)
        return len(events)


def on_tick(loop: Loop) -> None:
    loop.ticks.append(trio.current_time())


async def test_a_tick_every_interval_while_the_loop_keeps_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    loop = Loop()
    ticker = Ticker[Loop](0.1, loop.submit, on_tick)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run)
        await trio.sleep(0.05)  # the loop drains between ticks
        for _ in range(10):
            await trio.sleep(0.1)
            assert loop.drain() == 1
        nursery.cancel_scope.cancel()
    assert len(loop.ticks) == 10 and ticker.skipped == 0
    gaps = [b - a for a, b in zip(loop.ticks, loop.ticks[1:], strict=False)]
    assert all(abs(g - 0.1) < 1e-9 for g in gaps)


async def test_a_stuck_loop_gets_one_tick_and_the_others_are_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    loop = Loop()
    ticker = Ticker[Loop](0.1, loop.submit, on_tick)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run)
        await trio.sleep(1.05)  # the loop is stuck for ten intervals
        assert len(loop.queue) == 1 and ticker.skipped == 9
        assert loop.drain() == 1  # one tick, not ten, when it comes back
        await trio.sleep(0.1)
        assert loop.drain() == 1  # and the clock goes on
        nursery.cancel_scope.cancel()
    assert len(loop.ticks) == 2

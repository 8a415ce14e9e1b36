"""The frame reader's limits (issue 15, finding 3): a frame begun must be
complete within its timeout, time between frames never counts, and large
frames reserve their size from a budget shared by readers, waiting (and
reading nothing) while it is in use.

Timing-bound tests run under the autojump clock on scripted or in-memory
streams.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kvproto.frame import (
    HEADER_SIZE,
    LARGE_FRAME,
    FrameBudget,
    FrameLimitError,
    FrameReader,
    FrameStartTimeout,
    encode_frame,
)

TIMEOUT = 30.0


class TimedStream(trio.abc.ReceiveStream):
    """Returns its chunks one per receive_some, each after its delay; then
    waits forever (a peer that sends nothing more). Counts what it gave."""

    def __init__(self, chunks: list[tuple[float, bytes]]) -> None:
        self.chunks = list(chunks)
        self.given = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self.chunks:
            await trio.sleep_forever()
        delay, chunk = self.chunks[0]
        await trio.sleep(delay)
        self.chunks.pop(0)
        if max_bytes is not None and len(chunk) > max_bytes:
            self.chunks.insert(0, (0.0, chunk[max_bytes:]))
            chunk = chunk[:max_bytes]
        self.given += len(chunk)
        return chunk

    async def aclose(self) -> None:
        pass


FRAME = encode_frame(b"x" * 100)


async def test_half_a_frame_then_silence_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = FrameReader(TimedStream([(0.0, FRAME[:50])]), frame_timeout=TIMEOUT)
    start = trio.current_time()
    with pytest.raises(FrameLimitError, match="not complete within 30 s: 50 of its 104 bytes"):
        await reader.receive_frame()
    assert trio.current_time() - start == pytest.approx(TIMEOUT)


async def test_half_a_header_then_silence_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = FrameReader(TimedStream([(0.0, FRAME[:2])]), frame_timeout=TIMEOUT)
    with pytest.raises(FrameLimitError):
        await reader.receive_frame()


async def test_a_slow_sender_is_cut_off_though_bytes_keep_coming(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One byte every 10 s: never idle for the timeout, yet the frame takes
    # 1,000 s.
    trickle = [(10.0, FRAME[i : i + 1]) for i in range(len(FRAME))]
    reader = FrameReader(TimedStream(trickle), frame_timeout=TIMEOUT)
    start = trio.current_time()
    with pytest.raises(FrameLimitError):
        await reader.receive_frame()
    assert trio.current_time() - start <= TIMEOUT + 10


async def test_a_first_frame_not_begun_by_its_deadline_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = FrameReader(TimedStream([(11.0, FRAME)]), first_frame_deadline=10.0)
    with pytest.raises(FrameStartTimeout, match="no frame begun"):
        await reader.receive_frame()
    assert trio.current_time() == 10.0


async def test_a_first_frame_begun_in_time_has_its_frame_timeout_and_no_deadline_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunks = [(9.0, FRAME[:1]), (29.0, FRAME[1:]), (3600.0, FRAME)]
    reader = FrameReader(TimedStream(chunks), frame_timeout=TIMEOUT, first_frame_deadline=10.0)
    assert await reader.receive_frame() == FRAME[4:]
    assert await reader.receive_frame() == FRAME[4:]  # an hour later: idle is fine
    assert trio.current_time() == 9.0 + 29.0 + 3600.0


async def test_time_between_frames_never_counts(autojump_clock: trio.testing.MockClock) -> None:
    stream = TimedStream([(3600.0, FRAME), (86400.0, FRAME[:60]), (20.0, FRAME[60:])])
    reader = FrameReader(stream, frame_timeout=TIMEOUT)
    assert await reader.receive_frame() == b"x" * 100
    assert await reader.receive_frame() == b"x" * 100  # 20 s inside it


async def test_time_the_owner_spends_not_reading_does_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The first chunk ends inside the second frame; its owner then takes
    # 100 s before asking again (its own backpressure), and the rest comes
    # 20 s after it asks.
    stream = TimedStream([(0.0, FRAME + FRAME[:10]), (20.0, FRAME[10:])])
    reader = FrameReader(stream, frame_timeout=TIMEOUT)
    assert await reader.receive_frame() == b"x" * 100
    await trio.sleep(100)
    assert await reader.receive_frame() == b"x" * 100


async def test_without_a_timeout_a_reader_waits_forever(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = FrameReader(TimedStream([(0.0, FRAME[:50])]))
    with trio.move_on_after(10 * 86400) as scope:
        await reader.receive_frame()
    assert scope.cancelled_caught


# -- the budget ---------------------------------------------------------------------

BIG = 3 * LARGE_FRAME  # a large frame's body
BIG_FRAME = encode_frame(bytes(BIG))


async def test_a_large_frame_waits_for_budget_reading_nothing_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = FrameBudget(HEADER_SIZE + BIG)  # room for one
    first = TimedStream([(0.0, BIG_FRAME[:1000]), (50.0, BIG_FRAME[1000:])])
    second = TimedStream([(0.0, BIG_FRAME)])
    readers = [FrameReader(s, BIG, budget=budget) for s in (first, second)]
    got: list[tuple[int, float]] = []

    async def read(i: int) -> None:
        assert await readers[i].receive_frame() == bytes(BIG)
        got.append((i, trio.current_time()))
        await trio.sleep(5)  # decoding it: the budget stays held
        readers[i].release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, 0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(read, 1)
        await trio.testing.wait_all_tasks_blocked()
        # The first holds the budget; the second read its first 64 KiB (its
        # header among them) and waits, reading nothing more.
        assert budget.used == HEADER_SIZE + BIG and budget.waiting == 1
        assert second.given == LARGE_FRAME
    assert [i for i, _ in got] == [0, 1]
    assert got[1][1] >= got[0][1] + 5  # not before the first was released
    assert budget.used == 0


async def test_small_frames_never_wait_for_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = FrameBudget(HEADER_SIZE + BIG)
    holder = FrameReader(TimedStream([(0.0, BIG_FRAME[:1000])]), BIG, budget=budget)
    small = encode_frame(bytes(LARGE_FRAME))  # the largest small frame
    other = FrameReader(TimedStream([(0.0, small[:10]), (1.0, small[10:])]), BIG, budget=budget)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder.receive_frame)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == HEADER_SIZE + BIG
        with trio.fail_after(5):
            assert await other.receive_frame() == bytes(LARGE_FRAME)
        nursery.cancel_scope.cancel()


async def test_waiting_for_budget_counts_in_the_frame_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = FrameBudget(HEADER_SIZE + BIG)
    holder = FrameReader(TimedStream([(0.0, BIG_FRAME[:1000])]), BIG, budget=budget)
    waiter = FrameReader(TimedStream([(0.0, BIG_FRAME)]), BIG, frame_timeout=TIMEOUT, budget=budget)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder.receive_frame)  # no timeout: holds it forever
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(FrameLimitError, match="no budget freed for its"):
            await waiter.receive_frame()
        assert budget.waiting == 0
        nursery.cancel_scope.cancel()
    holder.release()
    assert budget.used == 0


async def test_a_reader_refuses_a_budget_smaller_than_one_frame() -> None:
    with pytest.raises(ValueError, match="cannot hold a frame"):
        FrameReader(TimedStream([]), 1 << 20, budget=FrameBudget(1 << 20))


async def test_the_budget_is_first_come_first_served() -> None:
    budget = FrameBudget(100)
    order: list[str] = []
    await budget.acquire(60)

    async def take(name: str, n: int) -> None:
        await budget.acquire(n)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "big", 90)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "small", 20)  # would fit now, but the big one is first
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and budget.waiting == 2
        budget.release(60)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["big"] and budget.waiting == 1
        budget.release(90)
    assert order == ["big", "small"] and budget.used == 20


async def test_a_cancelled_waiter_gives_its_place_to_those_behind() -> None:
    budget = FrameBudget(100)
    await budget.acquire(60)
    got = []
    async with trio.open_nursery() as nursery:
        big_scope = trio.CancelScope()

        async def big() -> None:
            with big_scope:
                await budget.acquire(90)

        async def small() -> None:
            await budget.acquire(30)
            got.append("small")

        nursery.start_soon(big)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(small)
        await trio.testing.wait_all_tasks_blocked()
        big_scope.cancel()
    assert got == ["small"] and budget.used == 90 and budget.waiting == 0
    with pytest.raises(ValueError, match="exceed the whole budget"):
        await budget.acquire(101)

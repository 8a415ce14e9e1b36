"""open_background_nursery: the block's own error leaves as itself, anything
that may be several errors stays trio's ExceptionGroup.

Rules: every test runs under trio's autojump clock (no real waiting) and a
`trio.fail_after` bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from plumbing.nursery import open_background_nursery

LIMIT = 10  # virtual seconds


class Boom(Exception):
    pass


class Quit(BaseException):
    pass


async def fail_after(delay: float, error: BaseException) -> None:
    await trio.sleep(delay)
    raise error


@asynccontextmanager
async def service(events: list[str]) -> AsyncIterator[None]:
    """A context manager with a background task for its block: the shape of
    kvproto.rpc.connect and its kind."""
    async with open_background_nursery() as nursery:

        async def background() -> None:
            try:
                await trio.sleep_forever()
            finally:
                events.append("background ended")

        nursery.start_soon(background)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


async def test_the_block_ends_when_its_tasks_do(autojump_clock: trio.testing.MockClock) -> None:
    done: list[float] = []
    with trio.fail_after(LIMIT):
        async with open_background_nursery() as nursery:
            nursery.start_soon(trio.sleep, 3)
        done.append(trio.current_time())
    assert done == [3]


async def test_an_error_of_the_block_leaves_as_itself_after_its_tasks_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []
    error = Boom("from the block")
    with trio.fail_after(LIMIT), pytest.raises(Boom) as info:
        async with service(events):
            await trio.sleep(1)
            raise error
    assert info.value is error
    assert events == ["background ended"]
    # Not chained to the group it was taken out of.
    assert info.value.__context__ is None and info.value.__cause__ is None


async def test_the_block_error_cancels_the_tasks(autojump_clock: trio.testing.MockClock) -> None:
    ended: list[str] = []

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.append("cancelled")

    with trio.fail_after(LIMIT), pytest.raises(KeyError):
        async with open_background_nursery() as nursery:
            nursery.start_soon(forever)
            await trio.sleep(1)
            raise KeyError("k")
    assert ended == ["cancelled"]


async def test_an_exception_group_of_the_block_is_not_wrapped_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    group = ExceptionGroup("two", [Boom("a"), KeyError("b")])
    with trio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
        async with open_background_nursery():
            raise group
    assert info.value is group


async def test_a_failed_background_task_stays_in_a_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    error = Boom("from a task")
    with trio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
        async with open_background_nursery() as nursery:
            nursery.start_soon(fail_after, 1, error)
            await trio.sleep_forever()
    assert info.value.exceptions == (error,)


async def test_block_and_task_errors_both_stay_in_the_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    task_error = Boom("from a task")
    block_error = KeyError("from the block")

    async def fail_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise task_error

    with trio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
        async with open_background_nursery() as nursery:
            nursery.start_soon(fail_when_cancelled)
            await trio.sleep(1)
            raise block_error
    assert info.value.exceptions == (block_error, task_error)


async def test_a_base_exception_of_the_block_is_left_to_trio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(LIMIT), pytest.raises(BaseExceptionGroup) as info:
        async with open_background_nursery():
            raise Quit
    assert [type(e) for e in info.value.exceptions] == [Quit]


async def test_cancelling_its_own_scope_ends_the_block_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reached: list[str] = []
    with trio.fail_after(LIMIT):
        async with open_background_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.cancel_scope.cancel()
            await trio.sleep(1)
            reached.append("not reached")
    assert reached == []


async def test_an_outer_cancellation_passes_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(LIMIT):
        with trio.move_on_after(2) as scope:
            async with open_background_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert trio.current_time() == 2

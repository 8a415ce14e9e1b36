"""Deferred (callback) request handlers: answered now or later from another
task, errors become RpcError(INTERNAL), bad requests BAD_REQUEST, and the
per-connection bound on requests in progress holds for them too.

Loopback TCP on port 0 (in-memory streams where a test must see every task
blocked), always under trio.fail_after.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kvproto.rpc import (
    Deferred,
    Echo,
    RequestContext,
    Respond,
    RpcErrorCode,
    RpcRemoteError,
    RpcServer,
    connect,
)
from tests.kvproto.rpc_helpers import Boom, Hold, MemoryNetwork, start_tcp_server


class Later:
    """Answers Hold requests when the test releases them, from another task."""

    def __init__(self) -> None:
        self.waiting: dict[int, Respond] = {}
        self.arrived = trio.Event()

    def hold(self, request: Hold, ctx: RequestContext, respond: Respond) -> None:
        self.waiting[request.key] = respond
        self.arrived.set()
        self.arrived = trio.Event()

    def release(self, key: int) -> None:
        self.waiting.pop(key)(Echo(b"%d" % key))


def echo_now(request: Echo, ctx: RequestContext, respond: Respond) -> None:
    respond(request)


def boom(request: Boom, ctx: RequestContext, respond: Respond) -> None:
    raise RuntimeError(request.message)


async def test_deferred_answers_now_and_later_out_of_order(nursery: trio.Nursery) -> None:
    later = Later()
    server = RpcServer({Echo: Deferred(echo_now), Hold: Deferred(later.hold)})
    address = await start_tcp_server(nursery, server)
    got: dict[int, object] = {}
    with trio.fail_after(5):
        async with connect(address) as conn:
            assert await conn.call(Echo(b"now")) == Echo(b"now")
            async with trio.open_nursery() as calls:

                async def call(i: int) -> None:
                    got[i] = await conn.call(Hold(i))

                for i in range(3):
                    calls.start_soon(call, i)
                while len(later.waiting) < 3:
                    await later.arrived.wait()
                for i in (2, 0, 1):
                    later.release(i)
    assert got == {i: Echo(b"%d" % i) for i in range(3)}


async def test_a_raising_deferred_handler_answers_internal(nursery: trio.Nursery) -> None:
    server = RpcServer({Boom: Deferred(boom), Echo: Deferred(echo_now)})
    address = await start_tcp_server(nursery, server)
    with trio.fail_after(5):
        async with connect(address) as conn:
            with pytest.raises(RpcRemoteError) as e:
                await conn.call(Boom("no"))
            assert e.value.code == RpcErrorCode.INTERNAL
            assert await conn.call(Echo(b"still served")) == Echo(b"still served")


async def test_unanswered_deferred_requests_count_against_the_bound(
    nursery: trio.Nursery,
) -> None:
    # In-memory streams, so "every task is blocked" means the echo is stuck.
    later = Later()
    server = RpcServer(
        {Hold: Deferred(later.hold), Echo: Deferred(echo_now)}, max_concurrent_requests=2
    )
    net = MemoryNetwork(server, nursery)
    with trio.fail_after(5):
        async with (
            connect("memory:1", open_stream=net.opener) as conn,
            trio.open_nursery() as calls,
        ):
            calls.start_soon(conn.call, Hold(1))
            calls.start_soon(conn.call, Hold(2))
            while len(later.waiting) < 2:
                await later.arrived.wait()
            echoed = trio.Event()

            async def echo() -> None:
                await conn.call(Echo(b"x"))
                echoed.set()

            calls.start_soon(echo)
            await trio.testing.wait_all_tasks_blocked()
            # Both slots are taken: the echo is not even read until one frees.
            assert not echoed.is_set()
            later.release(1)
            await echoed.wait()
            later.release(2)

"""Who holds an RpcServer's connections (issue 15: 1,024 idle connections
locked every client out): a connection must begin a frame within the
handshake timeout, and at the limit a newcomer takes the place of the
oldest connection that has sent no frame yet, else of one idle long
enough; busy connections are never evicted.

In-memory streams under the autojump clock (conftest.py's).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kvproto.rpc import Echo, RpcServer
from tests.kvproto.rpc_helpers import (
    Hold,
    Service,
    read_envelopes,
    read_until_closed,
    request_frame,
)

RESPONSE = 1


async def open_memory(nursery: trio.Nursery, server: RpcServer) -> trio.abc.Stream:
    client, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_connection, server_side, "memory")
    await trio.testing.wait_all_tasks_blocked()
    return client


async def echo(stream: trio.abc.Stream, request_id: int = 1) -> None:
    """One request and its answer: the connection is then proven and idle."""
    await stream.send_all(request_frame(request_id, Echo(b"hi")))
    ((kind, got, _),) = await read_envelopes(stream, 1)
    assert (kind, got) == (RESPONSE, request_id)


async def is_open(stream: trio.abc.Stream) -> bool:
    """Whether the server still serves `stream` (an Echo is answered)."""
    try:
        await stream.send_all(request_frame(99, Echo(b"?")))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    with trio.move_on_after(1):
        try:
            ((kind, _, _),) = await read_envelopes(stream, 1)
        except (AssertionError, trio.BrokenResourceError):
            return False
        return kind == RESPONSE
    return False


async def test_a_connection_that_begins_no_frame_is_closed_after_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    server = Service().server()  # handshake_timeout 10 s
    silent = await open_memory(nursery, server)
    start = trio.current_time()
    with trio.fail_after(60):
        assert await read_until_closed(silent) == b""
    assert 10 <= trio.current_time() - start < 11
    assert server.handshake_timeouts == 1 and server.open_connections == 0


async def test_a_first_frame_begun_in_time_has_the_whole_frame_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A large first frame on a slow link is not cut for being first."""
    server = Service().server()
    client = await open_memory(nursery, server)
    frame = request_frame(1, Echo(b"x" * 1000))
    with trio.fail_after(60):
        await trio.sleep(9)
        await client.send_all(frame[:10])
        await trio.sleep(25)  # 34 s after connecting: past the handshake timeout
        await client.send_all(frame[10:])
        ((kind, request_id, _),) = await read_envelopes(client, 1)
    assert (kind, request_id) == (RESPONSE, 1)
    assert server.handshake_timeouts == 0


async def test_silent_connections_make_room_for_newcomers_oldest_first(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    server = Service().server(max_connections=4)
    with trio.fail_after(60):
        silent = []
        for _ in range(4):
            silent.append(await open_memory(nursery, server))
            await trio.sleep(0.1)
        # A newcomer gets in at once, in the place of the oldest silent one,
        # and keeps its place against the silent ones after it.
        newcomer = await open_memory(nursery, server)
        await echo(newcomer)
        assert await read_until_closed(silent[0]) == b""
        assert server.evicted_connections == 1 and server.open_connections == 4
        for _ in range(3):
            silent.append(await open_memory(nursery, server))
        await echo(newcomer, 2)
        for stream in silent[1:4]:
            assert await read_until_closed(stream) == b""
        assert server.evicted_connections == 4 and server.refused_connections == 0


async def test_idle_connections_are_evicted_at_the_limit_only_once_idle_long_enough(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    server = Service().server(max_connections=3, evict_idle_after=5.0)
    with trio.fail_after(60):
        conns = []
        for _ in range(3):
            conns.append(await open_memory(nursery, server))
            await echo(conns[-1])
            await trio.sleep(1)
        await echo(conns[0], 2)  # the first is now the most recently active
        # Idle 1 to 2 s: a newcomer is refused at once.
        refused = await open_memory(nursery, server)
        assert await read_until_closed(refused) == b""
        assert server.refused_connections == 1
        # 5 s later, the one idle longest (the second) makes room.
        await trio.sleep(5)
        newcomer = await open_memory(nursery, server)
        await echo(newcomer)
        assert await read_until_closed(conns[1]) == b""
        assert await is_open(conns[0]) and await is_open(conns[2])
        assert server.evicted_connections == 1


async def test_a_busy_connection_is_never_evicted(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A request in progress (a long poll) keeps its connection."""
    service = Service()
    server = service.server(max_connections=1, evict_idle_after=5.0)
    with trio.fail_after(600):
        polling = await open_memory(nursery, server)
        await polling.send_all(request_frame(1, Hold(1)))
        await service.wait_running(1)
        await trio.sleep(300)
        newcomer = await open_memory(nursery, server)
        assert await read_until_closed(newcomer) == b""
        service.gate(1).set()
        ((kind, request_id, _),) = await read_envelopes(polling, 1)
        assert (kind, request_id) == (RESPONSE, 1)
        assert server.refused_connections == 1 and server.evicted_connections == 0


async def test_a_stretch_at_the_limit_is_logged_when_it_starts_and_when_it_ends(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Service().server(max_connections=2, evict_idle_after=5.0)
    with trio.fail_after(60):
        held = [await open_memory(nursery, server) for _ in range(2)]
        for i, stream in enumerate(held):
            await echo(stream, i + 1)
        for _ in range(3):
            assert await read_until_closed(await open_memory(nursery, server)) == b""
        await trio.sleep(6)
        newcomer = await open_memory(nursery, server)  # in the place of held[0]
        await echo(newcomer)
        assert await read_until_closed(held[0]) == b""
        await held[1].aclose()
        await trio.testing.wait_all_tasks_blocked()
        await echo(await open_memory(nursery, server))
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(messages) == 2, messages
    assert "the limit (max_connections)" in messages[0]
    assert "after refusing 3 connections and evicting 1" in messages[1]

"""RPC client: pipelined calls matched by id, and the typed errors that tell
a caller whether retrying is safe.

Loopback TCP on port 0 under trio.fail_after, or in-memory streams under
the autojump clock where timeouts are involved.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from kvproto.codec import EncodeError, decode_cbor, to_wire
from kvproto.frame import FrameReader, encode_frame
from kvproto.rpc import (
    Echo,
    RpcConnection,
    RpcConnectionLostError,
    RpcErrorCode,
    RpcProtocolError,
    RpcRemoteError,
    RpcTimeoutError,
    RpcUnavailableError,
    connect,
    parse_address,
    tcp_opener,
)
from tests.kvproto.rpc_helpers import (
    Hold,
    MemoryNetwork,
    Service,
    Unhandled,
    envelope,
    start_tcp_server,
)

RESPONSE = 1


async def test_pipelined_calls_finishing_in_reverse_order_get_their_own_answers(
    nursery: trio.Nursery,
) -> None:
    # Handler i answers only after handler i + 1 has: the last request is
    # answered first, and the chain completes only if all are in flight at
    # once on the one connection.
    count = 50
    done = [trio.Event() for _ in range(count + 1)]
    done[count].set()

    async def chained(request: Echo, ctx: object) -> Echo:
        i = int(request.payload)
        await done[i + 1].wait()
        done[i].set()
        return Echo(b"answer to %d" % i)

    from kvproto.rpc import RpcServer

    address = await start_tcp_server(nursery, RpcServer({Echo: chained}))
    answers: dict[int, object] = {}
    with trio.fail_after(5):
        async with connect(address) as conn, trio.open_nursery() as calls:

            async def call(i: int) -> None:
                answers[i] = await conn.call(Echo(b"%d" % i))

            for i in range(count):
                calls.start_soon(call, i)
    assert answers == {i: Echo(b"answer to %d" % i) for i in range(count)}


async def test_many_concurrent_calls_on_one_tcp_connection(nursery: trio.Nursery) -> None:
    address = await start_tcp_server(nursery, Service().server())
    with trio.fail_after(5):
        async with connect(address) as conn, trio.open_nursery() as calls:
            for i in range(300):

                async def call(i: int = i) -> None:
                    payload = bytes([i % 256]) * (i * 37)
                    assert await conn.call(Echo(payload)) == Echo(payload)

                calls.start_soon(call)


async def test_unknown_request_type_raises_remote_error_not_executed(
    nursery: trio.Nursery,
) -> None:
    address = await start_tcp_server(nursery, Service().server())
    with trio.fail_after(5):
        async with connect(address) as conn:
            with pytest.raises(RpcRemoteError) as info:
                await conn.call(Unhandled(1))
            assert info.value.code == RpcErrorCode.UNKNOWN_MESSAGE
            assert not info.value.may_have_executed
            assert await conn.call(Echo(b"ok")) == Echo(b"ok")


async def test_connecting_to_a_closed_port_is_unavailable() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(5), pytest.raises(RpcUnavailableError) as info:
        async with connect(f"127.0.0.1:{port}"):
            pass
    assert not info.value.may_have_executed


@pytest.mark.parametrize("address", ["nohost", "host:", ":80", "h:0", "h:99999", "h:x"])
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        parse_address(address)


def test_ipv6_addresses_are_parsed() -> None:
    assert parse_address("[::1]:20160") == ("::1", 20160)
    assert parse_address("127.0.0.1:1") == ("127.0.0.1", 1)


async def test_a_malformed_address_is_unavailable() -> None:
    with trio.fail_after(5), pytest.raises(RpcUnavailableError):
        async with connect("no-port-here"):
            pass


async def test_exceptions_from_the_body_of_connect_are_not_wrapped(
    nursery: trio.Nursery,
) -> None:
    address = await start_tcp_server(nursery, Service().server())
    with trio.fail_after(5), pytest.raises(KeyError):
        async with connect(address):
            raise KeyError("mine")


async def test_unregistered_request_is_an_encode_error_and_the_connection_lives(
    nursery: trio.Nursery,
) -> None:
    address = await start_tcp_server(nursery, Service().server())
    with trio.fail_after(5):
        async with connect(address) as conn:
            with pytest.raises(EncodeError):
                await conn.call(object())
            assert await conn.call(Echo(b"ok")) == Echo(b"ok")


# --------------------------------------------------------------------------
# In memory, under the autojump clock.


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def network(service: Service, nursery: trio.Nursery) -> MemoryNetwork:
    return MemoryNetwork(service.server(), nursery)


async def test_timeout_raises_timeout_error_and_the_connection_stays_usable(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork, service: Service
) -> None:
    with trio.fail_after(60):
        async with connect("store-1", open_stream=network.opener) as conn:
            start = trio.current_time()
            with pytest.raises(RpcTimeoutError) as info:
                await conn.call(Hold(1), timeout=2.5)
            assert trio.current_time() - start == pytest.approx(2.5)
            assert info.value.may_have_executed
            # The late answer arrives for nobody and is dropped.
            service.gate(1).set()
            await trio.testing.wait_all_tasks_blocked()
            assert service.finished == [1]
            assert await conn.call(Echo(b"ok"), timeout=1) == Echo(b"ok")


async def test_connection_lost_while_waiting_raises_connection_lost(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork, service: Service
) -> None:
    with trio.fail_after(60):
        async with connect("store-1", open_stream=network.opener) as conn:
            async with trio.open_nursery() as nursery:

                async def cut_when_held() -> None:
                    await service.wait_running(1)
                    await network.server_streams[0].aclose()

                nursery.start_soon(cut_when_held)
                with pytest.raises(RpcConnectionLostError) as info:
                    await conn.call(Hold(1))
                assert info.value.may_have_executed
            await conn.wait_closed()
            with pytest.raises(RpcUnavailableError):
                await conn.call(Echo(b"again"))
            with pytest.raises(RpcUnavailableError):
                await conn.send_oneway(Echo(b"again"))


async def test_requests_still_queued_when_the_connection_dies_are_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A peer that never reads: the first request sits in send_all, the
    # second behind it in the queue. When the peer goes away, the first may
    # have reached it, the second certainly did not.
    client_stream, peer_stream = trio.testing.lockstep_stream_pair()
    conn = RpcConnection(client_stream, peer="silent")
    errors: dict[str, BaseException] = {}

    async def call(name: str) -> None:
        try:
            await conn.call(Echo(name.encode()))
        except RpcUnavailableError as e:
            errors[name] = e
        except RpcConnectionLostError as e:
            errors[name] = e

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            nursery.start_soon(call, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "second")
            await trio.testing.wait_all_tasks_blocked()
            await peer_stream.aclose()
    assert isinstance(errors["first"], RpcConnectionLostError)
    assert isinstance(errors["second"], RpcUnavailableError)


async def fake_server(stream: trio.abc.Stream, answers: list[object]) -> None:
    """Answers each request with the next raw body from `answers`."""
    reader = FrameReader(stream)
    for body in answers:
        frame = await reader.receive_frame()
        assert frame is not None
        _, request_id, _ = decode_cbor(frame)
        await stream.send_all(envelope(RESPONSE, request_id, body))


async def test_undecodable_answer_fails_only_that_call(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(fake_server, server_stream, [[987654], to_wire(Echo(b"fine"))])
    conn = RpcConnection(client_stream, peer="fake")
    nursery.start_soon(conn.run)
    with trio.fail_after(60):
        with pytest.raises(RpcProtocolError, match="unknown message tag 987654"):
            await conn.call(Echo(b"1"))
        assert await conn.call(Echo(b"2")) == Echo(b"fine")
    await conn.aclose()


async def test_malformed_frame_from_the_server_closes_the_connection(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    conn = RpcConnection(client_stream, peer="fake")
    nursery.start_soon(conn.run)

    async def garbage_server() -> None:
        await FrameReader(server_stream).receive_frame()
        await server_stream.send_all(encode_frame(b"\xff"))

    nursery.start_soon(garbage_server)
    with trio.fail_after(60), pytest.raises(RpcConnectionLostError):
        await conn.call(Echo(b"x"))
    assert conn.is_closed
    assert any("malformed frame" in r.getMessage() for r in caplog.records)


async def test_close_fails_calls_in_flight_and_later_calls(
    autojump_clock: trio.testing.MockClock, network: MemoryNetwork, service: Service
) -> None:
    with trio.fail_after(60):
        async with connect("store-1", open_stream=network.opener) as conn:
            async with trio.open_nursery() as nursery:

                async def close_when_held() -> None:
                    await service.wait_running(1)
                    await conn.aclose()

                nursery.start_soon(close_when_held)
                with pytest.raises(RpcConnectionLostError):
                    await conn.call(Hold(1))
            with pytest.raises(RpcUnavailableError, match="closed by the client"):
                await conn.call(Echo(b"x"))


async def test_a_tcp_opener_with_a_source_host_dials_from_that_host() -> None:
    # What lets a firewall (shardkv chaos's partitions) tell members on one
    # machine apart: the peer sees the member's own address.
    seen: list[str] = []
    both = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        seen.append(stream.socket.getpeername()[0])
        await stream.aclose()
        if len(seen) == 2:
            both.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            for source in (None, "127.0.0.3"):
                stream = await tcp_opener(source)(f"127.0.0.1:{port}")
                await stream.aclose()
            await both.wait()
            nursery.cancel_scope.cancel()
    assert sorted(seen) == ["127.0.0.1", "127.0.0.3"]

"""RpcServer robustness: whatever one client does, that connection alone
suffers; the server task and every other client go on being served.

Loopback TCP on port 0, every test under trio.fail_after.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator

import cbor2
import pytest
import trio

from kvproto.codec import from_wire, to_wire
from kvproto.frame import encode_frame
from kvproto.rpc import Echo, RpcConnection, RpcError, RpcErrorCode, RpcServer, connect
from kvproto.rpc.envelope import decode_envelopes
from tests.kvproto.rpc_helpers import (
    Hold,
    Note,
    Service,
    Unhandled,
    envelope,
    read_envelopes,
    read_until_closed,
    request_frame,
    start_tcp_server,
)

REQUEST, RESPONSE, ERROR, ONEWAY = 0, 1, 2, 3
LIMIT = 1 << 20


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
async def address(nursery: trio.Nursery, service: Service) -> str:
    return await start_tcp_server(nursery, service.server(max_frame_size=LIMIT))


@pytest.fixture
async def good_client(address: str) -> AsyncIterator[RpcConnection]:
    # Connected before the misbehaving client and used again after it.
    async with connect(address) as conn:
        assert await conn.call(Echo(b"before")) == Echo(b"before")
        yield conn


async def assert_still_serving(address: str, good_client: RpcConnection) -> None:
    assert await good_client.call(Echo(b"after")) == Echo(b"after")
    async with connect(address) as fresh:
        assert await fresh.call(Echo(b"fresh")) == Echo(b"fresh")


async def open_raw(address: str) -> trio.SocketStream:
    host, port = address.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def raw_exchange(address: str, data: bytes) -> bytes:
    """Send `data` on a new connection; return what the server sends back
    before it closes the connection."""
    async with await open_raw(address) as stream:
        await stream.send_all(data)
        return await read_until_closed(stream)


BAD_FRAMES = {
    "not-cbor": struct.pack(">I", 3) + b"\xff\xfe\xfd",
    "http-request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "oversized-length": struct.pack(">I", LIMIT + 1),
    "trailing-bytes-after-the-item": struct.pack(">I", 2) + b"\x00\x00",
    "semantic-tag": struct.pack(">I", 3) + bytes.fromhex("c11a00"),
    "envelope-not-an-array": encode_frame(cbor2.dumps(5)),
    "envelope-of-two": encode_frame(cbor2.dumps([REQUEST, 1])),
    "unknown-kind": envelope(9, 1, to_wire(Echo(b""))),
    "response-from-a-client": envelope(RESPONSE, 1, to_wire(Echo(b""))),
    "oneway-with-an-id": envelope(ONEWAY, 5, to_wire(Note(1))),
    "request-without-an-id": envelope(REQUEST, 0, to_wire(Echo(b""))),
    "negative-id": envelope(REQUEST, -1, to_wire(Echo(b""))),
}


@pytest.mark.parametrize("bad", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_malformed_frame_closes_only_that_connection_with_a_logged_reason(
    address: str, good_client: RpcConnection, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        assert await raw_exchange(address, bad) == b""
        await assert_still_serving(address, good_client)
    assert any("malformed frame" in r.getMessage() for r in caplog.records)


async def test_oversized_length_is_refused_before_the_body_is_sent(
    address: str, good_client: RpcConnection
) -> None:
    with trio.fail_after(5):
        async with await open_raw(address) as stream:
            await stream.send_all(struct.pack(">I", 0xFFFFFFFF))
            # No body follows, yet the server hangs up.
            assert await read_until_closed(stream) == b""
        await assert_still_serving(address, good_client)


async def test_half_a_frame_then_disconnect(address: str, good_client: RpcConnection) -> None:
    frame = request_frame(1, Echo(b"x" * 100))
    with trio.fail_after(5):
        async with await open_raw(address) as stream:
            await stream.send_all(frame[: len(frame) // 2])
        await assert_still_serving(address, good_client)


async def test_abrupt_disconnect_with_requests_in_flight(
    address: str, good_client: RpcConnection, service: Service
) -> None:
    with trio.fail_after(5):
        stream = await open_raw(address)
        await stream.send_all(request_frame(1, Hold(1)) + request_frame(2, Hold(2)))
        # Reset rather than close: SO_LINGER 0 makes close() send an RST.
        stream.socket.setsockopt(
            trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        await stream.aclose()
        await assert_still_serving(address, good_client)
        service.gate(1).set()
        service.gate(2).set()
        await assert_still_serving(address, good_client)


async def test_unknown_request_type_answers_unknown_message(
    address: str, good_client: RpcConnection
) -> None:
    with trio.fail_after(5):
        async with await open_raw(address) as stream:
            await stream.send_all(
                request_frame(1, Unhandled(1))
                + envelope(REQUEST, 2, [987654, 1])
                + envelope(REQUEST, 3, "not even a message")
                + request_frame(4, Echo(b"still here"))
            )
            frames = await read_envelopes(stream, 4)
        by_id = {f[1]: f for f in frames}
        for request_id in (1, 2, 3):
            kind, _, body = by_id[request_id]
            assert kind == ERROR
            assert from_wire(body, RpcError).code == RpcErrorCode.UNKNOWN_MESSAGE
        assert by_id[4] == [RESPONSE, 4, to_wire(Echo(b"still here"))]
        await assert_still_serving(address, good_client)


async def test_request_with_a_bad_body_answers_bad_request(
    address: str, good_client: RpcConnection
) -> None:
    with trio.fail_after(5):
        async with await open_raw(address) as stream:
            echo_tag = to_wire(Echo(b""))[0]
            await stream.send_all(envelope(REQUEST, 1, [echo_tag, "text, not bytes"]))
            [[kind, request_id, body]] = await read_envelopes(stream, 1)
        error = from_wire(body, RpcError)
        assert (kind, request_id, error.code) == (ERROR, 1, RpcErrorCode.BAD_REQUEST)
        assert "Echo.payload: expected bytes, got str" in error.message
        await assert_still_serving(address, good_client)


async def test_handler_exception_answers_internal_and_logs_the_traceback(
    address: str, good_client: RpcConnection, caplog: pytest.LogCaptureFixture
) -> None:
    from kvproto.rpc import RpcRemoteError
    from tests.kvproto.rpc_helpers import Boom

    with trio.fail_after(5):
        with pytest.raises(RpcRemoteError) as info:
            await good_client.call(Boom("kaput"))
        assert info.value.code == RpcErrorCode.INTERNAL
        assert "RuntimeError: kaput" in info.value.error.message
        assert info.value.may_have_executed
        await assert_still_serving(address, good_client)
    [record] = [r for r in caplog.records if "handler for Boom failed" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


async def test_clean_close_still_answers_requests_in_flight(address: str, service: Service) -> None:
    with trio.fail_after(5):
        async with await open_raw(address) as stream:
            await stream.send_all(request_frame(1, Hold(10)) + request_frame(2, Echo(b"e")))
            await stream.send_eof()  # the client is done sending, still reading
            service.gate(10).set()
            answers = await read_until_closed(stream)
    envelopes = []  # both answers may share one BATCH frame
    while answers:
        (size,) = struct.unpack_from(">I", answers)
        envelopes += [list(e) for e in decode_envelopes(answers[4 : 4 + size])]
        answers = answers[4 + size :]
    assert sorted(envelopes) == [
        [RESPONSE, 1, to_wire(Echo(b"10"))],
        [RESPONSE, 2, to_wire(Echo(b"e"))],
    ]


async def test_oneway_messages_are_handled_in_arrival_order(
    address: str, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        async with connect(address) as conn:
            for seq in range(100):
                await conn.send_oneway(Note(seq))
                if seq == 50:
                    # A failing handler and an unhandled type change nothing.
                    await conn.send_oneway(Note(-1))
                    await conn.send_oneway(Unhandled(0))
            await service.wait_notes(100)
    assert service.notes == list(range(100))
    messages = [r.getMessage() for r in caplog.records]
    assert any("one-way handler for Note failed" in m for m in messages)
    assert any("dropping one-way Unhandled" in m for m in messages)


async def test_server_cancellation_closes_connections_cleanly() -> None:
    from kvproto.rpc import RpcConnectionLostError, RpcUnavailableError

    service = Service()
    server = service.server()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server_scope = trio.CancelScope()

            async def run_server(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
                with server_scope:
                    await server.serve("127.0.0.1", 0, task_status=task_status)

            host, port = await nursery.start(run_server)
            async with connect(f"{host}:{port}") as conn:
                assert await conn.call(Echo(b"x")) == Echo(b"x")

                async def stop_when_held() -> None:
                    await service.wait_running(1)
                    server_scope.cancel()

                nursery.start_soon(stop_when_held)
                with pytest.raises(RpcConnectionLostError):
                    await conn.call(Hold(1))
                with pytest.raises(RpcUnavailableError):
                    await conn.call(Echo(b"y"))
    assert server.open_connections == 0


async def test_per_connection_concurrency_is_bounded(nursery: trio.Nursery) -> None:
    service = Service()
    address = await start_tcp_server(nursery, service.server(max_concurrent_requests=3))
    with trio.fail_after(5):
        async with connect(address) as conn, trio.open_nursery() as calls:
            for key in range(10):
                calls.start_soon(conn.call, Hold(key))
            await service.wait_running(3)
            for key in range(10):
                service.gate(key).set()
    assert service.max_running == 3
    assert sorted(service.finished) == list(range(10))


def test_server_refuses_nothing_at_construction() -> None:
    # Handlers may be given later as plain dicts; an empty server is valid.
    assert RpcServer().open_connections == 0

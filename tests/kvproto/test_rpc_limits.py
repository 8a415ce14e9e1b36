"""RpcServer's memory and time bounds against hostile peers (issue 15,
finding 3): a partly received frame times out (idle connections do not),
large frames share a per-server budget, connections beyond a limit are
closed at once, and a frame whose CBOR would expand far beyond its size is
refused before it is decoded, off the event loop.

Timing-bound tests use in-memory streams under a mock clock that jumps
once the run has been idle for 50 ms of real time, not at once: frames over
64 KiB are checked in a worker thread, and the clock must not jump while it
works. The decode tests use loopback TCP on the real clock.
"""

from __future__ import annotations

import gc
import struct
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing

from kvproto.codec import cbor_cost, encode_cbor, to_wire
from kvproto.frame import encode_frame
from kvproto.rpc import Echo, RpcServer, connect
from kvproto.rpc.batching import array_header
from tests.kvproto.rpc_helpers import (
    Memo,
    Note,
    Payload,
    Service,
    oneway_frame,
    read_envelopes,
    read_until_closed,
    request_frame,
    start_tcp_server,
)

RESPONSE, ONEWAY, BATCH = 1, 3, 4
DEFAULT_MAX_CONNECTIONS = 1024  # RpcServer's default
LARGE_FRAME = 64 * 1024  # kvproto.frame.LARGE_FRAME: frames over it use the budget


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


class CountingStream(trio.abc.Stream):
    """The server's end of an in-memory connection, counting the bytes the
    server has taken from it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def open_memory(
    nursery: trio.Nursery, server: RpcServer
) -> tuple[trio.abc.Stream, CountingStream]:
    client, server_side = trio.testing.memory_stream_pair()
    counted = CountingStream(server_side)
    nursery.start_soon(server.handle_connection, counted, "memory")
    return client, counted


async def is_closed_by_server(stream: trio.abc.Stream, within: float = 0.001) -> bool:
    """True if the server closes the connection within `within` seconds
    without sending anything."""
    with trio.move_on_after(within):
        return await read_until_closed(stream) == b""
    return False


# -- frame timeout ------------------------------------------------------------------


async def test_a_stalled_half_frame_is_cut_off_after_30_s_by_default(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = Service().server()  # the defaults
    frame = request_frame(1, Echo(b"x" * 100))
    stalled, _ = await open_memory(nursery, server)
    idle, _ = await open_memory(nursery, server)
    with trio.fail_after(2 * 3600):
        await idle.send_all(request_frame(6, Echo(b"here")))
        await read_envelopes(idle, 1)
        await stalled.send_all(frame[: len(frame) // 2])
        start = trio.current_time()
        assert await read_until_closed(stalled) == b""
        assert 30 <= trio.current_time() - start < 31
        # A connection idle between frames is never cut (below the
        # connection limit): an hour later it is served.
        await trio.sleep(3600)
        await idle.send_all(request_frame(7, Echo(b"still here")))
        ((kind, request_id, _),) = await read_envelopes(idle, 1)
        assert (kind, request_id) == (RESPONSE, 7)
    assert any("frame not complete within 30 s" in r.getMessage() for r in caplog.records)


async def test_a_slow_sender_is_cut_off_though_bytes_keep_coming(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # (Its first byte comes at 10 s, the default handshake timeout.)
    server = Service().server(frame_timeout=30.0, handshake_timeout=60.0)
    frame = request_frame(1, Echo(b"x" * 100))
    client, _ = await open_memory(nursery, server)

    async def trickle() -> None:
        # A byte every 10 s: never silent for long, yet 17 minutes a frame.
        for i in range(len(frame)):
            await trio.sleep(10)
            try:
                await client.send_all(frame[i : i + 1])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    nursery.start_soon(trickle)
    with trio.fail_after(3600):
        assert await read_until_closed(client) == b""
    # Its first byte came at 10 s.
    assert 40 <= trio.current_time() < 41


# -- the per-server budget ----------------------------------------------------------

BODY = 3 * LARGE_FRAME  # an Echo payload: its frame is a large one
HEADER = 4


async def test_large_frames_of_all_connections_share_the_budget(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # Room for one large frame at a time (the default budget is 128 MiB:
    # the same rule, two frames of 64 MiB).
    server = Service().server(max_frame_size=BODY + 100, max_buffered_bytes=BODY + 200)
    frames = [request_frame(i + 1, Echo(bytes([i]) * BODY)) for i in range(4)]
    conns = [await open_memory(nursery, server) for _ in frames]
    with trio.fail_after(600):
        # Each sends all of its frame but the last byte, and stalls there.
        for (client, _), frame in zip(conns, frames, strict=True):
            await client.send_all(frame[:-1])
            await trio.testing.wait_all_tasks_blocked()
        taken = sum(counted.received for _, counted in conns)
        # One frame is being read; the three others are held back after
        # their first read (TCP would push back on their senders).
        assert server.buffer_budget.waiting == 3
        assert taken <= len(frames[0]) + 3 * LARGE_FRAME
        assert server.buffer_budget.used <= server.buffer_budget.limit
        for (client, _), frame in zip(conns, frames, strict=True):
            await client.send_all(frame[-1:])
        for i, (client, _) in enumerate(conns):
            ((kind, request_id, body),) = await read_envelopes(client, 1)
            assert (kind, request_id, body[1]) == (RESPONSE, i + 1, bytes([i]) * BODY)
    await trio.testing.wait_all_tasks_blocked()
    assert server.buffer_budget.used == 0


async def test_a_connection_closed_while_holding_budget_gives_it_back(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    server = Service().server(max_frame_size=BODY + 100, max_buffered_bytes=BODY + 200)
    frame = request_frame(1, Echo(bytes(BODY)))
    client, _ = await open_memory(nursery, server)
    await client.send_all(frame[:-1000])
    await trio.testing.wait_all_tasks_blocked()
    assert server.buffer_budget.used > 0
    await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.buffer_budget.used == 0 and server.open_connections == 0


async def test_a_sender_dribbling_a_byte_a_second_is_cut_its_wait_for_budget_counted(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = Service().server(max_frame_size=BODY + 100, max_buffered_bytes=BODY + 200)
    holder, _ = await open_memory(nursery, server)
    dribbler, _ = await open_memory(nursery, server)
    big = request_frame(1, Echo(bytes(BODY)))
    dribbled = request_frame(2, Echo(bytes(BODY)))

    async def dribble() -> None:
        # Its length, then a byte a second: it waits for the budget the
        # holder has for 20 s, then has 10 s left of its 30.
        await dribbler.send_all(dribbled[:HEADER])
        for i in range(HEADER, len(dribbled)):
            await trio.sleep(1)
            try:
                await dribbler.send_all(dribbled[i : i + 1])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    with trio.fail_after(600):
        await holder.send_all(big[:-1])
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        nursery.start_soon(dribble)
        await trio.sleep(20)
        await holder.send_all(big[-1:])
        ((kind, _, _),) = await read_envelopes(holder, 1)
        assert kind == RESPONSE
        assert await read_until_closed(dribbler) == b""
        assert 30 <= trio.current_time() - start < 31.5
    assert any("frame not complete within 30 s" in r.getMessage() for r in caplog.records)


def test_a_budget_smaller_than_one_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        RpcServer(max_frame_size=1 << 20, max_buffered_bytes=1 << 20)


# -- the decode budget --------------------------------------------------------------


def decoded_size(frame: bytes) -> int:
    """The decoded size the server reserves for `frame` (cbor_cost's)."""
    return cbor_cost(frame[HEADER:], max_items=1 << 20, max_memory=1 << 40).memory


async def test_concurrent_large_frames_wait_for_the_decode_budget_instead_of_multiplying(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Issue 15: each frame within every per-frame limit, and the raw
    budget freed as each was dispatched, four connections' frames were all
    held decoded by their handlers at once, whatever the bound."""
    service = Service()
    frames = [request_frame(i, Payload(i, bytes([i]) * BODY)) for i in range(1, 5)]
    one = decoded_size(frames[0])
    server = service.server(max_decoded_bytes=2 * one + one // 2)
    conns = [(await open_memory(nursery, server))[0] for _ in frames]
    with trio.fail_after(600):
        for client, frame in zip(conns, frames, strict=True):
            await client.send_all(frame)
        await trio.testing.wait_all_tasks_blocked()
        budget = server.decode_gate.budget
        assert service.running == 2 and budget.waiting == 2
        assert 2 * one <= budget.used <= budget.limit
        for key in range(1, 5):
            service.gate(key).set()
        for i, client in enumerate(conns):
            ((kind, request_id, _),) = await read_envelopes(client, 1)
            assert (kind, request_id) == (RESPONSE, i + 1)
    await trio.testing.wait_all_tasks_blocked()
    assert service.max_running == 2 and server.decode_gate.budget.used == 0


async def test_queued_one_way_frames_hold_the_decode_budget_until_handled(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """One-way messages queue up to 1,024 a connection behind a slow
    handler: large ones now stop the reading once the budget is taken."""
    service = Service()
    frames = [oneway_frame(Memo(i, bytes([i]) * BODY)) for i in range(6)]
    one = decoded_size(frames[0])
    server = service.server(max_decoded_bytes=2 * one + one // 2)
    client, counted = await open_memory(nursery, server)
    with trio.fail_after(600):
        nursery.start_soon(client.send_all, b"".join(frames))
        await trio.testing.wait_all_tasks_blocked()
        # The first is handled (its gate shut), the second queued, the third
        # waits for budget, and nothing after it is read.
        assert server.decode_gate.budget.waiting == 1
        assert counted.received < 4 * len(frames[0])
        for key in range(6):
            service.gate(key).set()
        await service.wait_memos(6)
    assert service.memos == list(range(6))
    await trio.testing.wait_all_tasks_blocked()
    assert server.decode_gate.budget.used == 0


async def test_a_frame_waiting_for_decode_budget_is_cut_after_the_frame_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service()
    first, second = (request_frame(i, Payload(i, bytes(BODY))) for i in (1, 2))
    one = decoded_size(first)
    server = service.server(max_decoded_bytes=one + one // 2, frame_timeout=30.0)
    holder, _ = await open_memory(nursery, server)
    waiter, _ = await open_memory(nursery, server)
    with trio.fail_after(600):
        await holder.send_all(first)
        await service.wait_running(1)
        start = trio.current_time()
        await waiter.send_all(second)
        assert await read_until_closed(waiter) == b""
        assert 30 <= trio.current_time() - start < 31
        service.gate(1).set()
        ((kind, request_id, _),) = await read_envelopes(holder, 1)
        assert (kind, request_id) == (RESPONSE, 1)
    assert any("no decode budget freed within 30 s" in r.getMessage() for r in caplog.records)
    await trio.testing.wait_all_tasks_blocked()
    assert server.decode_gate.budget.used == 0


async def test_a_frame_decoding_to_more_than_the_whole_budget_is_refused(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service()
    frame = request_frame(1, Payload(1, bytes(BODY)))
    server = service.server(max_decoded_bytes=decoded_size(frame) - 1)
    client, _ = await open_memory(nursery, server)
    with trio.fail_after(30):
        await client.send_all(frame)
        assert await read_until_closed(client) == b""
    assert any("decoding would cost too much" in r.getMessage() for r in caplog.records)


# -- connection limit ---------------------------------------------------------------


async def test_connections_beyond_the_limit_are_closed_at_once_and_logged_once_per_burst(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # Held connections that have completed a frame and are idle are not
    # evicted before evict_idle_after (test_rpc_admission.py has the rest).
    server = Service().server(evict_idle_after=3600.0)  # the default limit
    with trio.fail_after(60):
        held = [(await open_memory(nursery, server))[0] for _ in range(DEFAULT_MAX_CONNECTIONS)]
        for i, stream in enumerate(held):
            await stream.send_all(request_frame(i + 1, Echo(b"")))
            await read_envelopes(stream, 1)
        assert server.open_connections == DEFAULT_MAX_CONNECTIONS
        for _ in range(5):
            extra, _ = await open_memory(nursery, server)
            await trio.testing.wait_all_tasks_blocked()
            assert await is_closed_by_server(extra)
        assert server.refused_connections == 5
        starts = [r for r in caplog.records if "the limit (max_connections)" in r.getMessage()]
        assert len(starts) == 1
        # One leaves: the next is served, and the burst's end is logged.
        await held.pop().aclose()
        await trio.testing.wait_all_tasks_blocked()
        fresh, _ = await open_memory(nursery, server)
        await fresh.send_all(request_frame(1, Echo(b"in")))
        ((kind, _, _),) = await read_envelopes(fresh, 1)
        assert kind == RESPONSE
    assert any(
        "after refusing 5 connections and evicting 0" in r.getMessage() for r in caplog.records
    )
    assert server.max_connections == DEFAULT_MAX_CONNECTIONS


async def test_the_connection_limit_holds_over_tcp(nursery: trio.Nursery) -> None:
    address = await start_tcp_server(nursery, Service().server(max_connections=2))
    host, port = address.rsplit(":", 1)
    with trio.fail_after(10):
        async with connect(address) as one, connect(address) as two:
            assert await one.call(Echo(b"1")) == Echo(b"1")
            assert await two.call(Echo(b"2")) == Echo(b"2")
            async with await trio.open_tcp_stream(host, int(port)) as third:
                assert await read_until_closed(third) == b""
            assert await one.call(Echo(b"1")) == Echo(b"1")


# -- decoding cost ------------------------------------------------------------------


def empty_arrays_frame(size: int) -> bytes:
    """A ONEWAY envelope whose body is an array of `size` - 10 empty arrays:
    about 65 times its size once decoded."""
    n = size - 10
    return encode_frame(bytes([0x83, ONEWAY, 0x00]) + b"\x9a" + struct.pack(">I", n) + b"\x80" * n)


@contextmanager
def loop_stall_and_memory() -> Iterator[dict[str, float]]:
    """Measures the longest the trio loop went without running a ticker
    task (seconds) and the peak of memory allocated meanwhile (bytes)."""
    figures = {"stall": 0.0, "memory": 0.0}
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield figures
    finally:
        figures["memory"] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()


async def ticker(figures: dict[str, float]) -> None:
    while True:
        before = time.perf_counter()
        await trio.sleep(0.001)
        figures["stall"] = max(figures["stall"], time.perf_counter() - before)


async def test_a_frame_of_empty_arrays_is_refused_without_its_memory_or_a_stall(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service()
    address = await start_tcp_server(nursery, service.server())
    host, port = address.rsplit(":", 1)
    frame = empty_arrays_frame(4_000_000)
    with trio.fail_after(60):
        async with connect(address) as good, trio.open_nursery() as inner:
            # Its first frame now: a connection silent for the handshake
            # timeout (10 s) would be closed, and this test may take that
            # long under tracemalloc on a loaded machine.
            assert await good.call(Echo(b"first")) == Echo(b"first")
            with loop_stall_and_memory() as figures:
                inner.start_soon(ticker, figures)
                async with await trio.open_tcp_stream(host, int(port)) as bad:
                    sent = time.perf_counter()
                    await bad.send_all(frame)
                    # Its cost walk (a million items, under tracemalloc) takes ~8 s
                    # on a loaded two-core machine.
                    closed = await is_closed_by_server(bad, within=40)
                    walk = time.perf_counter() - sent
                assert await good.call(Echo(b"fine")) == Echo(b"fine")
                inner.cancel_scope.cancel()
    # Decoded, it is 260 MB, and it took seconds of the loop (issue 15).
    # The frame, a copy in the reader's buffer and one in the worker: 12 MB.
    assert figures["memory"] < 40e6, figures
    # The walk ran off the loop: the loop kept running through it. (Relative
    # to the walk, not an absolute bound: a loaded machine slows both; the
    # walk in the loop was a stall as long as the walk.)
    assert figures["stall"] < max(0.5, walk / 4), (figures, walk)
    assert closed
    assert any("decoding would cost too much" in r.getMessage() for r in caplog.records)


def notes_batch(count: int) -> bytes:
    """One BATCH frame of `count` one-way Note envelopes: dense (about 20
    times its size decoded), as a batch of Raft heartbeats is."""
    items = [encode_cbor([ONEWAY, 0, to_wire(Note(i))]) for i in range(count)]
    return encode_frame(bytes([0x83, BATCH, 0x00]) + array_header(count) + b"".join(items))


async def test_large_frames_in_budget_are_served_dense_or_not(nursery: trio.Nursery) -> None:
    service = Service()
    address = await start_tcp_server(nursery, service.server())
    host, port = address.rsplit(":", 1)
    batch = notes_batch(30_000)
    assert len(batch) > 4 * LARGE_FRAME
    with trio.fail_after(30):
        async with connect(address) as client:
            payload = bytes(range(256)) * (8 * 4096)  # 8 MiB in one bytes item
            assert await client.call(Echo(payload)) == Echo(payload)
        async with await trio.open_tcp_stream(host, int(port)) as raw:
            await raw.send_all(batch)
            await service.wait_notes(30_000)
    assert service.notes == list(range(30_000))


@pytest.mark.parametrize(("limit", "served"), [(200_000, True), (100_000, False)])
async def test_a_frame_over_the_item_limit_is_refused(
    nursery: trio.Nursery, limit: int, served: bool
) -> None:
    service = Service()
    address = await start_tcp_server(nursery, service.server(max_frame_items=limit))
    host, port = address.rsplit(":", 1)
    batch = notes_batch(30_000)  # 150,002 items
    with trio.fail_after(30):
        async with await trio.open_tcp_stream(host, int(port)) as raw:
            await raw.send_all(batch)
            if served:
                await service.wait_notes(30_000)
            else:
                assert await is_closed_by_server(raw, within=5)
                assert service.notes == []


def arrays_frame(item: bytes, size: int) -> bytes:
    n = (size - 10) // len(item)
    return encode_frame(bytes([0x83, ONEWAY, 0x00]) + b"\x9a" + struct.pack(">I", n) + item * n)


@pytest.mark.parametrize(
    ("item", "refused"),
    [
        (b"\x80", True),  # [] 65x
        (b"\x81\x80", True),  # [[]] 76x
        (b"\x81\x00", True),  # [0] 48x
        (b"\x83\x00\x00\x00", False),  # [0, 0, 0] 24x: as dense as legitimate traffic
    ],
)
async def test_the_decode_ratio_limit(nursery: trio.Nursery, item: bytes, refused: bool) -> None:
    service = Service()
    address = await start_tcp_server(nursery, service.server())
    host, port = address.rsplit(":", 1)
    with trio.fail_after(30):
        async with await trio.open_tcp_stream(host, int(port)) as raw:
            await raw.send_all(arrays_frame(item, 200_000))
            if refused:
                assert await is_closed_by_server(raw, within=5)
            else:
                # Decoded, and dropped as a one-way of no known type; the
                # connection stays.
                await trio.sleep(0.2)
                assert not await is_closed_by_server(raw)


async def test_only_frames_of_many_items_are_walked_in_a_thread(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large frame of a few items (a value, a snapshot chunk) is checked
    on the loop: a thread hop costs more than its walk."""
    hops = 0
    run_sync = trio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        return await run_sync(*args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    service = Service()
    address = await start_tcp_server(nursery, service.server())
    host, port = address.rsplit(":", 1)
    with trio.fail_after(30):
        async with connect(address) as client:
            payload = bytes(1 << 20)
            assert await client.call(Echo(payload)) == Echo(payload)
        assert hops == 0
        async with await trio.open_tcp_stream(host, int(port)) as raw:
            await raw.send_all(notes_batch(30_000))
            await service.wait_notes(30_000)
        assert hops == 1

"""Framing: the reader splits frames however the bytes arrive, refuses an
oversized length before reading its body, and tells a clean end of stream
from one inside a frame; the writer coalesces and keeps order."""

from __future__ import annotations

import itertools
import struct

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from kvproto.codec import EncodeError
from kvproto.frame import FrameError, FrameReader, FrameWriter, encode_frame


class ScriptedStream(trio.abc.ReceiveStream):
    """Returns the given chunks one per receive_some, then end of stream (or,
    with `then_block`, waits forever: a peer that sends nothing more)."""

    def __init__(self, chunks: list[bytes], *, then_block: bool = False) -> None:
        self.chunks = list(chunks)
        self.then_block = then_block
        self.receives = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        self.receives += 1
        if self.chunks:
            return self.chunks.pop(0)
        if self.then_block:
            await trio.sleep_forever()
        return b""

    async def aclose(self) -> None:
        pass


async def read_all(stream: trio.abc.ReceiveStream, max_frame_size: int = 1 << 20) -> list[bytes]:
    with trio.fail_after(5):
        return [frame async for frame in FrameReader(stream, max_frame_size)]


BODIES = [b"", b"a", b"hello frames", bytes(range(256)) * 3]
STREAM = b"".join(encode_frame(b) for b in BODIES)


async def test_frames_split_at_every_byte_boundary_are_reassembled() -> None:
    for cut in range(1, len(STREAM)):
        assert await read_all(ScriptedStream([STREAM[:cut], STREAM[cut:]])) == BODIES


async def test_frames_arriving_one_byte_at_a_time_are_reassembled() -> None:
    chunks = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert await read_all(ScriptedStream(chunks)) == BODIES


async def test_many_frames_in_one_chunk_cost_one_receive() -> None:
    bodies = [str(i).encode() for i in range(1000)]
    stream = ScriptedStream([b"".join(encode_frame(b) for b in bodies)])
    reader = FrameReader(stream)
    with trio.fail_after(5):
        got = [await reader.receive_frame() for _ in bodies]
    assert got == bodies
    assert stream.receives == 1


@settings(max_examples=100, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=10),
    cuts=st.lists(st.integers(0, 4000), max_size=10),
)
def test_any_chunking_yields_the_same_frames(bodies: list[bytes], cuts: list[int]) -> None:
    data = b"".join(encode_frame(b) for b in bodies)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    assert trio.run(read_all, ScriptedStream(chunks)) == bodies


async def test_oversized_length_is_refused_without_waiting_for_the_body() -> None:
    # The peer announces 1 MiB + 1 and then sends nothing: the reader must
    # fail on the header alone instead of waiting for the body.
    stream = ScriptedStream([struct.pack(">I", (1 << 20) + 1)], then_block=True)
    reader = FrameReader(stream, max_frame_size=1 << 20)
    with trio.fail_after(5), pytest.raises(FrameError, match="exceeds the limit"):
        await reader.receive_frame()
    assert stream.receives == 1


async def test_oversized_length_after_good_frames_is_refused() -> None:
    good = encode_frame(b"ok")
    stream = ScriptedStream([good + struct.pack(">I", 0xFFFFFFFF)], then_block=True)
    reader = FrameReader(stream, max_frame_size=1 << 20)
    with trio.fail_after(5):
        assert await reader.receive_frame() == b"ok"
        with pytest.raises(FrameError):
            await reader.receive_frame()


async def test_frame_of_exactly_the_limit_is_accepted() -> None:
    body = bytes(1000)
    assert await read_all(ScriptedStream([encode_frame(body)]), max_frame_size=1000) == [body]


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 10])
async def test_end_of_stream_inside_a_frame_is_an_error(cut: int) -> None:
    data = encode_frame(b"0123456789")
    reader = FrameReader(ScriptedStream([data[:cut]]))
    with trio.fail_after(5), pytest.raises(FrameError, match="inside a frame"):
        await reader.receive_frame()


async def test_clean_end_of_stream_is_none_and_stays_none() -> None:
    reader = FrameReader(ScriptedStream([encode_frame(b"x")]))
    with trio.fail_after(5):
        assert await reader.receive_frame() == b"x"
        assert await reader.receive_frame() is None
        assert await reader.receive_frame() is None


async def test_large_frame_in_small_chunks_is_read() -> None:
    body = bytes(range(256)) * 16384  # 4 MiB
    data = encode_frame(body)
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    assert await read_all(ScriptedStream(chunks), max_frame_size=8 << 20) == [body]


def test_encoding_a_frame_over_the_limit_is_refused() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    with pytest.raises(EncodeError):
        encode_frame(bytes(11), max_frame_size=10)


# --------------------------------------------------------------------------
# FrameWriter.


class RecordingStream(trio.abc.SendStream):
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.gate = trio.Event()
        self.gate.set()
        self.broken = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.gate.wait()
        if self.broken:
            raise trio.BrokenResourceError("peer gone")
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_writer_coalesces_queued_frames_into_one_send_in_order() -> None:
    stream = RecordingStream()
    writer = FrameWriter(stream)
    frames = [encode_frame(str(i).encode()) for i in range(100)]
    seqs = [writer.send_nowait(f) for f in frames]
    assert seqs == list(range(1, 101))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.wait_flushed()
            nursery.cancel_scope.cancel()
    assert stream.writes == [b"".join(frames)]
    assert writer.attempted == 100


async def test_writer_sends_frames_queued_during_a_write_in_the_next_write() -> None:
    stream = RecordingStream()
    stream.gate = trio.Event()
    writer = FrameWriter(stream)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            writer.send_nowait(b"first")
            await trio.testing.wait_all_tasks_blocked()  # the writer is in send_all
            assert writer.attempted == 1
            writer.send_nowait(b"second")
            writer.send_nowait(b"third")
            stream.gate.set()
            await writer.wait_flushed()
            nursery.cancel_scope.cancel()
    assert stream.writes == [b"first", b"secondthird"]


async def test_writer_backpressure_waits_until_the_queue_drains() -> None:
    stream = RecordingStream()
    stream.gate = trio.Event()
    writer = FrameWriter(stream, high_water=10)
    unblocked = False

    async def producer() -> None:
        nonlocal unblocked
        writer.send_nowait(b"x" * 8)  # taken by the writer, blocked in send_all
        await trio.testing.wait_all_tasks_blocked()
        writer.send_nowait(b"y" * 20)  # queued, above high water
        await writer.wait_writable()
        unblocked = True

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert not unblocked
            stream.gate.set()
            await writer.wait_flushed()
            await trio.testing.wait_all_tasks_blocked()
            assert unblocked
            nursery.cancel_scope.cancel()


async def test_writer_failure_is_recorded_and_wakes_waiters() -> None:
    stream = RecordingStream()
    stream.broken = True
    writer = FrameWriter(stream)
    writer.send_nowait(b"lost")
    with trio.fail_after(5):
        await writer.run()  # returns: the stream failed
        await writer.wait_flushed()
        await writer.wait_writable()
    assert isinstance(writer.error, trio.BrokenResourceError)
    with pytest.raises(trio.BrokenResourceError):
        writer.send_nowait(b"more")


# -- FrameWriter on a socket: idle writes go out at once ------------------------------


async def _socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_an_idle_writer_writes_a_frame_to_its_socket_at_once() -> None:
    left, right = await _socket_pair()
    writer = FrameWriter(left)
    # No writer task runs: the frame must leave from send_nowait itself.
    seq = writer.send_nowait(encode_frame(b"now"))
    assert writer.attempted == seq
    reader = FrameReader(right)
    assert await reader.receive_frame() == b"now"
    await left.aclose()
    await right.aclose()


async def test_what_the_socket_does_not_take_follows_in_order_through_the_writer() -> None:
    left, right = await _socket_pair()
    writer = FrameWriter(left)
    big = bytes(range(256)) * 40_000  # ~10 MB: more than a socket buffer holds
    bodies = [b"first", big, b"after"]
    reader = FrameReader(right)
    got: list[bytes | None] = []
    async with trio.open_nursery() as n:
        n.start_soon(writer.run)
        for body in bodies:
            writer.send_nowait(encode_frame(body))
        for _ in bodies:
            got.append(await reader.receive_frame())
        n.cancel_scope.cancel()
    assert got == bodies
    await left.aclose()
    await right.aclose()


async def test_a_closed_socket_is_never_written_directly() -> None:
    left, right = await _socket_pair()
    writer = FrameWriter(left)
    await left.aclose()
    # The closed socket's number may belong to another file by now: the
    # frame is queued for the writer, which reports the stream closed.
    writer.send_nowait(encode_frame(b"late"))
    await writer.run()
    assert isinstance(writer.error, trio.ClosedResourceError)
    await right.aclose()

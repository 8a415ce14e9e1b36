"""Batched frames (kvproto.rpc.batching): what one side makes ready in one
scheduler turn shares a frame, a lone message leaves in its own at once,
order is kept, the frame limit holds, and a malformed batch is refused
whole like any malformed frame.
"""

from __future__ import annotations

import struct

import cbor2
import pytest
import trio
import trio.lowlevel
import trio.testing

from kvproto.codec import DecodeError, EncodeError, decode_cbor, encode_cbor, to_wire
from kvproto.frame import FrameReader, FrameWriter, encode_frame
from kvproto.rpc import Echo, RpcServer, connect, echo_handler
from kvproto.rpc.batching import EnvelopeBatcher, array_header
from kvproto.rpc.envelope import FrameKind, decode_envelopes, encode_inner
from tests.kvproto.rpc_helpers import (
    Note,
    Service,
    read_until_closed,
    request_frame,
    start_tcp_server,
)

REQUEST, RESPONSE, ONEWAY, BATCH = 0, 1, 3, 4


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_array_header_is_the_cbor_head_of_an_array_of_n(n: int) -> None:
    assert array_header(n) + cbor2.dumps(0) * n == cbor2.dumps([0] * n)


def test_a_batch_frame_decodes_to_its_envelopes_in_order() -> None:
    inner = [encode_inner(FrameKind.REQUEST, i, Echo(b"%d" % i)) for i in (1, 2)]
    inner.append(encode_inner(FrameKind.ONEWAY, 0, Note(7)))
    body = bytes([0x83, BATCH, 0]) + array_header(3) + b"".join(inner)
    assert [(k, i) for k, i, _ in decode_envelopes(body)] == [
        (FrameKind.REQUEST, 1),
        (FrameKind.REQUEST, 2),
        (FrameKind.ONEWAY, 0),
    ]


BAD_BATCHES = {
    "empty": [BATCH, 0, []],
    "not-an-array": [BATCH, 0, 5],
    "nested": [BATCH, 0, [[BATCH, 0, [[REQUEST, 1, to_wire(Echo(b""))]]]]],
    "with-an-id": [BATCH, 3, [[REQUEST, 1, to_wire(Echo(b""))]]],
    "bad-inner": [BATCH, 0, [[REQUEST, 1, to_wire(Echo(b""))], [REQUEST, 0]]],
    "kind-as-bool": [True, 0, [[REQUEST, 1, to_wire(Echo(b""))]]],
}


@pytest.mark.parametrize("bad", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_a_malformed_batch_is_refused_whole(bad: object) -> None:
    with pytest.raises(DecodeError):
        decode_envelopes(encode_cbor(bad))


@pytest.mark.parametrize("bad", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
async def test_a_malformed_batch_closes_only_its_connection(
    nursery: trio.Nursery, bad: object
) -> None:
    service = Service()
    address = await start_tcp_server(nursery, service.server())
    host, port = address.rsplit(":", 1)
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(encode_frame(encode_cbor(bad)))
            assert await read_until_closed(stream) == b""
        async with connect(address) as conn:
            assert await conn.call(Echo(b"after")) == Echo(b"after")


async def test_a_server_handles_a_batch_like_its_frames_and_batches_its_answers(
    nursery: trio.Nursery,
) -> None:
    service = Service()
    address = await start_tcp_server(nursery, service.server())
    host, port = address.rsplit(":", 1)
    inner = [encode_inner(FrameKind.REQUEST, i, Echo(b"%d" % i)) for i in range(1, 11)]
    inner.insert(3, encode_inner(FrameKind.ONEWAY, 0, Note(1)))
    body = bytes([0x83, BATCH, 0]) + array_header(len(inner)) + b"".join(inner)
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(encode_frame(body))
            reader = FrameReader(stream)
            frame = await reader.receive_frame()
            assert frame is not None
            # Ten answers made ready in one turn: one frame carries them all.
            answers = decode_envelopes(frame)
            assert sorted((k, i, b) for k, i, b in answers) == [
                (FrameKind.RESPONSE, i, to_wire(Echo(b"%d" % i))) for i in range(1, 11)
            ]
        await service.wait_notes(1)
    assert service.notes == [1]


async def test_a_lone_call_leaves_at_once_in_its_own_plain_frame(nursery: trio.Nursery) -> None:
    # A raw "server" that reads what the client sends and answers by hand.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(5):
        async with connect(f"127.0.0.1:{port}") as conn:
            server_side = await listeners[0].accept()
            async with trio.open_nursery() as inner:

                async def serve() -> None:
                    frame = await FrameReader(server_side).receive_frame()
                    assert frame is not None
                    assert decode_cbor(frame) == [REQUEST, 1, to_wire(Echo(b"x"))]
                    await server_side.send_all(
                        encode_frame(encode_inner(FrameKind.RESPONSE, 1, Echo(b"y")))
                    )

                inner.start_soon(serve)
                assert await conn.call(Echo(b"x")) == Echo(b"y")
            await server_side.aclose()
        await listeners[0].aclose()


async def test_concurrent_calls_share_frames_both_ways_and_get_their_own_answers(
    nursery: trio.Nursery,
) -> None:
    batches_sent = []
    address = await start_tcp_server(nursery, RpcServer({Echo: echo_handler}))
    with trio.fail_after(10):
        async with connect(address) as conn:
            answers: dict[int, object] = {}

            async def one(i: int) -> None:
                answers[i] = await conn.call(Echo(b"%d" % i))

            async with trio.open_nursery() as calls:
                for i in range(200):
                    calls.start_soon(one, i)
            batches_sent.append(conn.batches_sent)
    assert answers == {i: Echo(b"%d" % i) for i in range(200)}
    # The first call went alone; the 199 others were made ready in the same
    # turn and shared frames.
    assert batches_sent[0] >= 1


async def test_one_way_messages_keep_their_order_across_lone_and_batched_frames(
    nursery: trio.Nursery,
) -> None:
    service = Service()
    address = await start_tcp_server(nursery, service.server())
    with trio.fail_after(10):
        async with connect(address) as conn:
            async with trio.open_nursery() as calls:
                for seq in range(300):
                    if seq % 50 == 10:
                        # Calls in flight make what follows join batches.
                        calls.start_soon(conn.call, Echo(b"%d" % seq))
                    await conn.send_oneway(Note(seq))
                    if seq % 7 == 0:
                        await trio.lowlevel.checkpoint()  # let a batch go out mid-stream
            await service.wait_notes(300)
    assert service.notes == list(range(300))


async def test_the_batcher_keeps_send_order_whatever_goes_alone() -> None:
    send, receive = trio.testing.memory_stream_pair()
    writer = FrameWriter(send)
    batcher = EnvelopeBatcher(writer, 1 << 20)
    plan = [True, False, True, True, None, True, False, False, None, True, None]
    sent = []
    for step, lone in enumerate(plan):
        if lone is None:
            batcher.flush()
            continue
        envelope = encode_inner(FrameKind.ONEWAY, 0, Note(step))
        batcher.send(envelope, lone=lone)
        sent.append(envelope)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            reader = FrameReader(receive)
            got: list[bytes] = []
            frames = 0
            while len(got) < len(sent):
                frame = await reader.receive_frame()
                assert frame is not None
                frames += 1
                got += [encode_cbor(list(e)) for e in decode_envelopes(frame)]
            nursery.cancel_scope.cancel()
    assert got == sent
    # Alone: 0, then [1, 2, 3] (once 1 opened a batch, 2 and 3 joined it),
    # alone: 5, then [6, 7], then alone: 9.
    assert (frames, batcher.batches) == (5, 2)


async def test_a_batch_is_cut_at_the_frame_limit() -> None:
    send, receive = trio.testing.memory_stream_pair()
    writer = FrameWriter(send)
    limit = 200
    batcher = EnvelopeBatcher(writer, limit)
    envelopes = [
        encode_inner(FrameKind.ONEWAY, 0, Echo(b"%03d" % i + b"x" * 30)) for i in range(20)
    ]
    for envelope in envelopes:
        batcher.send(envelope, lone=False)
    batcher.flush()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            reader = FrameReader(receive, limit)
            got: list[bytes] = []
            frames = 0
            while len(got) < len(envelopes):
                frame = await reader.receive_frame()
                assert frame is not None and len(frame) <= limit
                frames += 1
                got += [encode_cbor(list(e)) for e in decode_envelopes(frame)]
            nursery.cancel_scope.cancel()
    assert got == envelopes
    assert frames > 1


def test_an_envelope_larger_than_the_frame_limit_is_an_encode_error() -> None:
    send, _ = trio.testing.memory_stream_pair()
    batcher = EnvelopeBatcher(FrameWriter(send), 100)
    big = encode_inner(FrameKind.ONEWAY, 0, Echo(b"x" * 200))
    with pytest.raises(EncodeError):
        batcher.send(big, lone=False)
    with pytest.raises(EncodeError):
        batcher.send(big, lone=True)


def test_frame_header_layout_is_unchanged_for_plain_frames() -> None:
    frame = request_frame(1, Echo(b"a"))
    (size,) = struct.unpack_from(">I", frame)
    assert decode_envelopes(frame[4 : 4 + size]) == [(FrameKind.REQUEST, 1, to_wire(Echo(b"a")))]

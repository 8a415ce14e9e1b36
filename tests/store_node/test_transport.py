"""Transport: a round's messages for a store whose sender is idle and
connected leave from `send` itself; otherwise the sender task sends them.
Either way they arrive in order. Loopback TCP."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
import trio.testing

from kvproto.codec import cbor_cost
from kvproto.metapb import RegionId, Store, StoreId, StoreState
from kvproto.raft_serverpb import HibernateFlag, RaftMessage, RaftMessageBatch
from kvproto.rpc import FrameKind, RequestContext, RpcServer
from kvproto.rpc.envelope import encode_inner
from kvproto.rpc.server import DEFAULT_MAX_DECODE_RATIO, DEFAULT_MAX_FRAME_ITEMS
from raft import Entry, Message, MessageType
from store_node.node import dialable_address
from store_node.transport import MAX_BATCH_MESSAGES, Transport, frames, message_size
from tests.factories import epoch, peer


def _msg(i: int) -> RaftMessage:
    return RaftMessage(
        RegionId(1),
        peer(11, 1),
        peer(12, 2),
        epoch(),
        Message(MessageType.HEARTBEAT, to=12, from_=11, term=1, commit=i),
    )


async def test_messages_leave_from_send_once_the_sender_is_connected_and_idle() -> None:
    arrived: list[int] = []
    more = trio.Event()

    async def on_batch(batch: RaftMessageBatch, _: RequestContext) -> None:
        arrived.extend(m.message.commit for m in batch.messages)
        more.set()

    server = RpcServer({}, {RaftMessageBatch: on_batch})
    async with trio.open_nursery() as n:
        host, port = await n.start(server.serve, "127.0.0.1", 0)

        async def resolve(_: StoreId) -> str:
            return f"{host}:{port}"

        transport = Transport(StoreId(1), n, resolve)
        # No connection yet: the sender task connects and sends.
        assert transport.send(StoreId(2), [_msg(1)]) is False
        while not arrived:
            await more.wait()
            more = trio.Event()
        # Connected and idle: sent here, before any other task runs.
        await trio.testing.wait_all_tasks_blocked()
        assert transport.send(StoreId(2), [_msg(2), _msg(3)]) is True
        while len(arrived) < 3:
            await more.wait()
            more = trio.Event()
        assert arrived == [1, 2, 3]
        transport.close()
        n.cancel_scope.cancel()


async def test_a_large_round_leaves_in_frames_of_at_most_max_batch_messages() -> None:
    batches: list[list[int]] = []
    more = trio.Event()

    async def on_batch(batch: RaftMessageBatch, _: RequestContext) -> None:
        batches.append([m.message.commit for m in batch.messages])
        more.set()

    server = RpcServer({}, {RaftMessageBatch: on_batch})
    async with trio.open_nursery() as n:
        host, port = await n.start(server.serve, "127.0.0.1", 0)

        async def resolve(_: StoreId) -> str:
            return f"{host}:{port}"

        transport = Transport(StoreId(1), n, resolve, max_batch_messages=3)
        transport.send(StoreId(2), [_msg(0)])
        while not batches:
            await more.wait()
            more = trio.Event()
        await trio.testing.wait_all_tasks_blocked()
        # Connected and idle, but too many for one frame: the sender splits.
        assert transport.send(StoreId(2), [_msg(i) for i in range(1, 11)]) is False
        while sum(map(len, batches)) < 11:
            await more.wait()
            more = trio.Event()
        assert [c for b in batches for c in b] == list(range(11))
        assert all(len(b) <= 3 for b in batches) and len(batches) >= 5
        transport.close()
        n.cancel_scope.cancel()


async def test_a_round_of_40000_messages_reaches_a_server_with_the_default_limits() -> None:
    """In one frame it would be 1.4 million CBOR items, which RpcServer
    refuses (the connection is closed, every message lost, again at each
    retry)."""
    arrived: list[int] = []
    done = trio.Event()

    async def on_batch(batch: RaftMessageBatch, _: RequestContext) -> None:
        arrived.extend(m.message.commit for m in batch.messages)
        if len(arrived) >= 40_000:
            done.set()

    server = RpcServer({}, {RaftMessageBatch: on_batch})
    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            host, port = await n.start(server.serve, "127.0.0.1", 0)

            async def resolve(_: StoreId) -> str:
                return f"{host}:{port}"

            transport = Transport(StoreId(1), n, resolve)
            transport.send(StoreId(2), [_msg(i) for i in range(40_000)])
            await done.wait()
            assert arrived == list(range(40_000))
            assert transport.dropped == 0
            transport.close()
            n.cancel_scope.cancel()


@pytest.mark.parametrize("base", [1, 2**40], ids=["small-ids", "large-ids"])
def test_a_frame_of_max_batch_messages_is_well_inside_a_servers_decoding_limits(
    base: int,
) -> None:
    """A full batch of heartbeats, the densest Raft messages (small ids are
    the densest: one byte on the wire, a slot of 8 decoded), passes
    RpcServer's cost check with room to spare."""

    def heartbeat(i: int) -> RaftMessage:
        n = base + i % 2
        return RaftMessage(
            RegionId(n),
            peer(n, n),
            peer(n + 1, n),
            epoch(conf_ver=n, version=n),
            Message(MessageType.HEARTBEAT, to=n + 1, from_=n, term=n, commit=n),
            hibernate=HibernateFlag.REQUEST,
        )

    batch = RaftMessageBatch(StoreId(1), tuple(map(heartbeat, range(MAX_BATCH_MESSAGES))), base)
    frame = encode_inner(FrameKind.ONEWAY, 0, batch)
    cost = cbor_cost(frame, max_items=1 << 40, max_memory=1 << 60)
    assert cost.items <= DEFAULT_MAX_FRAME_ITEMS / 4
    assert cost.memory <= DEFAULT_MAX_DECODE_RATIO * len(frame) / 1.4


def _append(i: int, nbytes: int) -> RaftMessage:
    entry = Entry(term=1, index=i, data=bytes([i % 256]) * nbytes)
    return RaftMessage(
        RegionId(1),
        peer(11, 1),
        peer(12, 2),
        epoch(),
        Message(MessageType.APPEND, to=12, from_=11, term=1, index=i - 1, entries=(entry,)),
    )


@pytest.mark.parametrize("connected", [False, True], ids=["sender-task", "direct"])
async def test_a_round_of_large_appends_leaves_in_frames_under_the_frame_limit(
    connected: bool,
) -> None:
    """Five appends of a 16 MiB entry each (one region's round of values at
    the largest size, or five regions') are 80 MiB: in one frame, over the
    64 MiB limit, which made `send` raise EncodeError out of the store loop."""
    arrived: list[int] = []
    more = trio.Event()

    async def on_batch(batch: RaftMessageBatch, _: RequestContext) -> None:
        arrived.extend(m.message.index + 1 for m in batch.messages)
        more.set()

    server = RpcServer({}, {RaftMessageBatch: on_batch})
    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            host, port = await n.start(server.serve, "127.0.0.1", 0)

            async def resolve(_: StoreId) -> str:
                return f"{host}:{port}"

            transport = Transport(StoreId(1), n, resolve)
            if connected:
                transport.send(StoreId(2), [_msg(0)])
                while not arrived:
                    await more.wait()
                    more = trio.Event()
                await trio.testing.wait_all_tasks_blocked()
                arrived.clear()
            transport.send(StoreId(2), [_append(i, 16 << 20) for i in range(1, 6)])
            while len(arrived) < 5:
                await more.wait()
                more = trio.Event()
            assert arrived == [1, 2, 3, 4, 5]
            assert transport.dropped == 0
            transport.close()
            n.cancel_scope.cancel()


def test_frames_are_cut_by_count_and_bytes_one_message_at_least() -> None:
    small, large = _msg(1), _append(2, 5 << 20)
    assert message_size(large) > 5 << 20 > message_size(small)
    assert frames([], 3, 1 << 20) == [()]  # a ping
    msgs = [small, small, large, small, large, large, small, small, small, small]
    cut = frames(msgs, 3, 8 << 20)
    assert [m for f in cut for m in f] == msgs
    assert [len(f) for f in cut] == [3, 2, 3, 2]
    # One message over the bound still goes, alone.
    assert frames([small, _append(3, 9 << 20), small], 10, 8 << 20) == [
        (small,),
        (_append(3, 9 << 20),),
        (small,),
    ]


@pytest.mark.parametrize("connected", [False, True], ids=["sender-task", "direct"])
async def test_a_message_over_the_frame_limit_is_dropped_not_raised(connected: bool) -> None:
    """The store's write limits keep every message under 64 MiB; one over it
    is dropped with an error logged, and what follows still goes."""
    arrived: list[int] = []
    more = trio.Event()

    async def on_batch(batch: RaftMessageBatch, _: RequestContext) -> None:
        arrived.extend(m.message.commit for m in batch.messages)
        more.set()

    server = RpcServer({}, {RaftMessageBatch: on_batch})
    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            host, port = await n.start(server.serve, "127.0.0.1", 0)

            async def resolve(_: StoreId) -> str:
                return f"{host}:{port}"

            transport = Transport(StoreId(1), n, resolve)
            if connected:
                transport.send(StoreId(2), [_msg(0)])
                while not arrived:
                    await more.wait()
                    more = trio.Event()
                await trio.testing.wait_all_tasks_blocked()
            assert transport.send(StoreId(2), [_append(1, 65 << 20)]) is False
            transport.send(StoreId(2), [_msg(7)])
            while 7 not in arrived:
                await more.wait()
                more = trio.Event()
            assert transport.dropped == 1
            transport.close()
            n.cancel_scope.cancel()


async def test_a_store_without_an_address_is_looked_up_again_only_after_a_while(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lookups: list[float] = []

    async def resolve(_: StoreId) -> str | None:
        lookups.append(trio.current_time())
        return None  # a tombstone, or a store the PD does not know

    async with trio.open_nursery() as n:
        transport = Transport(StoreId(1), n, resolve)
        start = trio.current_time()
        # A leader's heartbeats every 0.1 s for 12 s.
        for i in range(120):
            transport.send(StoreId(2), [_msg(i)])
            await trio.sleep(0.1)
        assert len(lookups) == 3  # at 0, 5 and 10 s
        assert [round(t - start) for t in lookups] == [0, 5, 10]
        assert transport.dropped == 120
        transport.close()
        n.cancel_scope.cancel()


def test_a_tombstone_has_no_address_to_dial() -> None:
    up = Store(StoreId(3), "127.0.0.1:20160")
    assert dialable_address(up) == "127.0.0.1:20160"
    assert dialable_address(replace(up, state=StoreState.DISCONNECTED)) == "127.0.0.1:20160"
    assert dialable_address(replace(up, state=StoreState.TOMBSTONE)) is None
    assert dialable_address(None) is None

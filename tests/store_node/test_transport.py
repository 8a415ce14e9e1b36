"""Transport: a round's messages for a store whose sender is idle and
connected leave from `send` itself; otherwise the sender task sends them.
Either way they arrive in order. Loopback TCP."""

from __future__ import annotations

import trio
import trio.testing

from kvproto.metapb import RegionId, StoreId
from kvproto.raft_serverpb import RaftMessage, RaftMessageBatch
from kvproto.rpc import RequestContext, RpcServer
from raft import Message, MessageType
from store_node.transport import Transport
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

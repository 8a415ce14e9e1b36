"""Raft traffic to other stores: one connection and one sender per store.

`send` never blocks the store loop: a round's messages for a store join that
store's queue, and its sender task coalesces whatever is queued into
`RaftMessageBatch` frames of at most `MAX_BATCH_MESSAGES` messages (TiKV's
raft-msg-max-batch-size): a frame stays far inside the receiving server's
decoding limits (kvproto.rpc.server: items and decoded size per frame),
which would refuse it whole, and so every message to that store, again and
again. When the queue is full or the store cannot be reached, messages are
dropped: Raft recovers from loss by itself (probes, heartbeats, retries),
and a store loop that waited for a dead peer would stall every region.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from kvproto.metapb import StoreId
from kvproto.raft_serverpb import RaftMessage, RaftMessageBatch
from kvproto.rpc import RpcCallError, StreamOpener, open_tcp
from kvproto.rpc.reconnect import Backoff, ReconnectingConnection

log = logging.getLogger(__name__)

Resolver = Callable[[StoreId], Awaitable[str | None]]

# Messages per frame. A heartbeat is about 36 CBOR items and 50 bytes, so a
# frame of them is about 150,000 items and 200 KB, decoded in some 15 ms.
MAX_BATCH_MESSAGES: Final = 4096


class Transport:
    def __init__(
        self,
        store_id: StoreId,
        nursery: trio.Nursery,
        resolve: Resolver,
        *,
        queue_size: int = 1024,
        rng: random.Random | None = None,
        incarnation: int = 0,
        max_batch_messages: int = MAX_BATCH_MESSAGES,
        open_stream: StreamOpener = open_tcp,
    ) -> None:
        self.store_id = store_id
        self._open_stream = open_stream
        self._max_batch = max_batch_messages
        # Stamped on every batch: the receivers tell a restart of this store
        # from a quiet spell by it (store_node.hibernate).
        self.incarnation = incarnation
        self._nursery = nursery
        self._resolve = resolve
        self._queue_size = queue_size
        self._rng = rng or random.Random()
        self._queues: dict[StoreId, trio.MemorySendChannel[list[RaftMessage]]] = {}
        # Each sender's connection, for `send`'s direct path.
        self._conns: dict[StoreId, ReconnectingConnection] = {}
        self.dropped = 0
        self.sent_frames = 0
        self.sent_messages = 0

    def send(self, store_id: StoreId, messages: list[RaftMessage], *, ping: bool = False) -> bool:
        """Send `messages` to `store_id`; True if they were handed to the
        connection now (rather than queued for the sender task).

        When the store's sender is idle and connected, the batch is encoded
        and written here: the round's messages are on their way before the
        loop does anything else (a leader's fsync, say), and skip a task
        switch. Otherwise the sender task coalesces and sends them. With
        `ping`, an empty batch goes too: this store's liveness signal.
        """
        if not messages and not ping:
            return True
        q = self._queues.get(store_id)
        if q is None:
            q, recv = trio.open_memory_channel[list[RaftMessage]](self._queue_size)
            self._queues[store_id] = q
            self._nursery.start_soon(self._run_sender, store_id, recv)
        stats = q.statistics()
        conn = self._conns.get(store_id)
        if (
            stats.current_buffer_used == 0
            and stats.tasks_waiting_receive
            and conn is not None
            and len(messages) <= self._max_batch
        ):
            live = conn.current
            if live is not None and live.try_send_oneway(
                RaftMessageBatch(self.store_id, tuple(messages), self.incarnation)
            ):
                self.sent_frames += 1
                self.sent_messages += len(messages)
                return True
        try:
            q.send_nowait(messages)
        except trio.WouldBlock:
            self.dropped += len(messages)
            log.debug("to store %d: queue full, %d messages dropped", store_id, len(messages))
        return False

    def close(self) -> None:
        for q in self._queues.values():
            q.close()

    async def _run_sender(
        self, store_id: StoreId, recv: trio.MemoryReceiveChannel[list[RaftMessage]]
    ) -> None:
        conn: ReconnectingConnection | None = None
        try:
            async for first in recv:
                msgs = list(first)
                while True:  # coalesce everything queued, into few frames
                    try:
                        msgs.extend(recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if conn is None:
                    address = await self._resolve(store_id)
                    if address is None:
                        self.dropped += len(msgs)
                        log.debug("store %d: address unknown, %d dropped", store_id, len(msgs))
                        continue
                    conn = ReconnectingConnection(
                        address,
                        self._nursery,
                        backoff=Backoff(initial=0.05, max_delay=2.0),
                        rng=random.Random(self._rng.getrandbits(32)),
                        connect_timeout=2.0,
                        open_stream=self._open_stream,
                    )
                    self._conns[store_id] = conn
                # An empty batch (a ping) is one frame too.
                for start in range(0, max(len(msgs), 1), self._max_batch):
                    batch = tuple(msgs[start : start + self._max_batch])
                    try:
                        await conn.send_oneway(
                            RaftMessageBatch(self.store_id, batch, self.incarnation)
                        )
                        self.sent_frames += 1
                        self.sent_messages += len(batch)
                    except RpcCallError as e:
                        lost = len(msgs) - start
                        self.dropped += lost
                        log.debug("to store %d: %s; %d messages dropped", store_id, e, lost)
                        if conn.failures >= 3:
                            # The store may have moved: look its address up again.
                            conn.close()
                            conn = None
                            del self._conns[store_id]
                        break
        finally:
            self._conns.pop(store_id, None)
            if conn is not None:
                conn.close()

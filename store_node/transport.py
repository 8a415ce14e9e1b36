"""Raft traffic to other stores: one connection and one sender per store.

`send` never blocks the store loop: a round's messages for a store join that
store's queue, and its sender task coalesces whatever is queued into
`RaftMessageBatch` frames of at most `MAX_BATCH_MESSAGES` messages (TiKV's
raft-msg-max-batch-size) and about `MAX_BATCH_BYTES` (one message at least):
a frame stays far inside the receiving server's decoding limits
(kvproto.rpc.server: items and decoded size per frame) and inside the frame
limit (64 MiB: a round's appends of large values to one store are more),
which would refuse it whole, and so every message to that store, again and
again. When the queue is full or the store cannot be reached, messages are
dropped: Raft recovers from loss by itself (probes, heartbeats, retries),
and a store loop that waited for a dead peer would stall every region. A
message that cannot be framed at all (over the frame limit, which the
store's write limits rule out) is dropped with an error logged.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import trio

from kvproto.codec import EncodeError
from kvproto.metapb import StoreId
from kvproto.raft_serverpb import RaftMessage, RaftMessageBatch
from kvproto.rpc import RpcCallError, StreamOpener, open_tcp
from kvproto.rpc.reconnect import Backoff, ReconnectingConnection
from plumbing.batches import chunks

log = logging.getLogger(__name__)

Resolver = Callable[[StoreId], Awaitable[str | None]]

# Messages per frame. A heartbeat is about 36 CBOR items and 50 bytes, so a
# frame of them is about 150,000 items and 200 KB, decoded in some 15 ms.
MAX_BATCH_MESSAGES: Final = 4096
# Bytes per frame (`message_size`), one message at least: a message is at
# most one entry of the largest write (kvproto.kvrpcpb.MAX_WRITE_BYTES, 49
# MiB) or `max_size_per_msg` of entries, so a frame stays under 64 MiB.
MAX_BATCH_BYTES: Final = 8 << 20
# Seconds before a store found without an address is looked up again.
UNRESOLVED_RETRY: Final = 5.0
# What a message costs on the wire besides its entries' data, generously.
_MESSAGE_OVERHEAD: Final = 512
_ENTRY_OVERHEAD: Final = 32


def message_size(m: RaftMessage) -> int:
    """About the bytes `m` takes in a frame (at least: its entries' data,
    context and snapshot descriptor, plus their framing)."""
    msg = m.message
    size = _MESSAGE_OVERHEAD + len(msg.context)
    for e in msg.entries:
        size += _ENTRY_OVERHEAD + len(e.data)
    if msg.snapshot is not None:
        size += len(msg.snapshot.data)
    return size


def frames(
    messages: Sequence[RaftMessage], max_messages: int, max_bytes: int
) -> list[tuple[RaftMessage, ...]]:
    """`messages` in order, cut into batches of at most `max_messages`
    messages and `max_bytes` (`message_size`), one message at least; no
    messages: one empty batch (a ping)."""
    batches = chunks(messages, max_messages, max_bytes, message_size)
    return [tuple(b) for b in batches] or [()]


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
        max_batch_bytes: int = MAX_BATCH_BYTES,
        open_stream: StreamOpener = open_tcp,
    ) -> None:
        self.store_id = store_id
        self._open_stream = open_stream
        self._max_batch = max_batch_messages
        self._max_batch_bytes = max_batch_bytes
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
            and (len(messages) <= 1 or sum(map(message_size, messages)) <= self._max_batch_bytes)
        ):
            live = conn.current
            batch = RaftMessageBatch(self.store_id, tuple(messages), self.incarnation)
            try:
                sent = live is not None and live.try_send_oneway(batch)
            except EncodeError as e:
                self._unsendable(store_id, len(messages), e)
                return False
            if sent:
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

    def _unsendable(self, store_id: StoreId, count: int, e: EncodeError) -> None:
        self.dropped += count
        log.error("to store %d: %d messages cannot be sent, dropped: %s", store_id, count, e)

    async def _run_sender(
        self, store_id: StoreId, recv: trio.MemoryReceiveChannel[list[RaftMessage]]
    ) -> None:
        conn: ReconnectingConnection | None = None
        # After a lookup found no address (a store the PD does not know, or
        # a tombstone whose peers are not removed yet), none before this:
        # a leader heartbeats such a store every round it stays a member.
        resolve_after = -math.inf
        try:
            async for first in recv:
                msgs = list(first)
                while True:  # coalesce everything queued, into few frames
                    try:
                        msgs.extend(recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if conn is None:
                    address = None
                    if trio.current_time() >= resolve_after:
                        address = await self._resolve(store_id)
                        if address is None:
                            resolve_after = trio.current_time() + UNRESOLVED_RETRY
                    if address is None:
                        self.dropped += len(msgs)
                        log.debug("store %d: no address, %d dropped", store_id, len(msgs))
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
                batches = frames(msgs, self._max_batch, self._max_batch_bytes)
                for i, batch in enumerate(batches):
                    try:
                        await conn.send_oneway(
                            RaftMessageBatch(self.store_id, batch, self.incarnation)
                        )
                        self.sent_frames += 1
                        self.sent_messages += len(batch)
                    except EncodeError as e:
                        self._unsendable(store_id, len(batch), e)
                    except RpcCallError as e:
                        lost = sum(map(len, batches[i:]))
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

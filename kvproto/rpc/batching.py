"""Batched frames: what one side of a connection makes ready in one
scheduler turn leaves in one frame (TiKV's BatchCommands).

A lone envelope (nothing else of the connection waiting for an answer, or an
answer with no other request in progress) is framed and written at once:
the latency path, no wait for a turn. Otherwise it joins the connection's
open batch, and the batcher task, woken by the first envelope of the batch,
sends the whole batch as one BATCH envelope when it next runs; under trio
that is after every task runnable now has run, so the requests that one
answer frame woke, or the answers of one store round, leave together. That
costs one write (and on the other side one read, one decode and one
wake-up) per batch instead of one per envelope: a client with 64 calls in
flight spent a seventh of its time in `os.write` before.

A batch of `MAX_BATCH` envelopes leaves at once. Order is kept: while a
batch is open every envelope joins it, and a batch is handed to the
`FrameWriter` (which keeps queue order) before anything sent after it.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

import trio

from kvproto.codec import EncodeError
from kvproto.frame import FrameWriter, encode_frame
from kvproto.rpc.envelope import FrameKind

__all__ = ["MAX_BATCH", "EnvelopeBatcher", "Sent", "array_header"]

# A batch this long leaves at once rather than at the turn's end, so the
# other side starts on it while this side makes the rest ready: with one
# batch per turn, a client and a store answering each other's whole batches
# took turns on the CPU instead of working side by side.
MAX_BATCH: Final = 32
# [BATCH, 0, <array of n>]: the outer array header and its two small ints.
_BATCH_PREFIX: Final = bytes([0x83, int(FrameKind.BATCH), 0x00])
# Room for _BATCH_PREFIX and the longest inner array header.
_BATCH_OVERHEAD: Final = len(_BATCH_PREFIX) + 9


def array_header(n: int) -> bytes:
    """The CBOR head of a definite-length array of `n` items (major type 4):
    the items' encodings simply follow it."""
    if n < 24:
        return bytes([0x80 | n])
    if n < 0x100:
        return bytes([0x98, n])
    if n < 0x10000:
        return b"\x99" + struct.pack(">H", n)
    if n < 0x100000000:
        return b"\x9a" + struct.pack(">I", n)
    return b"\x9b" + struct.pack(">Q", n)


class Sent(Protocol):
    """Told the writer's sequence number of the frame that carried its
    envelope (see `FrameWriter`: sent iff ``seq <= attempted``)."""

    seq: int


class EnvelopeBatcher:
    """Gathers one connection's envelopes into frames; see the module doc.

    The owner runs `run()` in the connection's nursery, and calls `flush()`
    before waiting for its writer to drain at a clean close.
    """

    __slots__ = ("_items", "_max_frame_size", "_tickets", "_wake", "_writer", "batches")

    def __init__(self, writer: FrameWriter, max_frame_size: int) -> None:
        self._writer = writer
        self._max_frame_size = max_frame_size
        self._items: list[bytes] = []
        self._tickets: list[Sent | None] = []
        self._wake = trio.Event()
        # Frames that carried more than one envelope (tests, counters).
        self.batches = 0

    def send(self, envelope: bytes, *, lone: bool, ticket: Sent | None = None) -> None:
        """Send one encoded envelope (`encode_inner`): now in its own frame if
        `lone` and no batch is open, else with this turn's batch.

        Raises EncodeError if it cannot fit a frame, and (sent now only)
        trio.BrokenResourceError if the stream failed; a batched envelope
        whose stream fails is simply never sent (its ticket keeps seq 0).
        """
        if lone and not self._items:
            seq = self._writer.send_nowait(encode_frame(envelope, self._max_frame_size))
            if ticket is not None:
                ticket.seq = seq
            return
        if len(envelope) + _BATCH_OVERHEAD > self._max_frame_size:
            raise EncodeError(
                f"envelope of {len(envelope)} bytes exceeds the frame limit {self._max_frame_size}"
            )
        if not self._items:
            self._wake.set()
        self._items.append(envelope)
        self._tickets.append(ticket)
        if len(self._items) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        """Hand the open batch to the writer now: as few frames as the frame
        limit allows, one plain frame for a batch of one."""
        items, tickets = self._items, self._tickets
        if not items:
            return
        self._items, self._tickets = [], []
        start = 0
        while start < len(items):
            end, size = start, 0
            while end < len(items) and size + len(items[end]) + _BATCH_OVERHEAD <= (
                self._max_frame_size
            ):
                size += len(items[end])
                end += 1
            end = max(end, start + 1)  # `send` made sure one always fits
            if end - start == 1:
                body = items[start]
            else:
                body = b"".join((_BATCH_PREFIX, array_header(end - start), *items[start:end]))
                self.batches += 1
            try:
                seq = self._writer.send_nowait(encode_frame(body, self._max_frame_size))
            except trio.BrokenResourceError:
                return  # the connection is ending; its owner fails what waits
            for ticket in tickets[start:end]:
                if ticket is not None:
                    ticket.seq = seq
            start = end

    async def run(self) -> None:
        """The batcher task: flushes each batch on the turn after it opened."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self.flush()

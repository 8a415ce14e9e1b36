"""Framing: a 4-byte big-endian body length, then the body (one CBOR item).

`FrameWriter` coalesces frames queued by many tasks into few writes.
`FrameReader` turns a trio byte stream into frames. It keeps one bytearray
buffer and, after every `receive_some`, splits off every complete frame in
it, so each byte is copied a bounded number of times whatever the frame and
chunk sizes (never quadratic in a frame's size). A length over the limit is
refused as soon as its 4 bytes arrive, before any of the body is read.

Limits for a server facing peers it does not trust (`RpcServer` sets both):

* `frame_timeout`: a frame whose first byte arrived must be complete within
  that many seconds of waiting for the peer (and for budget, below), else
  `FrameLimitError`. Time between frames never counts (connections idle as
  long as they like), nor time the owner spends not reading (its own
  backpressure). It also bounds a slow sender: at 30 s, a 64 MiB frame
  needs 2.2 MB/s.
* `first_frame_deadline`: the first frame must begin (its first byte
  arrive) by then, else `FrameStartTimeout`; from its first byte on,
  `frame_timeout` bounds it like any other (a large first frame on a slow
  link is not cut for being first).
* `budget`, a `FrameBudget` shared by the readers of one server: a frame
  larger than `LARGE_FRAME` reserves its whole size from it once its
  length is known and before its body is read, and holds it until the
  reader is asked for the frame after it (so a frame being decoded still
  counts). A reader that cannot reserve waits, reading nothing (TCP
  pushes back on its peer), first come first served, until the frame's
  time runs out. Smaller frames never wait: they arrive in the reader's
  normal 64 KiB reads, so what a connection buffers outside the budget is
  at most about 128 KiB (a read's worth of small frames, and the start of
  a large one).
"""

from __future__ import annotations

import os
import struct
from collections import deque
from typing import Final

import trio

from kvproto.codec import DecodeError, EncodeError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "LARGE_FRAME",
    "FrameBudget",
    "FrameError",
    "FrameLimitError",
    "FrameReader",
    "FrameStartTimeout",
    "FrameWriter",
    "encode_frame",
]

DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
HEADER_SIZE: Final = 4
_HEADER: Final = struct.Struct(">I")
# Bytes asked of the stream per receive_some while no large frame is pending.
_RECEIVE_SIZE: Final = 64 * 1024
# Upper bound per receive_some when a large frame's body is still missing:
# bigger reads cut syscalls, but trio allocates the whole size up front.
_MAX_RECEIVE_SIZE: Final = 1024 * 1024
# Frames with a larger body reserve their size from a reader's budget.
LARGE_FRAME: Final = _RECEIVE_SIZE
_LARGE_NEED: Final = HEADER_SIZE + LARGE_FRAME


class FrameError(DecodeError):
    """The byte stream is not a valid sequence of frames (oversized length,
    connection closed inside a frame)."""


class FrameLimitError(FrameError):
    """A frame refused for a limit of the reader, not for its bytes: not
    complete within the frame timeout (a stalled or too slow peer)."""


class FrameStartTimeout(FrameLimitError):
    """No frame begun by the reader's `first_frame_deadline` (a connection
    opened and left silent)."""


class FrameBudget:
    """Bytes shared by the connections of one server, reserved and given
    back: what the large frames being received hold (and, each, until the
    frame after it is asked for) across every reader sharing it, bounding
    what its connections buffer together; an `RpcServer` keeps a second one
    for the decoded size of large frames (kvproto.rpc.limits).

    `acquire` waits first come first served: a large reservation at the
    head is not overtaken by smaller ones behind it. Not thread-safe (one
    trio run).
    """

    __slots__ = ("_waiters", "limit", "used")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"a frame budget must be positive, got {limit}")
        self.limit = limit
        self.used = 0
        self._waiters: deque[_BudgetWaiter] = deque()

    @property
    def waiting(self) -> int:
        """Readers waiting for budget now."""
        return len(self._waiters)

    async def acquire(self, n: int) -> None:
        """Reserve `n` bytes, waiting until they are free (ValueError if `n`
        exceeds the whole budget: it would wait forever)."""
        if n > self.limit:
            raise ValueError(f"{n} bytes exceed the whole budget of {self.limit}")
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            return
        waiter = _BudgetWaiter(n)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release(n)  # granted as it was cancelled
            else:
                self._waiters.remove(waiter)
                self._grant()  # it may have held back those behind it
            raise

    def release(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "released more than was acquired"
        self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self.used + waiters[0].n <= self.limit:
            waiter = waiters.popleft()
            self.used += waiter.n
            waiter.granted = True
            waiter.event.set()


class _BudgetWaiter:
    __slots__ = ("event", "granted", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = trio.Event()
        self.granted = False


def encode_frame(body: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The frame carrying `body`; EncodeError if it exceeds `max_frame_size`."""
    if len(body) > max_frame_size:
        raise EncodeError(f"frame body of {len(body)} bytes exceeds the limit {max_frame_size}")
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Reads frames from `stream`, in order.

    `receive_frame()` returns the next frame's body, or None at a clean end
    of stream (EOF exactly between two frames). It raises FrameError on an
    announced length over `max_frame_size` (once the frames before it were
    returned, and without reading any further) and on EOF inside a frame,
    and FrameLimitError when a frame is not complete within `frame_timeout`
    or the first has not begun by `first_frame_deadline` (see the module
    doc, with `budget`); stream errors
    (trio.BrokenResourceError...) propagate unchanged. Not safe for
    concurrent use by two tasks. The owner of a reader with a budget calls
    `release()` when done with it.
    """

    __slots__ = (
        "_budget",
        "_buffer",
        "_eof",
        "_error",
        "_first_deadline",
        "_frame_timeout",
        "_frames",
        "_held",
        "_held_done",
        "_max_frame_size",
        "_need",
        "_stream",
        "_waited",
    )

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        *,
        frame_timeout: float | None = None,
        budget: FrameBudget | None = None,
        first_frame_deadline: float | None = None,
    ) -> None:
        if budget is not None and budget.limit < HEADER_SIZE + max_frame_size:
            raise ValueError(
                f"a frame budget of {budget.limit} bytes cannot hold a frame of the "
                f"largest size {max_frame_size}"
            )
        self._stream = stream
        self._max_frame_size = max_frame_size
        self._frame_timeout = frame_timeout
        self._first_deadline = first_frame_deadline
        self._budget = budget
        self._buffer = bytearray()
        self._frames: deque[bytes] = deque()
        # Bytes the buffer must hold before the next frame can be split off.
        self._need = HEADER_SIZE
        self._eof = False
        # Raised once the frames before the bad header have been returned.
        self._error: FrameError | None = None
        # Seconds spent waiting for the rest of the frame in progress.
        self._waited = 0.0
        # Budget reserved for the frame in progress (or the last returned).
        self._held = 0
        # The frame `_held` is for was split off: release at the next call.
        self._held_done = False

    async def receive_frame(self) -> bytes | None:
        if self._held_done:
            self.release()
        while not self._frames:
            if self._error is not None:
                raise self._error
            if self._eof:
                return None
            want = min(max(self._need - len(self._buffer), _RECEIVE_SIZE), _MAX_RECEIVE_SIZE)
            chunk: bytes | bytearray
            if self._buffer:
                chunk = await self._receive_rest(want)
            elif self._first_deadline is not None:
                chunk = await self._receive_first(want)
            else:
                chunk = await self._stream.receive_some(want)
            if not chunk:
                self._eof = True
                if self._buffer:
                    raise FrameError(
                        f"connection closed inside a frame ({len(self._buffer)} bytes of "
                        f"{self._need} received)"
                    )
                return None
            self._buffer += chunk
            self._split()
        return self._frames.popleft()

    def release(self) -> None:
        """Give back the budget held for the frame in progress or the last
        one returned."""
        if self._held and self._budget is not None:
            self._budget.release(self._held)
        self._held = 0
        self._held_done = False

    async def _receive_first(self, want: int) -> bytes | bytearray:
        assert self._first_deadline is not None
        with trio.move_on_at(self._first_deadline):
            chunk = await self._stream.receive_some(want)
            self._first_deadline = None
            return chunk
        raise FrameStartTimeout("no frame begun in the time a new connection has")

    async def _receive_rest(self, want: int) -> bytes | bytearray:
        """The next chunk of a frame already begun, under its timeout, once
        a large frame has its budget."""
        timeout = self._frame_timeout
        if timeout is None:
            await self._reserve_if_large()
            return await self._stream.receive_some(want)
        start = trio.current_time()
        waiting_for_budget = True
        with trio.move_on_after(timeout - self._waited) as scope:
            await self._reserve_if_large()
            waiting_for_budget = False
            chunk = await self._stream.receive_some(want)
        self._waited += trio.current_time() - start
        if scope.cancelled_caught:
            if waiting_for_budget:
                why = (
                    f"no budget freed for its {self._need} bytes (large frames of other "
                    "connections hold it)"
                )
            else:
                why = f"{len(self._buffer)} of its {self._need} bytes received"
            raise FrameLimitError(f"frame not complete within {timeout:g} s: {why}")
        return chunk

    async def _reserve_if_large(self) -> None:
        if self._budget is not None and not self._held and self._need > _LARGE_NEED:
            need = self._need
            await self._budget.acquire(need)
            self._held = need

    def __aiter__(self) -> FrameReader:
        return self

    async def __anext__(self) -> bytes:
        frame = await self.receive_frame()
        if frame is None:
            raise StopAsyncIteration
        return frame

    def _split(self) -> None:
        buf = self._buffer
        end = len(buf)
        if end < self._need:
            return
        pos = 0
        # One copy per frame body (a bytearray slice would make two); the view
        # is released before the buffer is resized below.
        with memoryview(buf) as view:
            while end - pos >= HEADER_SIZE:
                (size,) = _HEADER.unpack_from(buf, pos)
                if size > self._max_frame_size:
                    self._error = FrameError(
                        f"frame of {size} bytes exceeds the limit {self._max_frame_size}"
                    )
                    break
                if end - pos - HEADER_SIZE < size:
                    self._need = HEADER_SIZE + size
                    break
                body_at = pos + HEADER_SIZE
                self._frames.append(bytes(view[body_at : body_at + size]))
                pos = body_at + size
            else:
                self._need = HEADER_SIZE
        if pos:
            # A frame was completed: what follows is a new frame, with its
            # own time; a reservation was the completed frame's (the first).
            self._waited = 0.0
            self._held_done = self._held > 0
        # Deleting a prefix of a bytearray is O(1) in CPython (it moves the
        # start pointer), so a large frame arriving in small chunks stays linear.
        del buf[:pos]


class FrameWriter:
    """Sends frames queued by any number of tasks through one writer task.

    `send_nowait` queues a frame and returns at once; `run()` (the one task
    that writes to the stream) sends everything queued since its last write
    in one `send_all`, so frames from many tasks are coalesced. Frames go out
    in queue order. A caller's cancellation never interrupts a write half
    way (only the writer task writes), so the stream never carries a torn
    frame unless the connection itself dies.

    Sequence numbers tell a caller whether its frame may have left: frame
    `seq` was handed to the stream iff ``seq <= attempted``.
    """

    __slots__ = (
        "_high_water",
        "_pending",
        "_pending_bytes",
        "_queued",
        "_sending",
        "_stream",
        "_wake_senders",
        "_wake_writer",
        "attempted",
        "error",
    )

    def __init__(self, stream: trio.abc.SendStream, *, high_water: int = 4 * 1024 * 1024) -> None:
        self._stream = stream
        self._high_water = high_water
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._queued = 0
        self._sending = False
        self._wake_writer = trio.Event()
        # Set whenever the queue drains below high water, the writer goes
        # idle, or the stream fails; waiters re-check their condition.
        self._wake_senders = trio.Event()
        self.attempted = 0
        # The exception that ended the stream (BrokenResourceError...), if any.
        self.error: BaseException | None = None

    def send_nowait(self, frame: bytes) -> int:
        """Queue one encoded frame; returns its sequence number (from 1).

        When the writer is idle and the stream is a socket, the frame is
        written at once: a lone request or answer then leaves without
        waiting for the writer task's turn (on a busy store loop that turn
        comes late). What the socket does not take now, the writer sends.

        Raises trio.BrokenResourceError if the stream already failed.
        """
        if self.error is not None:
            raise trio.BrokenResourceError("the stream failed earlier") from self.error
        self._queued += 1
        if not self._pending and not self._sending:
            sent = self._write_now(frame)
            if sent == len(frame):
                return self._queued
            if sent:
                frame = frame[sent:]
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        self._wake_writer.set()
        return self._queued

    def _write_now(self, frame: bytes) -> int:
        """Bytes of `frame` the socket took without blocking (0: none, or
        not a socket). Errors are left to the writer task, which meets them
        again on its next write and ends the stream the usual way."""
        stream = self._stream
        if not isinstance(stream, trio.SocketStream):
            return 0
        # Checked at every write: a closed socket's number may already
        # belong to another file.
        fd = stream.socket.fileno()
        if fd < 0:
            return 0
        self.attempted = self._queued
        try:
            return os.write(fd, frame)
        except OSError:  # BlockingIOError (buffer full), or the peer is gone
            return 0

    @property
    def writable(self) -> bool:
        """Whether `wait_writable` would return at once."""
        return self._pending_bytes <= self._high_water or self.error is not None

    async def wait_writable(self) -> None:
        """Backpressure: wait while more than `high_water` bytes are queued.
        Returns at once if the stream failed (the next send_nowait raises)."""
        while self._pending_bytes > self._high_water and self.error is None:
            await self._wake_senders.wait()

    async def wait_flushed(self) -> None:
        """Wait until every queued frame was handed to the stream (or it failed)."""
        while (self._pending or self._sending) and self.error is None:
            await self._wake_senders.wait()

    async def run(self) -> None:
        """The writer task. Returns when the stream fails; otherwise runs
        until cancelled. Either way `error` is set when it ends, so that
        senders stop queueing and waiters wake."""
        try:
            while True:
                await self._wake_writer.wait()
                self._wake_writer = trio.Event()
                if not self._pending:
                    continue
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
                self.attempted = self._queued
                self._sending = True
                await self._stream.send_all(batch[0] if len(batch) == 1 else b"".join(batch))
                self._sending = False
                self._notify_senders()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self.error = e
        finally:
            if self.error is None:
                self.error = trio.ClosedResourceError("the frame writer stopped")
            self._sending = False
            self._notify_senders()

    def _notify_senders(self) -> None:
        self._wake_senders.set()
        self._wake_senders = trio.Event()

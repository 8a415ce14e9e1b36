"""The client side of RPC: a connection on which many calls may be in flight.

A connection is one way round: the side that connected sends requests and
one-way messages (`RpcConnection.call`, `send_oneway`), the other answers
(kvproto.rpc.server). Answers are matched to calls by request id, so calls
are pipelined and answered in any order. Timeouts are the caller's. Errors
are those of kvproto.rpc.errors; a malformed frame from the server closes
the connection with a logged reason, and the calls in flight fail.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from kvproto.codec import DecodeError, from_wire
from kvproto.frame import DEFAULT_MAX_FRAME_SIZE, FrameReader, FrameWriter
from kvproto.rpc.batching import EnvelopeBatcher
from kvproto.rpc.envelope import FrameKind, RpcError, decode_envelopes, encode_inner
from kvproto.rpc.errors import (
    RpcCallError,
    RpcConnectionLostError,
    RpcProtocolError,
    RpcRemoteError,
    RpcTimeoutError,
    RpcUnavailableError,
)
from plumbing.nursery import open_background_nursery

__all__ = [
    "RpcConnection",
    "StreamOpener",
    "connect",
    "open_connection_stream",
    "open_tcp",
    "parse_address",
    "tcp_opener",
]

logger = logging.getLogger(__name__)


class StreamOpener(Protocol):
    """Opens a byte stream to an address ("host:port"); raises OSError (or
    any trio.BrokenResourceError) when it cannot."""

    def __call__(self, address: str) -> Awaitable[trio.abc.Stream]: ...


def parse_address(address: str, *, listen: bool = False) -> tuple[str, int]:
    """ "host:port" or "[v6host]:port" -> (host, port); ValueError if malformed.
    An address to listen on may have port 0 (any free port)."""
    host, sep, port = address.rpartition(":")
    lowest = 0 if listen else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"bad address {address!r}, expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


async def open_tcp(address: str) -> trio.abc.Stream:
    """The default StreamOpener: TCP (trio sets TCP_NODELAY)."""
    host, port = parse_address(address)
    return await trio.open_tcp_stream(host, port)


def tcp_opener(source_host: str | None = None) -> StreamOpener:
    """TCP from `source_host` (None: the system picks, as `open_tcp`). A
    member with an address of its own sends from it, so that a firewall
    rule (or a peer's log) can tell members on one machine apart."""
    if source_host is None:
        return open_tcp

    async def open_from(address: str) -> trio.abc.Stream:
        host, port = parse_address(address)
        return await trio.open_tcp_stream(host, port, local_address=source_host)

    return open_from


@dataclass(slots=True)
class _PendingCall:
    done: trio.Event
    seq: int = 0
    response: object = None
    error: RpcCallError | None = None


class RpcConnection:
    """The client side of one RPC connection; many calls may be in flight.

    The owner runs `run()` in a nursery for the connection's lifetime
    (`connect` does this). Calls made after the connection closed raise
    RpcUnavailableError.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: str = "?",
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.peer = peer
        self._stream = stream
        self._writer = FrameWriter(stream)
        self._batcher = EnvelopeBatcher(self._writer, max_frame_size)
        self._reader = FrameReader(stream, max_frame_size)
        self._calls: dict[int, _PendingCall] = {}
        self._ids = itertools.count(1)
        self._scope = trio.CancelScope()
        self._closed = trio.Event()
        self._close_reason: str | None = None
        self._started = False

    @property
    def batches_sent(self) -> int:
        """Frames that carried more than one request or message."""
        return self._batcher.batches

    @property
    def is_closed(self) -> bool:
        return self._close_reason is not None

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def run(self) -> None:
        """Read answers and write frames until the connection closes (peer
        gone, malformed frame, `aclose`). Never raises but Cancelled."""
        if self._started:
            raise RuntimeError("RpcConnection.run() called twice")
        self._started = True
        reason = "closed"
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._run_writer, nursery.cancel_scope)
                    nursery.start_soon(self._batcher.run)
                    reason = await self._read_answers()
                    nursery.cancel_scope.cancel()
        finally:
            self._shut(reason)
            await trio.aclose_forcefully(self._stream)

    def close(self) -> None:
        """Start closing: calls in flight fail; `run()` returns soon."""
        self._close_reason = self._close_reason or "closed by the client"
        self._scope.cancel()
        if not self._started:
            self._shut(self._close_reason)

    async def aclose(self) -> None:
        """Close and wait until `run()` has finished (if it ever started)."""
        self.close()
        if self._started:
            await self._closed.wait()

    # A timeout parameter rather than the caller's own cancel scope, because
    # its expiry must become a typed RpcTimeoutError (outcome unknown) that
    # retry logic can tell apart from cancellation.
    async def call(self, request: object, *, timeout: float | None = None) -> object:  # noqa: ASYNC109
        """Send `request` and return the server's answer.

        `timeout` (seconds, trio clock) bounds the whole call. Raises the
        RpcCallError subclasses described in the module docstring; EncodeError
        if `request` is not a registered message or is too large.
        """
        if self._close_reason is not None:
            raise RpcUnavailableError(f"{self.peer}: connection closed ({self._close_reason})")
        request_id = next(self._ids)
        envelope = encode_inner(FrameKind.REQUEST, request_id, request)
        slot = _PendingCall(trio.Event())
        # A call with none other in flight goes out now; others wait for the
        # turn's batch (kvproto.rpc.batching).
        lone = not self._calls
        self._calls[request_id] = slot
        try:
            self._batcher.send(envelope, lone=lone, ticket=slot)
            if timeout is None:
                await self._writer.wait_writable()
                await slot.done.wait()
            else:
                with trio.move_on_after(timeout):
                    await self._writer.wait_writable()
                    await slot.done.wait()
        except trio.BrokenResourceError:
            raise RpcUnavailableError(f"{self.peer}: connection broken") from None
        finally:
            del self._calls[request_id]
        if not slot.done.is_set():
            raise RpcTimeoutError(f"{self.peer}: no answer within {timeout} s")
        if slot.error is not None:
            raise slot.error
        return slot.response

    async def send_oneway(self, msg: object) -> None:
        """Queue a one-way message; returns once queued (and the send queue is
        below its high-water mark). Delivery is not confirmed: a message
        queued just before the connection dies is lost.

        Raises RpcUnavailableError if the connection is closed; EncodeError
        if `msg` is not a registered message or is too large.
        """
        if self._close_reason is not None:
            raise RpcUnavailableError(f"{self.peer}: connection closed ({self._close_reason})")
        envelope = encode_inner(FrameKind.ONEWAY, 0, msg)
        try:
            self._batcher.send(envelope, lone=True)
        except trio.BrokenResourceError:
            raise RpcUnavailableError(f"{self.peer}: connection broken") from None
        await self._writer.wait_writable()

    def try_send_oneway(self, msg: object) -> bool:
        """`send_oneway` without waiting: False (nothing queued) if the
        connection is closed or its send queue is above high water.

        Raises EncodeError as `send_oneway` does.
        """
        if self._close_reason is not None or not self._writer.writable:
            return False
        envelope = encode_inner(FrameKind.ONEWAY, 0, msg)
        try:
            self._batcher.send(envelope, lone=True)
        except trio.BrokenResourceError:
            return False
        return True

    async def _run_writer(self, scope: trio.CancelScope) -> None:
        await self._writer.run()
        # The stream failed under the writer: the connection is over.
        self._close_reason = self._close_reason or f"send failed: {self._writer.error!r}"
        scope.cancel()

    async def _read_answers(self) -> str:
        """Match answers to calls until the connection ends; returns why."""
        try:
            while True:
                frame = await self._reader.receive_frame()
                if frame is None:
                    return "closed by the server"
                for kind, request_id, body in decode_envelopes(frame):
                    if kind not in (FrameKind.RESPONSE, FrameKind.ERROR):
                        raise DecodeError(f"a server sent a {kind.name} frame")
                    slot = self._calls.get(request_id)
                    if slot is None:
                        # The caller timed out or was cancelled; or a server bug.
                        logger.debug(
                            "%s: answer to request %d nobody waits for", self.peer, request_id
                        )
                        continue
                    self._settle(slot, kind, body)
        except DecodeError as e:
            logger.warning("%s: closing connection: malformed frame: %s", self.peer, e)
            return f"malformed frame: {e}"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            return f"receive failed: {e!r}"

    def _settle(self, slot: _PendingCall, kind: FrameKind, body: Any) -> None:
        try:
            if kind == FrameKind.RESPONSE:
                slot.response = from_wire(body)
            else:
                slot.error = RpcRemoteError(from_wire(body, RpcError))
        except DecodeError as e:
            slot.error = RpcProtocolError(f"{self.peer}: undecodable answer: {e}")
        slot.done.set()

    def _shut(self, reason: str) -> None:
        self._close_reason = self._close_reason or reason
        for slot in self._calls.values():
            if slot.done.is_set():
                continue
            if slot.seq == 0 or slot.seq > self._writer.attempted:
                slot.error = RpcUnavailableError(
                    f"{self.peer}: connection closed before the request was sent "
                    f"({self._close_reason})"
                )
            else:
                slot.error = RpcConnectionLostError(
                    f"{self.peer}: connection lost awaiting the answer ({self._close_reason})"
                )
            slot.done.set()
        self._closed.set()


@asynccontextmanager
async def connect(
    address: str,
    *,
    connect_timeout: float | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    open_stream: StreamOpener = open_tcp,
) -> AsyncIterator[RpcConnection]:
    """``async with connect("host:port") as conn``: one RPC connection,
    closed on exit. Raises RpcUnavailableError if it cannot connect."""
    stream = await open_connection_stream(address, open_stream, connect_timeout)
    conn = RpcConnection(stream, peer=address, max_frame_size=max_frame_size)
    async with open_background_nursery() as nursery:
        nursery.start_soon(conn.run)
        try:
            yield conn
        finally:
            conn.close()


async def open_connection_stream(
    address: str, open_stream: StreamOpener, connect_timeout: float | None
) -> trio.abc.Stream:
    """Open a stream to `address`; any failure is RpcUnavailableError."""
    with trio.move_on_after(float("inf") if connect_timeout is None else connect_timeout):
        try:
            return await open_stream(address)
        except (OSError, ValueError, trio.BrokenResourceError) as e:
            raise RpcUnavailableError(f"{address}: cannot connect: {e}") from e
    raise RpcUnavailableError(f"{address}: cannot connect within {connect_timeout} s")

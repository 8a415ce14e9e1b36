"""RPC over trio streams: pipelined requests matched by id, one-way messages.

Every frame on an RPC connection carries the CBOR array
``[kind, request_id, body]`` where `body` is a registered message (see
kvproto.codec):

* REQUEST  client -> server, ``request_id >= 1``, unique per connection;
* RESPONSE server -> client, the handler's answer to that request id;
* ERROR    server -> client, an `RpcError` instead of an answer;
* ONEWAY   client -> server, ``request_id == 0``, no answer.

A connection is one way round: the side that connected sends requests and
one-way messages, the other answers. Envelope-level messages use tags
60..79.

Ordering: one-way messages of one connection are handled one at a time in
arrival order (Raft traffic relies on it). Requests are handled
concurrently, up to a per-connection bound, and answered in completion
order. Nothing orders a request against a one-way message.

Errors a caller gets from `call`, by what it may do next:

* `RpcUnavailableError`: not connected, or the request never left this
  process: safe to retry anywhere.
* `RpcConnectionLostError`: the request may have been sent, the connection
  died before its answer: the outcome is unknown.
* `RpcTimeoutError`: the caller's timeout expired: the outcome is unknown.
* `RpcRemoteError`: the server answered an `RpcError` (`code` says whether
  the handler ran).
* `RpcProtocolError`: the answer could not be decoded.

All derive from `RpcCallError`, whose `may_have_executed` sums this up.
A malformed frame (bad length, bad CBOR, bad envelope) closes that
connection with a logged reason; nothing else is affected.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Protocol

import trio

from kvproto.codec import (
    DecodeError,
    EncodeError,
    decode_cbor,
    encode_cbor,
    from_wire,
    message_type,
    to_wire,
    wire,
)
from kvproto.frame import DEFAULT_MAX_FRAME_SIZE, FrameReader, FrameWriter, encode_frame

__all__ = [
    "Echo",
    "FrameKind",
    "Handler",
    "OnewayHandler",
    "RequestContext",
    "RpcCallError",
    "RpcConnection",
    "RpcConnectionLostError",
    "RpcError",
    "RpcErrorCode",
    "RpcProtocolError",
    "RpcRemoteError",
    "RpcServer",
    "RpcTimeoutError",
    "RpcUnavailableError",
    "StreamOpener",
    "connect",
    "echo_handler",
    "open_connection_stream",
    "open_tcp",
    "parse_address",
]

logger = logging.getLogger(__name__)

# Request ids and every other int on the wire fit CBOR's native 64 bits.
_MAX_ID: Final = 2**64 - 1


class FrameKind(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    ERROR = 2
    ONEWAY = 3


_KINDS: Final = {int(k): k for k in FrameKind}


class RpcErrorCode(IntEnum):
    # The server has no handler for this request type: nothing ran.
    UNKNOWN_MESSAGE = 1
    # The request's body did not decode as the message it claims to be:
    # nothing ran.
    BAD_REQUEST = 2
    # The handler raised, or its answer could not be encoded: it may have
    # done part of its work.
    INTERNAL = 3


@wire(60)
@dataclass(frozen=True, slots=True)
class RpcError:
    """The body of an ERROR frame."""

    code: RpcErrorCode
    message: str


@wire(61)
@dataclass(frozen=True, slots=True)
class Echo:
    """A request answered with itself by servers that register
    `echo_handler`; used by tests and benchmarks."""

    payload: bytes


async def echo_handler(request: Echo, ctx: RequestContext) -> Echo:
    return request


# --------------------------------------------------------------------------
# Exceptions raised to callers.


class RpcCallError(Exception):
    """Base of the errors `call` and `send_oneway` raise."""

    # Whether the server may have run (part of) the request.
    may_have_executed: bool = True


class RpcUnavailableError(RpcCallError):
    """Not connected, or the request never left this process."""

    may_have_executed = False


class RpcConnectionLostError(RpcCallError):
    """The connection died after the request may have been sent."""


class RpcTimeoutError(RpcCallError):
    """The caller's timeout expired before the answer arrived."""


class RpcProtocolError(RpcCallError):
    """The server's answer to this request could not be decoded."""


class RpcRemoteError(RpcCallError):
    """The server answered an RpcError."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(f"{error.code.name}: {error.message}")
        self.error = error
        self.may_have_executed = error.code == RpcErrorCode.INTERNAL

    @property
    def code(self) -> RpcErrorCode:
        return self.error.code


# --------------------------------------------------------------------------
# Envelope.


def _encode_envelope(kind: FrameKind, request_id: int, msg: object, max_frame_size: int) -> bytes:
    return encode_frame(encode_cbor([kind, request_id, to_wire(msg)]), max_frame_size)


def _decode_envelope(frame: bytes) -> tuple[FrameKind, int, Any]:
    """The kind, request id and (undecoded) body of a frame; DecodeError if
    the envelope is malformed."""
    obj = decode_cbor(frame)
    if type(obj) is not list or len(obj) != 3:
        raise DecodeError("envelope is not an array of 3")
    raw_kind, request_id, body = obj
    kind = _KINDS.get(raw_kind) if type(raw_kind) is int else None
    if kind is None:
        raise DecodeError(f"unknown frame kind {raw_kind!r}")
    if type(request_id) is not int or not 0 <= request_id <= _MAX_ID:
        raise DecodeError(f"bad request id {request_id!r}")
    if (request_id == 0) != (kind == FrameKind.ONEWAY):
        raise DecodeError(f"request id {request_id} is not valid for {kind.name}")
    return kind, request_id, body


# --------------------------------------------------------------------------
# Client.


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
        self._max_frame_size = max_frame_size
        self._writer = FrameWriter(stream)
        self._reader = FrameReader(stream, max_frame_size)
        self._calls: dict[int, _PendingCall] = {}
        self._ids = itertools.count(1)
        self._scope = trio.CancelScope()
        self._closed = trio.Event()
        self._close_reason: str | None = None
        self._started = False

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
        frame = _encode_envelope(FrameKind.REQUEST, request_id, request, self._max_frame_size)
        slot = _PendingCall(trio.Event())
        self._calls[request_id] = slot
        try:
            slot.seq = self._writer.send_nowait(frame)
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
        frame = _encode_envelope(FrameKind.ONEWAY, 0, msg, self._max_frame_size)
        try:
            self._writer.send_nowait(frame)
        except trio.BrokenResourceError:
            raise RpcUnavailableError(f"{self.peer}: connection broken") from None
        await self._writer.wait_writable()

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
                kind, request_id, body = _decode_envelope(frame)
                if kind not in (FrameKind.RESPONSE, FrameKind.ERROR):
                    raise DecodeError(f"a server sent a {kind.name} frame")
                slot = self._calls.get(request_id)
                if slot is None:
                    # The caller timed out or was cancelled; or a server bug.
                    logger.debug("%s: answer to request %d nobody waits for", self.peer, request_id)
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
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        try:
            yield conn
        except Exception as e:
            # Raised again below, outside the nursery, so the caller sees the
            # exception itself rather than an ExceptionGroup around it.
            body_error = e
        finally:
            conn.close()
    if body_error is not None:
        raise body_error


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


# --------------------------------------------------------------------------
# Server.


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler knows about where a message came from."""

    peer: str
    connection_id: int
    request_id: int  # 0 for one-way messages


Handler = Callable[[Any, RequestContext], Awaitable[object]]
OnewayHandler = Callable[[Any, RequestContext], Awaitable[None]]
# Called once with the response (or an exception to answer as INTERNAL).
Respond = Callable[[object], None]


@dataclass(frozen=True, slots=True)
class Deferred:
    """A request handler that answers through a callback instead of a task:
    ``fn(request, ctx, respond)`` runs in the connection's reader task, must
    not block, and calls `respond(answer)` exactly once, now or later (from
    any task of the same trio run). For the hot paths of a server whose work
    completes elsewhere (a store's Raft loop): it costs no task, no event and
    no task switch per request. Requests it has not answered yet count
    against the connection's concurrency bound like running handlers.
    """

    fn: Callable[[Any, RequestContext, Respond], None]


class RpcServer:
    """Serves requests and one-way messages with async handlers.

    `handlers` maps a request type to ``async def handler(request, ctx) ->
    response``; `oneway_handlers` a one-way type to ``async def
    handler(msg, ctx) -> None``. A handler's exception is logged with its
    traceback and answered with RpcError(INTERNAL) (one-way: logged only).

    When a client closes its connection cleanly, its requests in progress
    finish and are answered. Handlers are cancelled when the server is, or
    when their connection breaks or is dropped for a malformed frame; they
    must tolerate that.
    """

    def __init__(
        self,
        handlers: Mapping[type, Handler | Deferred] | None = None,
        oneway_handlers: Mapping[type, OnewayHandler] | None = None,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_concurrent_requests: int = 128,
        max_queued_oneway: int = 1024,
    ) -> None:
        self._handlers = dict(handlers or {})
        self._oneway_handlers = dict(oneway_handlers or {})
        self.max_frame_size = max_frame_size
        self.max_concurrent_requests = max_concurrent_requests
        self.max_queued_oneway = max_queued_oneway
        self._connection_ids = itertools.count(1)
        self.open_connections = 0

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on (host, port) and serve connections until cancelled.

        Reports the bound ``(host, port)`` through `task_status` (port 0 picks
        a free port). A connection's failure never ends the server.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            bound_host, bound_port = listeners[0].socket.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                task_status.started((bound_host, bound_port))
                await trio.serve_listeners(self._serve_socket, listeners, handler_nursery=nursery)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _serve_socket(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        await self.handle_connection(stream, peer)

    async def handle_connection(self, stream: trio.abc.Stream, peer: str = "?") -> None:
        """Serve one already-open connection until it ends; closes `stream`.
        Never raises but Cancelled (usable with in-memory streams in tests)."""
        conn = _ServerConnection(
            self._handlers, self._oneway_handlers, self, stream, peer, next(self._connection_ids)
        )
        self.open_connections += 1
        try:
            await conn.run()
        except Exception:
            # A bug in this module; the server and other connections go on.
            logger.exception("%s: connection crashed", peer)
        finally:
            self.open_connections -= 1
            await trio.aclose_forcefully(stream)


class _ServerConnection:
    """One accepted connection: a reader dispatching frames, request handler
    tasks in their own nursery, one task for one-way messages in order, and
    the frame writer."""

    def __init__(
        self,
        handlers: dict[type, Handler | Deferred],
        oneway_handlers: dict[type, OnewayHandler],
        server: RpcServer,
        stream: trio.abc.Stream,
        peer: str,
        conn_id: int,
    ) -> None:
        self._handlers = handlers
        self._oneway_handlers = oneway_handlers
        self._peer = peer
        self._id = conn_id
        self._max_frame_size = server.max_frame_size
        self._writer = FrameWriter(stream)
        self._reader = FrameReader(stream, server.max_frame_size)
        # Bounds the requests of this connection in progress; when all are
        # taken the reader stops reading, which pushes back through TCP.
        self._slots = trio.Semaphore(server.max_concurrent_requests)
        self._oneway_send, self._oneway_receive = trio.open_memory_channel[Any](
            server.max_queued_oneway
        )
        self._oneways_finished = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_writer, nursery.cancel_scope)
            nursery.start_soon(self._run_oneways)
            async with trio.open_nursery() as requests:
                clean_end = await self._read_frames(requests)
                if not clean_end:
                    requests.cancel_scope.cancel()
            if clean_end:
                # The client finished sending: finish its work and answer it.
                self._oneway_send.close()
                await self._oneways_finished.wait()
                await self._writer.wait_flushed()
            nursery.cancel_scope.cancel()

    async def _run_writer(self, scope: trio.CancelScope) -> None:
        await self._writer.run()
        logger.debug("%s: send failed, closing: %r", self._peer, self._writer.error)
        scope.cancel()

    async def _read_frames(self, requests: trio.Nursery) -> bool:
        """Dispatch frames until the client stops; True on a clean end of
        stream, False when the connection must be dropped."""
        try:
            while True:
                frame = await self._reader.receive_frame()
                if frame is None:
                    return True
                kind, request_id, body = _decode_envelope(frame)
                if kind == FrameKind.REQUEST:
                    await self._slots.acquire()
                    cls = message_type(body)
                    handler = None if cls is None else self._handlers.get(cls)
                    if isinstance(handler, Deferred):
                        self._dispatch_deferred(handler, request_id, body)
                    else:
                        requests.start_soon(self._handle_request, request_id, body)
                elif kind == FrameKind.ONEWAY:
                    await self._oneway_send.send(body)
                else:
                    raise DecodeError(f"a client sent a {kind.name} frame")
        except DecodeError as e:
            logger.warning("%s: closing connection: malformed frame: %s", self._peer, e)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            logger.debug("%s: connection lost: %r", self._peer, e)
        return False

    def _dispatch_deferred(self, handler: Deferred, request_id: int, body: Any) -> None:
        answered = False

        def respond(answer: object) -> None:
            nonlocal answered
            if answered:
                raise AssertionError(f"request {request_id} answered twice")
            answered = True
            self._slots.release()
            if isinstance(answer, BaseException):
                logger.error("%s: deferred handler failed", self._peer, exc_info=answer)
                frame = self._error_frame(
                    request_id,
                    RpcError(RpcErrorCode.INTERNAL, f"{type(answer).__name__}: {answer}"[:1000]),
                )
            else:
                frame = self._encode_answer(request_id, answer)
            # A full send queue is not waited for here: the bound on requests
            # in progress (the semaphore) already bounds what can pile up.
            with contextlib.suppress(trio.BrokenResourceError):
                self._writer.send_nowait(frame)

        try:
            request = from_wire(body)
        except DecodeError as e:
            logger.warning("%s: bad request %d: %s", self._peer, request_id, e)
            answered = True
            self._slots.release()
            with contextlib.suppress(trio.BrokenResourceError):
                self._writer.send_nowait(
                    self._error_frame(request_id, RpcError(RpcErrorCode.BAD_REQUEST, str(e)))
                )
            return
        try:
            handler.fn(request, RequestContext(self._peer, self._id, request_id), respond)
        except Exception as e:
            if not answered:
                respond(e)
            else:
                logger.exception("%s: deferred handler failed after answering", self._peer)

    def _encode_answer(self, request_id: int, response: object) -> bytes:
        try:
            return _encode_envelope(FrameKind.RESPONSE, request_id, response, self._max_frame_size)
        except EncodeError as e:
            logger.error("%s: cannot send an answer: %s", self._peer, e)
            error = RpcError(RpcErrorCode.INTERNAL, f"cannot encode the answer: {e}"[:1000])
            return self._error_frame(request_id, error)

    async def _handle_request(self, request_id: int, body: Any) -> None:
        try:
            answer = await self._answer(request_id, body)
            try:
                self._writer.send_nowait(answer)
            except trio.BrokenResourceError:
                return  # the connection is closing; nobody to answer
            await self._writer.wait_writable()
        finally:
            self._slots.release()

    async def _answer(self, request_id: int, body: Any) -> bytes:
        cls = message_type(body)
        handler = None if cls is None else self._handlers.get(cls)
        if handler is None:
            what = cls.__qualname__ if cls else "a message of unknown type"
            error = RpcError(RpcErrorCode.UNKNOWN_MESSAGE, f"no handler for {what}")
            return self._error_frame(request_id, error)
        try:
            request = from_wire(body)
        except DecodeError as e:
            logger.warning("%s: bad request %d: %s", self._peer, request_id, e)
            return self._error_frame(request_id, RpcError(RpcErrorCode.BAD_REQUEST, str(e)))
        name = type(request).__qualname__
        assert not isinstance(handler, Deferred)
        try:
            response = await handler(request, RequestContext(self._peer, self._id, request_id))
        except Exception as e:
            logger.exception("%s: handler for %s failed", self._peer, name)
            error = RpcError(RpcErrorCode.INTERNAL, f"{type(e).__name__}: {e}"[:1000])
            return self._error_frame(request_id, error)
        try:
            return _encode_envelope(FrameKind.RESPONSE, request_id, response, self._max_frame_size)
        except EncodeError as e:
            logger.error("%s: cannot send the answer to %s: %s", self._peer, name, e)
            error = RpcError(RpcErrorCode.INTERNAL, f"cannot encode the answer: {e}"[:1000])
            return self._error_frame(request_id, error)

    def _error_frame(self, request_id: int, error: RpcError) -> bytes:
        return _encode_envelope(FrameKind.ERROR, request_id, error, self._max_frame_size)

    async def _run_oneways(self) -> None:
        # One task, so one-way messages are handled one at a time in order.
        async with self._oneway_receive:
            async for body in self._oneway_receive:
                await self._handle_oneway(body)
        self._oneways_finished.set()

    async def _handle_oneway(self, body: Any) -> None:
        cls = message_type(body)
        handler = None if cls is None else self._oneway_handlers.get(cls)
        if handler is None:
            logger.warning(
                "%s: dropping one-way %s: no handler",
                self._peer,
                cls.__qualname__ if cls else "message of unknown type",
            )
            return
        try:
            msg = from_wire(body)
        except DecodeError as e:
            logger.warning("%s: dropping bad one-way message: %s", self._peer, e)
            return
        try:
            await handler(msg, RequestContext(self._peer, self._id, 0))
        except Exception:
            name = type(msg).__qualname__
            logger.exception("%s: one-way handler for %s failed", self._peer, name)

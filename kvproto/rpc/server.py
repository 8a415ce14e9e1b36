"""The server side of RPC: handlers for requests and one-way messages.

Ordering: one-way messages of one connection are handled one at a time in
arrival order (Raft traffic relies on it). Requests are handled
concurrently, up to a per-connection bound, and answered in completion
order. Nothing orders a request against a one-way message.

A malformed frame (bad length, bad CBOR, bad envelope) closes that
connection with a logged reason; nothing else is affected. A handler's
failure is answered with an `RpcError` (kvproto.rpc.envelope).

Limits (each an `RpcServer` argument), so that no peer can make the process
hold unbounded memory or stall its event loop:

* `max_frame_size` (64 MiB): a longer frame is refused from its length.
* `frame_timeout` (30 s): a frame begun must be complete within that much
  waiting, else the connection is closed; idle connections between frames
  are never cut (kvproto.frame).
* `max_buffered_bytes` (two frames of the largest size, 128 MiB): what the
  frames over 64 KiB of all connections hold together while received and
  decoded; a connection whose frame does not fit waits, reading nothing,
  until budget frees or its frame time runs out (then it is closed). Each
  connection also buffers up to about 128 KiB of small frames outside it.
* `max_connections` (1024): a connection beyond is closed at once; a burst
  of refusals is logged when it starts and when it ends, with its count.
* Decoding cost, for frames over `DECODE_CHECK_SIZE` (64 KiB): before
  decoding, `codec.cbor_cost` walks the frame, on the loop for its first
  16,384 items (a few ms: most large frames, values, snapshot chunks,
  appends, have a handful), in a worker thread beyond (at most two per
  server, the loop keeps running), and refuses it, closing the
  connection, if it has more than `max_frame_items` (2^20) items or would
  decode to more than `max_decode_ratio` (32) times its size in Python
  objects (an array of empty arrays is 65 times; the densest Raft traffic,
  batches of heartbeats, about 20). The decode itself then runs on the
  loop, bounded by those limits (about 0.1 s at 2^20 items). Smaller
  frames are decoded at once: at most 5 MB and a few ms each.
"""

from __future__ import annotations

import functools
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import trio

from kvproto.codec import (
    CostLimitError,
    DecodeError,
    EncodeError,
    cbor_cost,
    from_wire,
    message_type,
)
from kvproto.frame import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    FrameBudget,
    FrameLimitError,
    FrameReader,
    FrameWriter,
)
from kvproto.rpc.auth import AuthRefusedError, Role, ServerAuth, authenticate_server
from kvproto.rpc.batching import EnvelopeBatcher
from kvproto.rpc.envelope import (
    Echo,
    FrameKind,
    RpcError,
    RpcErrorCode,
    decode_envelopes,
    encode_inner,
)
from kvproto.rpc.tls import accept_tls, tls_role

__all__ = [
    "Deferred",
    "Handler",
    "OnewayHandler",
    "RequestContext",
    "Respond",
    "RpcServer",
    "echo_handler",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_FRAME_TIMEOUT: Final = 30.0
# Room for two frames of the largest size.
DEFAULT_MAX_BUFFERED_BYTES: Final = 2 * (HEADER_SIZE + DEFAULT_MAX_FRAME_SIZE)
DEFAULT_MAX_FRAME_ITEMS: Final = 1 << 20
DEFAULT_MAX_DECODE_RATIO: Final = 32.0
# Frames up to this size are decoded without a cost check: at most 64 Ki
# items, about 5 MB of objects.
DECODE_CHECK_SIZE: Final = 64 * 1024
# Worker threads checking the cost of large frames at once, per server.
_COST_CHECKERS: Final = 2
# Items a frame's cost check may walk on the loop before it moves to a
# thread: about 3 ms (0.2 us an item); the thread hop costs ~0.1-0.3 ms.
_INLINE_ITEMS: Final = 16384


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler knows about where a message came from."""

    peer: str
    connection_id: int
    request_id: int  # 0 for one-way messages
    role: Role | None = None  # what the connection proved (None: no auth configured)


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


async def echo_handler(request: Echo, ctx: RequestContext) -> Echo:
    """The handler of `Echo` requests (tests and benchmarks register it)."""
    return request


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

    The limits on frames, buffered bytes, connections and decoding are the
    module doc's; `frame_timeout` None turns the frame timeout off.
    """

    def __init__(
        self,
        handlers: Mapping[type, Handler | Deferred] | None = None,
        oneway_handlers: Mapping[type, OnewayHandler] | None = None,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_concurrent_requests: int = 128,
        max_queued_oneway: int = 1024,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_frame_items: int = DEFAULT_MAX_FRAME_ITEMS,
        max_decode_ratio: float = DEFAULT_MAX_DECODE_RATIO,
        auth: ServerAuth | None = None,
        client_messages: Collection[type] = (),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: every connection is TLS (`kvproto.rpc.tls`); with a CA in
        the context, a client certificate proves the CLUSTER role, none the
        CLIENT role. `auth`: every connection must then prove a role with a
        token (`kvproto.rpc.auth`), which decides. A CLIENT-role connection
        may send only `client_messages` (others are answered
        PERMISSION_DENIED, or dropped if one-way)."""
        if max_buffered_bytes < HEADER_SIZE + max_frame_size:
            raise ValueError(
                f"max_buffered_bytes ({max_buffered_bytes}) must hold a frame of "
                f"max_frame_size ({max_frame_size}) and its header"
            )
        self._handlers = dict(handlers or {})
        self._oneway_handlers = dict(oneway_handlers or {})
        self.max_frame_size = max_frame_size
        self.max_concurrent_requests = max_concurrent_requests
        self.max_queued_oneway = max_queued_oneway
        self.max_connections = max_connections
        self.frame_timeout = frame_timeout
        self.max_frame_items = max_frame_items
        self.max_decode_ratio = max_decode_ratio
        self.auth = auth
        self.tls = tls
        self.client_messages = frozenset(client_messages)
        # Shared by the frame readers of every connection.
        self.buffer_budget = FrameBudget(max_buffered_bytes)
        self._cost_checkers: trio.CapacityLimiter | None = None
        self._connection_ids = itertools.count(1)
        self.open_connections = 0
        # Connections closed at once for max_connections, ever; and how
        # many had been when the current burst of refusals began.
        self.refused_connections = 0
        self._burst_start: int | None = None
        self.refused_handshakes = 0  # connections that failed to authenticate

    def _handlers_for(
        self, role: Role | None
    ) -> tuple[dict[type, Handler | Deferred], dict[type, OnewayHandler]]:
        if role != Role.CLIENT:
            return self._handlers, self._oneway_handlers
        allowed = self.client_messages
        handlers: dict[type, Handler | Deferred] = {
            cls: h if cls in allowed else _deny for cls, h in self._handlers.items()
        }
        oneways: dict[type, OnewayHandler] = {
            cls: h if cls in allowed else _deny_oneway for cls, h in self._oneway_handlers.items()
        }
        return handlers, oneways

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
        Never raises but Cancelled (usable with in-memory streams in tests).
        Beyond `max_connections` open, the stream is closed at once."""
        if self.open_connections >= self.max_connections:
            self._refuse(peer)
            await trio.aclose_forcefully(stream)
            return
        if self._burst_start is not None:
            logger.warning(
                "accepting connections again, after refusing %d for max_connections",
                self.refused_connections - self._burst_start,
            )
            self._burst_start = None
        self.open_connections += 1
        conn: _ServerConnection | None = None
        try:
            role = None
            try:
                if self.tls is not None:
                    stream = await accept_tls(stream, self.tls)
                    if self.tls.verify_mode != ssl.CERT_NONE:
                        role = tls_role(stream)
                if self.auth is not None:
                    role = await authenticate_server(stream, self.auth)
            except AuthRefusedError as e:
                self.refused_handshakes += 1
                logger.warning("%s: connection refused: %s", peer, e)
                return
            conn = _ServerConnection(
                *self._handlers_for(role), self, stream, peer, next(self._connection_ids), role
            )
            await conn.run()
        except Exception:
            # A bug in this module; the server and other connections go on.
            logger.exception("%s: connection crashed", peer)
        finally:
            self.open_connections -= 1
            if conn is not None:
                conn.release()
            await trio.aclose_forcefully(stream)

    def _refuse(self, peer: str) -> None:
        if self._burst_start is None:
            self._burst_start = self.refused_connections
            logger.warning(
                "%s: connection refused: %d open, the limit (max_connections); the "
                "refusals that follow are counted, and logged when connections are "
                "accepted again",
                peer,
                self.open_connections,
            )
        self.refused_connections += 1

    async def check_decode_cost(self, frame: bytes) -> None:
        """DecodeError if decoding `frame` would cost more than the limits
        allow (module doc). The walk starts on the loop, where it may take
        `_INLINE_ITEMS` items (a few ms; a frame of large values or a
        snapshot chunk has a handful), and goes on in a worker thread for
        a frame of more."""
        max_memory = int(self.max_decode_ratio * len(frame))
        try:
            cbor_cost(
                frame, max_items=min(_INLINE_ITEMS, self.max_frame_items), max_memory=max_memory
            )
            return
        except CostLimitError as e:
            if not e.over_items or self.max_frame_items <= _INLINE_ITEMS:
                raise
        if self._cost_checkers is None:
            self._cost_checkers = trio.CapacityLimiter(_COST_CHECKERS)
        check = functools.partial(
            cbor_cost, frame, max_items=self.max_frame_items, max_memory=max_memory
        )
        await trio.to_thread.run_sync(check, limiter=self._cost_checkers)


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
        role: Role | None = None,
    ) -> None:
        self._role = role
        self._handlers = handlers
        self._oneway_handlers = oneway_handlers
        self._peer = peer
        self._id = conn_id
        self._max_frame_size = server.max_frame_size
        self._writer = FrameWriter(stream)
        self._batcher = EnvelopeBatcher(self._writer, server.max_frame_size)
        self._reader = FrameReader(
            stream,
            server.max_frame_size,
            frame_timeout=server.frame_timeout,
            budget=server.buffer_budget,
        )
        self._server = server
        # Requests read and not answered yet: an answer with none other in
        # progress leaves at once, others with the turn's batch.
        self._in_progress = 0
        self._dispatching = False
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
            nursery.start_soon(self._batcher.run)
            async with trio.open_nursery() as requests:
                clean_end = await self._read_frames(requests)
                if not clean_end:
                    requests.cancel_scope.cancel()
            if clean_end:
                # The client finished sending: finish its work and answer it.
                self._oneway_send.close()
                await self._oneways_finished.wait()
                self._batcher.flush()
                await self._writer.wait_flushed()
            nursery.cancel_scope.cancel()

    def release(self) -> None:
        """Give back what the connection holds of the server's budget."""
        self._reader.release()

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
                if len(frame) > DECODE_CHECK_SIZE:
                    await self._server.check_decode_cost(frame)
                envelopes = decode_envelopes(frame)
                # Answers made while a batch is dispatched go out together.
                self._dispatching = len(envelopes) > 1
                for kind, request_id, body in envelopes:
                    if kind == FrameKind.REQUEST:
                        try:
                            # No checkpoint per request while slots are
                            # free: a batch is dispatched in one go.
                            self._slots.acquire_nowait()
                        except trio.WouldBlock:
                            await self._slots.acquire()
                        self._in_progress += 1
                        cls = message_type(body)
                        handler = None if cls is None else self._handlers.get(cls)
                        if isinstance(handler, Deferred):
                            self._dispatch_deferred(handler, request_id, body)
                        else:
                            requests.start_soon(self._handle_request, request_id, body)
                    elif kind == FrameKind.ONEWAY:
                        try:
                            self._oneway_send.send_nowait(body)
                        except trio.WouldBlock:
                            await self._oneway_send.send(body)
                    else:
                        raise DecodeError(f"a client sent a {kind.name} frame")
                self._dispatching = False
        except FrameLimitError as e:
            logger.warning("%s: closing connection: %s", self._peer, e)
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
                answer = RpcError(
                    RpcErrorCode.INTERNAL, f"{type(answer).__name__}: {answer}"[:1000]
                )
            # A full send queue is not waited for here: the bound on requests
            # in progress (the semaphore) already bounds what can pile up.
            self._send_answer(request_id, answer)

        try:
            request = from_wire(body)
        except DecodeError as e:
            logger.warning("%s: bad request %d: %s", self._peer, request_id, e)
            answered = True
            self._slots.release()
            self._send_answer(request_id, RpcError(RpcErrorCode.BAD_REQUEST, str(e)))
            return
        try:
            handler.fn(
                request, RequestContext(self._peer, self._id, request_id, self._role), respond
            )
        except Exception as e:
            if not answered:
                respond(e)
            else:
                logger.exception("%s: deferred handler failed after answering", self._peer)

    def _send_answer(self, request_id: int, answer: object) -> None:
        """Send a handler's answer (an `RpcError` as an ERROR envelope): now
        if no other request of the connection is in progress, else with the
        turn's batch. An answer that cannot be encoded or framed is answered
        INTERNAL instead."""
        self._in_progress -= 1
        lone = self._in_progress == 0 and not self._dispatching
        kind = FrameKind.ERROR if isinstance(answer, RpcError) else FrameKind.RESPONSE
        try:
            try:
                self._batcher.send(encode_inner(kind, request_id, answer), lone=lone)
            except EncodeError as e:
                logger.error("%s: cannot send answer %d: %s", self._peer, request_id, e)
                error = RpcError(RpcErrorCode.INTERNAL, f"cannot encode the answer: {e}"[:1000])
                self._batcher.send(encode_inner(FrameKind.ERROR, request_id, error), lone=lone)
        except trio.BrokenResourceError:
            pass  # the connection is closing; nobody to answer

    async def _handle_request(self, request_id: int, body: Any) -> None:
        try:
            self._send_answer(request_id, await self._answer(request_id, body))
            await self._writer.wait_writable()
        finally:
            self._slots.release()

    async def _answer(self, request_id: int, body: Any) -> object:
        """The handler's response, or the `RpcError` to answer instead."""
        cls = message_type(body)
        handler = None if cls is None else self._handlers.get(cls)
        if handler is None:
            what = cls.__qualname__ if cls else "a message of unknown type"
            return RpcError(RpcErrorCode.UNKNOWN_MESSAGE, f"no handler for {what}")
        try:
            request = from_wire(body)
        except DecodeError as e:
            logger.warning("%s: bad request %d: %s", self._peer, request_id, e)
            return RpcError(RpcErrorCode.BAD_REQUEST, str(e))
        assert not isinstance(handler, Deferred)
        try:
            return await handler(
                request, RequestContext(self._peer, self._id, request_id, self._role)
            )
        except Exception as e:
            logger.exception("%s: handler for %s failed", self._peer, type(request).__qualname__)
            return RpcError(RpcErrorCode.INTERNAL, f"{type(e).__name__}: {e}"[:1000])

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
            await handler(msg, RequestContext(self._peer, self._id, 0, self._role))
        except Exception:
            name = type(msg).__qualname__
            logger.exception("%s: one-way handler for %s failed", self._peer, name)


async def _deny(request: object, ctx: RequestContext) -> RpcError:
    return RpcError(
        RpcErrorCode.PERMISSION_DENIED,
        f"a client connection may not send {type(request).__qualname__}",
    )


async def _deny_oneway(msg: object, ctx: RequestContext) -> None:
    logger.warning("%s: dropping %s from a client connection", ctx.peer, type(msg).__qualname__)

"""The server's side of one connection, and what handlers see.

`ServerConnection` reads frames, decodes and dispatches them (requests to
handler tasks or `Deferred` functions, one-way messages to one task, in
order), and writes the answers, within the limits its `RpcServer` keeps
(kvproto.rpc.server's module doc, kvproto.rpc.limits). Import the public
names from `kvproto.rpc`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from kvproto.codec import DecodeError, EncodeError, from_wire, message_type
from kvproto.frame import FrameLimitError, FrameReader, FrameStartTimeout, FrameWriter
from kvproto.rpc.auth import Role
from kvproto.rpc.batching import EnvelopeBatcher
from kvproto.rpc.envelope import (
    Echo,
    FrameKind,
    RpcError,
    RpcErrorCode,
    decode_envelopes,
    encode_inner,
)
from kvproto.rpc.limits import DECODE_CHECK_SIZE, FrameHold

if TYPE_CHECKING:
    from kvproto.rpc.server import RpcServer

__all__ = [
    "Deferred",
    "Handler",
    "OnewayHandler",
    "RequestContext",
    "Respond",
    "ServerConnection",
    "deny",
    "deny_oneway",
    "echo_handler",
]

logger = logging.getLogger(__name__)


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


class ServerConnection:
    """One accepted connection: a reader dispatching frames, request handler
    tasks in their own nursery, one task for one-way messages in order, and
    the frame writer. What admission asks of it (`busy`, `last_frame`) it
    keeps as plain fields, so that the per-frame cost is one clock read."""

    def __init__(
        self,
        handlers: dict[type, Handler | Deferred],
        oneway_handlers: dict[type, OnewayHandler],
        server: RpcServer,
        stream: trio.abc.Stream,
        peer: str,
        conn_id: int,
        role: Role | None = None,
        *,
        first_frame_deadline: float | None = None,
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
            first_frame_deadline=first_frame_deadline,
        )
        self._server = server
        self._gate = server.decode_gate
        self.last_frame: float | None = None
        # One-way messages queued or being handled; a frame waiting for
        # decode budget.
        self._oneways_pending = 0
        self._waiting = False
        # Requests read and not answered yet: an answer with none other in
        # progress leaves at once, others with the turn's batch.
        self._in_progress = 0
        self._dispatching = False
        # Bounds the requests of this connection in progress; when all are
        # taken the reader stops reading, which pushes back through TCP.
        self._slots = trio.Semaphore(server.max_concurrent_requests)
        # (body, the hold of its frame if large)
        self._oneway_send, self._oneway_receive = trio.open_memory_channel[
            tuple[Any, FrameHold | None]
        ](server.max_queued_oneway)
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

    @property
    def busy(self) -> bool:
        return bool(self._in_progress or self._oneways_pending or self._waiting)

    def release(self) -> None:
        """Give back what the reader holds of the server's buffer budget
        (the decode budget is given back by the tasks that hold it)."""
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
                self.last_frame = trio.current_time()
                hold = None
                if len(frame) > DECODE_CHECK_SIZE:
                    self._waiting = True
                    try:
                        hold = await self._gate.reserve(frame, self._server.frame_timeout)
                    finally:
                        self._waiting = False
                try:
                    await self._dispatch(decode_envelopes(frame), requests, hold)
                finally:
                    if hold is not None:
                        hold.done()
        except FrameStartTimeout:
            self._server.handshake_timeouts += 1
            logger.debug("%s: closed: no frame begun within the handshake timeout", self._peer)
        except FrameLimitError as e:
            logger.warning("%s: closing connection: %s", self._peer, e)
        except DecodeError as e:
            logger.warning("%s: closing connection: malformed frame: %s", self._peer, e)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            logger.debug("%s: connection lost: %r", self._peer, e)
        return False

    async def _dispatch(
        self, envelopes: list[Any], requests: trio.Nursery, hold: FrameHold | None
    ) -> None:
        """Hand each envelope of a frame on; a large frame's `hold` gains a
        reference per request task and queued one-way message."""
        # Answers made while a batch is dispatched go out together.
        self._dispatching = len(envelopes) > 1
        for kind, request_id, body in envelopes:
            if kind == FrameKind.REQUEST:
                try:
                    # No checkpoint per request while slots are free: a
                    # batch is dispatched in one go.
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    await self._slots.acquire()
                self._in_progress += 1
                cls = message_type(body)
                handler = None if cls is None else self._handlers.get(cls)
                if isinstance(handler, Deferred):
                    # Taken before this returns: the dispatcher's hold covers it.
                    self._dispatch_deferred(handler, request_id, body)
                else:
                    if hold is not None:
                        hold.add()
                    requests.start_soon(self._handle_request, request_id, body, hold)
            elif kind == FrameKind.ONEWAY:
                self._oneways_pending += 1
                if hold is not None:
                    hold.add()
                item = (body, hold)
                try:
                    try:
                        self._oneway_send.send_nowait(item)
                    except trio.WouldBlock:
                        await self._oneway_send.send(item)
                except BaseException:
                    self._oneway_done(hold)
                    raise
            else:
                raise DecodeError(f"a client sent a {kind.name} frame")
        self._dispatching = False

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

    async def _handle_request(self, request_id: int, body: Any, hold: FrameHold | None) -> None:
        try:
            try:
                answer = await self._answer(request_id, body)
            finally:
                if hold is not None:
                    hold.done()
            self._send_answer(request_id, answer)
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
        try:
            async for body, hold in self._oneway_receive:
                try:
                    await self._handle_oneway(body)
                finally:
                    self._oneway_done(hold)
        finally:
            # Those left when the connection broke give their budget back.
            while True:
                try:
                    _, hold = self._oneway_receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._oneway_done(hold)
            self._oneway_receive.close()
        self._oneways_finished.set()

    def _oneway_done(self, hold: FrameHold | None) -> None:
        self._oneways_pending -= 1
        if hold is not None:
            hold.done()

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


async def deny(request: object, ctx: RequestContext) -> RpcError:
    return RpcError(
        RpcErrorCode.PERMISSION_DENIED,
        f"a client connection may not send {type(request).__qualname__}",
    )


async def deny_oneway(msg: object, ctx: RequestContext) -> None:
    logger.warning("%s: dropping %s from a client connection", ctx.peer, type(msg).__qualname__)

"""The server side of RPC: handlers for requests and one-way messages.

Ordering: one-way messages of one connection are handled one at a time in
arrival order (Raft traffic relies on it). Requests are handled
concurrently, up to a per-connection bound, and answered in completion
order. Nothing orders a request against a one-way message.

A malformed frame (bad length, bad CBOR, bad envelope) closes that
connection with a logged reason; nothing else is affected. A handler's
failure is answered with an `RpcError` (kvproto.rpc.envelope).

Limits (each an `RpcServer` argument), so that no peer can make the process
hold unbounded memory, stall its event loop, or take every connection
(the mechanism is kvproto.rpc.limits):

* `max_frame_size` (64 MiB): a longer frame is refused from its length.
* `frame_timeout` (30 s): a frame begun must be complete within that much
  waiting (for the peer, or for either budget below), else the connection
  is closed: a slow sender is cut whatever it sends meanwhile. Connections
  idle between frames are not cut for it (kvproto.frame).
* `handshake_timeout` (10 s): a new connection must finish its TLS and
  token handshakes and begin its first frame within it, else it is closed
  (counted in `handshake_timeouts`, logged at debug: a flood of silent
  connections must not flood the log). The first frame is then bounded by
  `frame_timeout` like any other, so a large first frame (a snapshot
  chunk) on a slow link is not cut for being first.
* `max_connections` (1024): at the limit a newcomer takes the place of the
  oldest connection that has not completed a frame yet (it has given the
  server nothing; ours complete their first within a round trip of
  connecting, so a flood of silent connections cannot keep them out),
  else of the connection idle longest if idle `evict_idle_after` (5 s) or
  more (nothing in progress: no request unanswered, no one-way message
  queued; our clients reconnect on their next call, as after any lost
  connection), else it is closed at once. This is nginx's and gRPC's
  answer (a header timeout, dropping idle keep-alive connections under
  pressure); a peer that keeps a thousand connections each busy every few
  seconds still fills the table, which only authentication or per-address
  limits stop. A stretch at the limit is logged when it starts and when it
  ends, with the refusals and evictions counted.
* `max_buffered_bytes` (two frames of the largest size, 128 MiB): what the
  frames over 64 KiB of all connections hold together while received and
  until decoded and dispatched; a connection whose frame does not fit
  waits, reading nothing, until budget frees or its frame time runs out
  (then it is closed). Each connection also buffers up to about 128 KiB of
  small frames outside it.
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
* `max_decoded_bytes` (256 MiB): what the frames over 64 KiB of all
  connections hold decoded, by `cbor_cost`'s estimate (within a few % of
  tracemalloc's), which is reserved before the decode and held until
  every message of the frame is handled: a request until its handler
  task returns (a `Deferred` one until its function has taken the
  request: what it keeps while the answer is pending is its own to bound;
  holding the budget until the answer would let two stores' client
  writes, each waiting for the other's Raft appends, take all of both
  budgets), a one-way message while queued and until its handler
  returns. Without it, the raw budget freed at each dispatch let decoded
  frames pile up in handler tasks and one-way queues (up to 1,024 a
  connection), each up to 32 times its size. A frame that does not fit
  waits, reading nothing further on its connection, up to `frame_timeout`
  (then the connection is closed); one whose estimate exceeds the whole
  budget is refused as too costly. Every frame the per-frame limits let
  through fits (2^20 items are ~100 MB of objects besides the frame's
  strings). Small frames are not counted: making them wait would let
  requests held in progress block the small Raft answers they wait for;
  they are bounded per connection by `max_concurrent_requests` and
  `max_queued_oneway`, each at most about 5 MB decoded.
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections.abc import Collection, Mapping

import trio

from kvproto.frame import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, FrameBudget
from kvproto.rpc.auth import AuthRefusedError, Role, ServerAuth, authenticate_server
from kvproto.rpc.connection import (
    Deferred,
    Handler,
    OnewayHandler,
    RequestContext,
    Respond,
    ServerConnection,
    deny,
    deny_oneway,
    echo_handler,
)
from kvproto.rpc.limits import (
    DEFAULT_EVICT_IDLE_AFTER,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DECODE_RATIO,
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_FRAME_ITEMS,
    Admission,
    DecodeGate,
)
from kvproto.rpc.tls import accept_tls, tls_role

__all__ = [
    "DEFAULT_MAX_DECODE_RATIO",
    "DEFAULT_MAX_FRAME_ITEMS",
    "Deferred",
    "Handler",
    "OnewayHandler",
    "RequestContext",
    "Respond",
    "RpcServer",
    "echo_handler",
]

logger = logging.getLogger(__name__)


class RpcServer:
    """Serves requests and one-way messages with async handlers.

    `handlers` maps a request type to ``async def handler(request, ctx) ->
    response``; `oneway_handlers` a one-way type to ``async def
    handler(msg, ctx) -> None``. A handler's exception is logged with its
    traceback and answered with RpcError(INTERNAL) (one-way: logged only).

    When a client closes its connection cleanly, its requests in progress
    finish and are answered. Handlers are cancelled when the server is, or
    when their connection breaks, is dropped for a malformed frame or is
    evicted; they must tolerate that.

    The limits on frames, buffered and decoded bytes, connections and
    handshakes are the module doc's; `frame_timeout` None turns the frame
    timeout off.
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
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        evict_idle_after: float = DEFAULT_EVICT_IDLE_AFTER,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_frame_items: int = DEFAULT_MAX_FRAME_ITEMS,
        max_decode_ratio: float = DEFAULT_MAX_DECODE_RATIO,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
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
        self.frame_timeout = frame_timeout
        self.handshake_timeout = handshake_timeout
        self.auth = auth
        self.tls = tls
        self.client_messages = frozenset(client_messages)
        # Shared by the frame readers of every connection.
        self.buffer_budget = FrameBudget(max_buffered_bytes)
        self.decode_gate = DecodeGate(
            max_frame_items=max_frame_items,
            max_decode_ratio=max_decode_ratio,
            max_decoded_bytes=max_decoded_bytes,
        )
        self.admission = Admission(max_connections, evict_idle_after)
        self._connection_ids = itertools.count(1)
        self.refused_handshakes = 0  # connections that failed to authenticate
        # Connections closed for not beginning a frame within handshake_timeout.
        self.handshake_timeouts = 0

    @property
    def max_connections(self) -> int:
        return self.admission.max_connections

    @property
    def open_connections(self) -> int:
        return self.admission.open

    @property
    def refused_connections(self) -> int:
        """Connections closed at once for max_connections, ever."""
        return self.admission.refused

    @property
    def evicted_connections(self) -> int:
        """Connections closed to make room for a newcomer, ever."""
        return self.admission.evicted

    def _handlers_for(
        self, role: Role | None
    ) -> tuple[dict[type, Handler | Deferred], dict[type, OnewayHandler]]:
        if role != Role.CLIENT:
            return self._handlers, self._oneway_handlers
        allowed = self.client_messages
        handlers: dict[type, Handler | Deferred] = {
            cls: h if cls in allowed else deny for cls, h in self._handlers.items()
        }
        oneways: dict[type, OnewayHandler] = {
            cls: h if cls in allowed else deny_oneway for cls, h in self._oneway_handlers.items()
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
        At `max_connections` open, it takes an evictable one's place or is
        closed at once."""
        slot = self.admission.admit(peer)
        if slot is None:
            await trio.aclose_forcefully(stream)
            return
        conn: ServerConnection | None = None
        try:
            with slot.scope:
                deadline = slot.opened + self.handshake_timeout
                served = await self._handshake(stream, peer, deadline)
                if served is None:
                    return
                stream, role = served
                conn = ServerConnection(
                    *self._handlers_for(role),
                    self,
                    stream,
                    peer,
                    next(self._connection_ids),
                    role,
                    first_frame_deadline=deadline,
                )
                slot.activity = conn
                await conn.run()
        except Exception:
            # A bug in this module; the server and other connections go on.
            logger.exception("%s: connection crashed", peer)
        finally:
            self.admission.leave(slot)
            if conn is not None:
                conn.release()
            await trio.aclose_forcefully(stream)

    async def _handshake(
        self, stream: trio.abc.Stream, peer: str, deadline: float
    ) -> tuple[trio.abc.Stream, Role | None] | None:
        """The TLS and token handshakes, by `deadline`: the stream to serve
        and the role proved, or None (`stream` closed)."""
        role = None
        with trio.move_on_at(deadline):
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
                await trio.aclose_forcefully(stream)
                return None
            return stream, role
        self.handshake_timeouts += 1
        logger.debug("%s: closed: no handshake within %g s", peer, self.handshake_timeout)
        await trio.aclose_forcefully(stream)
        return None

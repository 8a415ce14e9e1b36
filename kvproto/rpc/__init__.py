"""RPC over trio streams: pipelined requests matched by id, one-way messages.

A connection is one way round: the side that connected sends requests and
one-way messages, the other answers. The modules, from the wire up:

* `envelope`: the ``[kind, request_id, body]`` array each frame carries,
  and the envelope-level messages (`RpcError`, `Echo`; tags 60..79);
* `auth`: the shared-secret handshake and the roles it proves;
* `tls`: TLS below it (server and client contexts, the certificate role;
  import it from `kvproto.rpc.tls`);
* `errors`: what a caller gets from `call`, by what it may do next
  (`RpcCallError` and its subclasses);
* `client`: `RpcConnection`, `connect`, stream openers, `parse_address`;
* `server`: `RpcServer`, its limits against hostile peers (module doc);
  `limits` their mechanism (connection slots, the decode budget);
  `connection` one served connection and what its handlers see
  (`RequestContext`, `Deferred`);
* `reconnect`: a client connection that comes back after failures (import
  it from `kvproto.rpc.reconnect`).

The names below are the public API: import them from `kvproto.rpc`.
"""

from __future__ import annotations

from kvproto.rpc.auth import (
    AuthRefusedError,
    Credentials,
    Role,
    ServerAuth,
    authenticating_opener,
)
from kvproto.rpc.client import (
    RpcConnection,
    StreamOpener,
    connect,
    open_connection_stream,
    open_tcp,
    parse_address,
    tcp_opener,
)
from kvproto.rpc.envelope import Echo, FrameKind, RpcError, RpcErrorCode
from kvproto.rpc.errors import (
    RpcCallError,
    RpcConnectionLostError,
    RpcProtocolError,
    RpcRemoteError,
    RpcTimeoutError,
    RpcUnavailableError,
)
from kvproto.rpc.server import (
    Deferred,
    Handler,
    OnewayHandler,
    RequestContext,
    Respond,
    RpcServer,
    echo_handler,
)

__all__ = [
    "AuthRefusedError",
    "Credentials",
    "Deferred",
    "Echo",
    "FrameKind",
    "Handler",
    "OnewayHandler",
    "RequestContext",
    "Respond",
    "Role",
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
    "ServerAuth",
    "StreamOpener",
    "authenticating_opener",
    "connect",
    "echo_handler",
    "open_connection_stream",
    "open_tcp",
    "parse_address",
    "tcp_opener",
]

"""Who may talk on a connection: a shared-secret handshake before the first
frame (challenge-response with HMAC-SHA256, both sides proving they hold
the token, which itself never travels).

Two tokens, two roles. The *cluster* token is held by the PD and every
store: a connection proven with it may do everything (Raft traffic between
stores, heartbeats and orders with the PD). The *client* token, if the
cluster has one, is held by applications: a connection proven with it may
only do what a client does (the KV API; the PD's routing reads). Without a
client token, clients prove themselves with the cluster token, and still
get only the client role they asked for.

The handshake (fixed sizes, raw bytes: nothing to decode before the peer
is trusted):

    client -> server   MAGIC (4) | role (1) | client nonce (32)
    server -> client   server nonce (32) | HMAC(token, b"S" | client nonce | server nonce)
    client -> server   HMAC(token, b"C" | server nonce | client nonce)

A side that reads anything else, or too late (`HANDSHAKE_TIMEOUT`), closes
the connection. The server learns the role, and `RequestContext.role`
carries it to the handlers, which refuse what the role may not do.

What it does not do: encrypt. An eavesdropper sees the traffic (not the
token); one who can rewrite it can take over an authenticated connection.
On an untrusted network this is no substitute for TLS.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Final

import trio

from kvproto.rpc.client import StreamOpener
from kvproto.rpc.errors import RpcUnavailableError
from plumbing.config_file import read_token_file

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "AuthRefusedError",
    "Credentials",
    "Role",
    "ServerAuth",
    "authenticate_client",
    "authenticate_server",
    "authenticating_opener",
    "security_from_files",
]

log = logging.getLogger(__name__)

MAGIC: Final = b"SKA1"
NONCE: Final = 32
MAC: Final = 32
HANDSHAKE_TIMEOUT: Final = 5.0


class Role(enum.IntEnum):
    CLIENT = 1
    CLUSTER = 2


class AuthRefusedError(RpcUnavailableError):
    """The handshake failed (wrong token, no token where one is needed, or a
    peer that does not authenticate). Nothing was sent: retrying with the
    same credentials will fail the same way."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a connecting side proves: a role and the token for it."""

    role: Role
    token: bytes = b""

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("a token must not be empty")

    def __repr__(self) -> str:  # never the token in a log line
        return f"Credentials({self.role.name})"


@dataclass(frozen=True, slots=True)
class ServerAuth:
    """What a server accepts: the cluster token, and the client token if
    clients have one of their own (else they use the cluster token)."""

    cluster_token: bytes
    client_token: bytes | None = None

    def __post_init__(self) -> None:
        if not self.cluster_token or self.client_token == b"":
            raise ValueError("a token must not be empty")

    def token_for(self, role: Role) -> bytes:
        if role == Role.CLIENT and self.client_token is not None:
            return self.client_token
        return self.cluster_token

    def __repr__(self) -> str:
        return f"ServerAuth(client token: {self.client_token is not None})"


def _mac(token: bytes, side: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token, side + first + second, hashlib.sha256).digest()


async def _receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    # Never past n: what follows the handshake is the first RPC frame.
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} handshake bytes")
        data += chunk
    return bytes(data)


async def authenticate_server(stream: trio.abc.Stream, auth: ServerAuth) -> Role:
    """The server's half. Returns the role the client proved; raises
    AuthRefusedError (the caller closes the stream) on any failure,
    including silence for HANDSHAKE_TIMEOUT."""
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            hello = await _receive_exactly(stream, len(MAGIC) + 1 + NONCE)
            if hello[: len(MAGIC)] != MAGIC:
                raise AuthRefusedError("no authentication handshake (a client without a token?)")
            try:
                role = Role(hello[len(MAGIC)])
            except ValueError:
                raise AuthRefusedError(f"unknown role {hello[len(MAGIC)]}") from None
            client_nonce = hello[len(MAGIC) + 1 :]
            token = auth.token_for(role)
            server_nonce = secrets.token_bytes(NONCE)
            await stream.send_all(server_nonce + _mac(token, b"S", client_nonce, server_nonce))
            proof = await _receive_exactly(stream, MAC)
    except trio.TooSlowError:
        raise AuthRefusedError(f"no handshake within {HANDSHAKE_TIMEOUT:g} s") from None
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        raise AuthRefusedError(f"handshake cut short: {e}") from None
    if not hmac.compare_digest(proof, _mac(token, b"C", server_nonce, client_nonce)):
        raise AuthRefusedError(f"wrong token for the {role.name.lower()} role")
    return role


async def authenticate_client(stream: trio.abc.Stream, creds: Credentials, peer: str) -> None:
    """The client's half; AuthRefusedError if the server does not prove it
    holds the token, or closes the connection (it refused ours)."""
    client_nonce = secrets.token_bytes(NONCE)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await stream.send_all(MAGIC + bytes([creds.role]) + client_nonce)
            answer = await _receive_exactly(stream, NONCE + MAC)
            server_nonce, proof = answer[:NONCE], answer[NONCE:]
            if not hmac.compare_digest(proof, _mac(creds.token, b"S", client_nonce, server_nonce)):
                raise AuthRefusedError(
                    f"{peer}: the server does not hold our {creds.role.name.lower()} token"
                )
            await stream.send_all(_mac(creds.token, b"C", server_nonce, client_nonce))
    except trio.TooSlowError:
        raise AuthRefusedError(
            f"{peer}: no authentication answer within {HANDSHAKE_TIMEOUT:g} s"
        ) from None
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        raise AuthRefusedError(
            f"{peer}: the server closed the connection during authentication "
            f"(a wrong token, or a server run without one?): {e}"
        ) from None


def security_from_files(
    cluster_token_file: str, client_token_file: str
) -> tuple[ServerAuth | None, Credentials | None]:
    """What a cluster member (a PD, a store) serves with and connects with,
    from the token files it is configured with ("": none; no cluster token:
    no authentication). ConfigError if one cannot be read."""
    if not cluster_token_file:
        return None, None
    cluster = read_token_file(cluster_token_file, "cluster token").encode()
    client = (
        read_token_file(client_token_file, "client token").encode() if client_token_file else None
    )
    return ServerAuth(cluster, client), Credentials(Role.CLUSTER, cluster)


def authenticating_opener(opener: StreamOpener, creds: Credentials) -> StreamOpener:
    """A stream opener (`StreamOpener`) that authenticates each stream it
    opens with `opener`, closing it if that fails."""

    async def open_authenticated(address: str) -> trio.abc.Stream:
        stream = await opener(address)
        try:
            await authenticate_client(stream, creds, address)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    return open_authenticated

"""TLS for RPC connections (trio's SSLStream), below the token handshake.

A server with a certificate (`server_context`) encrypts every connection;
with a CA as well it asks each client for a certificate and verifies the
ones it gets: a connection whose client presented a certificate the CA
signed is a cluster member's (mutual TLS), one without a certificate is a
client's (`tls_role`), unless a token handshake follows (`kvproto.rpc.auth`),
whose role then decides. A certificate the CA did not sign fails the TLS
handshake and the connection is closed.

Clients (`client_context`) verify the server against the CA, host name (or
IP address) included, and present their own certificate if they have one
(the PD and the stores always do: mutual TLS between members).
"""

from __future__ import annotations

import ssl

import trio

from kvproto.rpc.auth import (
    HANDSHAKE_TIMEOUT,
    AuthRefusedError,
    Credentials,
    Role,
    authenticating_opener,
)
from kvproto.rpc.client import StreamOpener, parse_address, tcp_opener
from plumbing.config_file import ConfigError

__all__ = [
    "client_context",
    "opener_for",
    "server_context",
    "tls_from_files",
    "tls_opener",
    "tls_role",
]


def server_context(cert_file: str, key_file: str, ca_file: str | None = None) -> ssl.SSLContext:
    """TLS 1.2 or later with this certificate; with `ca_file`, client
    certificates are asked for and verified (optional: clients may have
    none)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(
    ca_file: str, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """Verifies servers against `ca_file` (host names included); presents
    `cert_file` if given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def tls_role(stream: trio.SSLStream[trio.abc.Stream]) -> Role:
    """The role a TLS connection's certificate proves: CLUSTER if the client
    presented one the CA signed (the handshake refused any other), else
    CLIENT."""
    return Role.CLUSTER if stream.getpeercert() else Role.CLIENT


async def _handshake(tls: trio.SSLStream[trio.abc.Stream], who: str) -> None:
    """Either side's TLS handshake; AuthRefusedError (prefixed by `who`) if
    it fails or takes longer than HANDSHAKE_TIMEOUT."""
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await tls.do_handshake()
    except trio.TooSlowError:
        raise AuthRefusedError(f"{who}no TLS handshake within {HANDSHAKE_TIMEOUT:g} s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        raise AuthRefusedError(f"{who}TLS handshake failed: {e.__cause__ or e}") from None


async def accept_tls(
    stream: trio.abc.Stream, ctx: ssl.SSLContext
) -> trio.SSLStream[trio.abc.Stream]:
    """The server's TLS handshake; AuthRefusedError if it fails or takes
    longer than HANDSHAKE_TIMEOUT."""
    tls = trio.SSLStream(stream, ctx, server_side=True)
    await _handshake(tls, "")
    return tls


def tls_opener(opener: StreamOpener, ctx: ssl.SSLContext) -> StreamOpener:
    """A stream opener that wraps each stream `opener` opens in TLS, the
    server checked against `ctx` under the host of the address dialled."""

    async def open_tls(address: str) -> trio.abc.Stream:
        stream = await opener(address)
        host, _ = parse_address(address)
        tls = trio.SSLStream(stream, ctx, server_hostname=host)
        try:
            await _handshake(tls, f"{address}: ")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    return open_tls


def tls_from_files(
    cert_file: str, key_file: str, ca_file: str
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """A cluster member's TLS from its settings ("": not set): the server
    context (None without a certificate) and, with a CA, the client context
    it connects to other members with (presenting its certificate).
    ConfigError if a file cannot be loaded."""
    if not cert_file:
        return None, None
    try:
        server = server_context(cert_file, key_file, ca_file or None)
        client = client_context(ca_file, cert_file, key_file) if ca_file else None
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the TLS files: {e}") from None
    return server, client


def opener_for(
    tls: ssl.SSLContext | None, creds: Credentials | None, source_host: str | None = None
) -> StreamOpener:
    """How to open a connection: TCP (from `source_host` if given), then TLS
    if `tls`, then the token handshake if `creds`."""
    opener: StreamOpener = tcp_opener(source_host)
    if tls is not None:
        opener = tls_opener(opener, tls)
    if creds is not None:
        opener = authenticating_opener(opener, creds)
    return opener

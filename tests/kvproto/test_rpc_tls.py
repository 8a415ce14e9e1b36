"""TLS on RPC connections (kvproto.rpc.tls, issue 15): encrypted, the
server verified by its clients; with a CA on the server, a client
certificate the CA signed proves the cluster role and no certificate the
client role; a certificate from another CA, a client that does not trust
the server, and a plain TCP client are all refused. Loopback TCP with a
throwaway CA (trustme); every test bounded by trio.fail_after."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trustme

from kvproto.rpc import (
    AuthRefusedError,
    Credentials,
    Echo,
    RequestContext,
    Role,
    RpcCallError,
    RpcErrorCode,
    RpcRemoteError,
    RpcServer,
    ServerAuth,
    authenticating_opener,
    connect,
    echo_handler,
    open_tcp,
)
from kvproto.rpc.tls import client_context, server_context, tls_opener
from tests.kvproto.rpc_helpers import Hold, start_tcp_server


class Files:
    """A CA and, written as PEM files, a server certificate for 127.0.0.1
    and a member's client certificate, plus a stranger's CA and
    certificate."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        ca = trustme.CA()
        self.ca = self._write(ca.cert_pem, "ca.pem")
        self.server_cert, self.server_key = self._pair(ca.issue_cert("127.0.0.1"), "server")
        self.member_cert, self.member_key = self._pair(ca.issue_cert("store-7"), "member")
        stranger = trustme.CA()
        self.stranger_ca = self._write(stranger.cert_pem, "stranger-ca.pem")
        self.stranger_cert, self.stranger_key = self._pair(
            stranger.issue_cert("store-9"), "stranger"
        )

    def _write(self, blob: trustme.Blob, name: str) -> str:
        path = self.tmp / name
        blob.write_to_path(str(path))
        return str(path)

    def _pair(self, cert: trustme.LeafCert, name: str) -> tuple[str, str]:
        return (
            self._write(cert.cert_chain_pems[0], f"{name}.pem"),
            self._write(cert.private_key_pem, f"{name}.key"),
        )


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def server(files: Files, *, ca: bool = True, auth: ServerAuth | None = None) -> RpcServer:
    roles: list[Role | None] = []

    async def echo(request: Echo, ctx: RequestContext) -> Echo:
        roles.append(ctx.role)
        return await echo_handler(request, ctx)

    async def hold(request: Hold, ctx: RequestContext) -> Echo:
        return Echo(b"held")

    s = RpcServer(
        {Echo: echo, Hold: hold},
        tls=server_context(files.server_cert, files.server_key, files.ca if ca else None),
        auth=auth,
        client_messages={Echo},
    )
    s.roles = roles  # type: ignore[attr-defined]
    return s


async def test_a_member_certificate_proves_the_cluster_role_and_none_the_client_role(
    files: Files,
) -> None:
    srv = server(files)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await start_tcp_server(nursery, srv)
            member = tls_opener(
                open_tcp, client_context(files.ca, files.member_cert, files.member_key)
            )
            async with connect(address, open_stream=member) as conn:
                assert await conn.call(Echo(b"m")) == Echo(b"m")
                assert await conn.call(Hold(1)) == Echo(b"held")
            plain_client = tls_opener(open_tcp, client_context(files.ca))
            async with connect(address, open_stream=plain_client) as conn:
                assert await conn.call(Echo(b"c")) == Echo(b"c")
                with pytest.raises(RpcRemoteError) as err:
                    await conn.call(Hold(2))
                assert err.value.code == RpcErrorCode.PERMISSION_DENIED
            assert srv.roles == [Role.CLUSTER, Role.CLIENT]  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()


async def test_without_a_ca_the_server_only_encrypts(files: Files) -> None:
    srv = server(files, ca=False)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await start_tcp_server(nursery, srv)
            opener = tls_opener(open_tcp, client_context(files.ca))
            async with connect(address, open_stream=opener) as conn:
                assert await conn.call(Hold(1)) == Echo(b"held")
            assert srv.roles == []  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()


async def test_a_token_handshake_inside_tls_decides_the_role(files: Files) -> None:
    srv = server(files, auth=ServerAuth(b"cluster-token"))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await start_tcp_server(nursery, srv)
            # No client certificate, but the cluster token: a member.
            opener = authenticating_opener(
                tls_opener(open_tcp, client_context(files.ca)),
                Credentials(Role.CLUSTER, b"cluster-token"),
            )
            async with connect(address, open_stream=opener) as conn:
                assert await conn.call(Echo(b"t")) == Echo(b"t")
            assert srv.roles == [Role.CLUSTER]  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()


async def test_a_client_that_does_not_trust_the_server_refuses_it(files: Files) -> None:
    srv = server(files)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await start_tcp_server(nursery, srv)
            wrong_ca = tls_opener(open_tcp, client_context(files.stranger_ca))
            with pytest.raises(AuthRefusedError, match="certificate verify failed"):
                await wrong_ca(address)
            nursery.cancel_scope.cancel()


async def test_a_certificate_from_another_ca_and_plain_tcp_are_refused(files: Files) -> None:
    srv = server(files)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await start_tcp_server(nursery, srv)
            stranger = tls_opener(
                open_tcp, client_context(files.ca, files.stranger_cert, files.stranger_key)
            )
            # TLS 1.3 tells the client its certificate was refused only after
            # its own side of the handshake: at the latest, the call fails.
            with pytest.raises(RpcCallError):
                async with connect(address, open_stream=stranger) as conn:
                    await conn.call(Echo(b"x"), timeout=10)
            async with connect(address) as conn:
                with pytest.raises(RpcCallError):
                    await conn.call(Echo(b"y" * 100), timeout=10)
            assert srv.refused_handshakes == 2
            assert srv.roles == []  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()

"""The RPC handshake (kvproto.rpc.auth, issue 15 finding 1: store ports
took Raft messages from anyone): a server with a cluster token serves only
connections that prove a token; a client-role connection may send only
the client messages; wrong tokens, no handshake and silence are refused
with the connection closed, and the server goes on serving others.
In-memory streams under the autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kvproto.rpc import (
    AuthRefusedError,
    Credentials,
    Echo,
    RequestContext,
    Role,
    RpcErrorCode,
    RpcRemoteError,
    RpcServer,
    ServerAuth,
    authenticating_opener,
    connect,
    echo_handler,
)
from kvproto.rpc.auth import HANDSHAKE_TIMEOUT, authenticate_server
from tests.kvproto.rpc_helpers import (
    Hold,
    MemoryNetwork,
    Note,
    Service,
    read_until_closed,
    request_frame,
)

CLUSTER = b"cluster-secret"
CLIENTS = b"client-secret"


def server(service: Service, auth: ServerAuth | None) -> RpcServer:
    # Echo is a client message; Hold and the one-way Note are the cluster's.
    roles: list[Role | None] = []

    async def echo(request: Echo, ctx: RequestContext) -> Echo:
        roles.append(ctx.role)
        return await echo_handler(request, ctx)

    s = RpcServer(
        {Echo: echo, **{k: v for k, v in service.server()._handlers.items() if k is not Echo}},
        {Note: service.note},
        auth=auth,
        client_messages={Echo},
    )
    s.roles = roles  # type: ignore[attr-defined]
    return s


async def test_each_role_proves_its_token_and_a_client_may_send_only_client_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = Service()
    srv = server(service, ServerAuth(CLUSTER, CLIENTS))
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(srv, nursery)
        as_cluster = authenticating_opener(net.opener, Credentials(Role.CLUSTER, CLUSTER))
        async with connect("pd", open_stream=as_cluster) as conn:
            assert await conn.call(Echo(b"a")) == Echo(b"a")
            await conn.send_oneway(Note(1))
            await service.wait_notes(1)
        as_client = authenticating_opener(net.opener, Credentials(Role.CLIENT, CLIENTS))
        async with connect("pd", open_stream=as_client) as conn:
            assert await conn.call(Echo(b"b")) == Echo(b"b")
            # Not a client's message: refused, nothing ran, the connection lives.
            with pytest.raises(RpcRemoteError) as err:
                await conn.call(Hold(1))
            assert err.value.code == RpcErrorCode.PERMISSION_DENIED
            assert not err.value.may_have_executed and service.running == 0
            await conn.send_oneway(Note(2))  # dropped
            assert await conn.call(Echo(b"c")) == Echo(b"c")
        assert service.notes == [1]
        assert srv.roles == [Role.CLUSTER, Role.CLIENT, Role.CLIENT]  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_clients_use_the_cluster_token_when_the_cluster_has_no_client_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    srv = server(Service(), ServerAuth(CLUSTER))
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(srv, nursery)
        opener = authenticating_opener(net.opener, Credentials(Role.CLIENT, CLUSTER))
        async with connect("store", open_stream=opener) as conn:
            assert await conn.call(Echo(b"x")) == Echo(b"x")
        assert srv.roles == [Role.CLIENT]  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "creds",
    [
        Credentials(Role.CLUSTER, b"guess"),
        Credentials(Role.CLIENT, CLUSTER),  # the cluster's token is not the clients' one
        Credentials(Role.CLUSTER, CLIENTS),  # nor the other way round
    ],
)
async def test_a_wrong_token_is_refused_and_the_server_serves_others(
    creds: Credentials, autojump_clock: trio.testing.MockClock
) -> None:
    srv = server(Service(), ServerAuth(CLUSTER, CLIENTS))
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(srv, nursery)
        with pytest.raises(AuthRefusedError):
            async with connect("store", open_stream=authenticating_opener(net.opener, creds)):
                pass
        good = authenticating_opener(net.opener, Credentials(Role.CLUSTER, CLUSTER))
        async with connect("store", open_stream=good) as conn:
            assert await conn.call(Echo(b"ok")) == Echo(b"ok")
        nursery.cancel_scope.cancel()


async def test_a_client_without_a_token_gets_its_connection_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    srv = server(Service(), ServerAuth(CLUSTER))
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(srv.handle_connection, server_side, "plain")
        # A plain RPC frame where the handshake should be.
        await client.send_all(request_frame(1, Echo(b"hi")))
        assert await read_until_closed(client) == b""
    assert srv.refused_handshakes == 1 and srv.open_connections == 0


async def test_a_silent_peer_is_dropped_after_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    srv = server(Service(), ServerAuth(CLUSTER))
    client, server_side = trio.testing.memory_stream_pair()
    t0 = trio.current_time()
    await srv.handle_connection(server_side, "silent")
    assert trio.current_time() - t0 == pytest.approx(HANDSHAKE_TIMEOUT)
    assert srv.refused_handshakes == 1
    del client


async def test_a_server_that_does_not_prove_the_token_is_not_trusted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An impostor answering the handshake without the token: the client
    # refuses it before sending anything.
    async def impostor(stream: trio.abc.Stream) -> None:
        with pytest.raises(AuthRefusedError):
            await authenticate_server(stream, ServerAuth(b"another cluster"))

    async def open_impostor(address: str) -> trio.abc.Stream:
        client, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(impostor, server_side)
        return client

    async with trio.open_nursery() as nursery:
        opener = authenticating_opener(open_impostor, Credentials(Role.CLUSTER, CLUSTER))
        with pytest.raises(AuthRefusedError, match="does not hold our cluster token"):
            await opener("impostor")


async def test_a_client_with_a_token_against_a_server_without_auth_gets_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    srv = server(Service(), None)
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(srv, nursery)
        opener = authenticating_opener(net.opener, Credentials(Role.CLUSTER, CLUSTER))
        with pytest.raises(AuthRefusedError, match="closed the connection during authentication"):
            await opener("store")
        nursery.cancel_scope.cancel()


def test_tokens_never_show_in_reprs() -> None:
    assert "secret" not in repr(Credentials(Role.CLUSTER, CLUSTER))
    assert "secret" not in repr(ServerAuth(CLUSTER, CLIENTS))
    with pytest.raises(ValueError, match="must not be empty"):
        Credentials(Role.CLIENT, b"")

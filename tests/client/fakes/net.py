"""The memory network: in-memory streams between the client and the fake
servers, for tests under the autojump clock (nothing waits for real
time)."""

from __future__ import annotations

import errno
import random
from collections import Counter, defaultdict

import trio
import trio.testing

from kvproto.pd_client import PdClient
from kvproto.rpc import RpcServer

PD_ADDRESS = "pd:2379"


class MemoryNet:
    """A StreamOpener over in-memory streams: address -> RpcServer. Addresses
    can be taken down (connections refused) and connections cut."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.servers: dict[str, RpcServer] = {}
        self.down: set[str] = set()
        self.connects: Counter[str] = Counter()
        self._scopes: defaultdict[str, list[trio.CancelScope]] = defaultdict(list)

    def add(self, address: str, server: RpcServer) -> None:
        self.servers[address] = server

    async def open_stream(self, address: str) -> trio.abc.Stream:
        self.connects[address] += 1
        await trio.lowlevel.checkpoint()
        server = self.servers.get(address)
        if server is None or address in self.down:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address}: connection refused")
        client_side, server_side = trio.testing.memory_stream_pair()
        scope = trio.CancelScope()
        self._scopes[address].append(scope)
        self.nursery.start_soon(self._serve, server, server_side, scope)
        return client_side

    async def _serve(
        self, server: RpcServer, stream: trio.abc.Stream, scope: trio.CancelScope
    ) -> None:
        with scope:
            await server.handle_connection(stream, "memory")
        await trio.aclose_forcefully(stream)

    def cut(self, address: str) -> None:
        """Drop every open connection to `address` (from the server's end)."""
        for scope in self._scopes.pop(address, []):
            scope.cancel()

    def kill(self, address: str) -> None:
        self.down.add(address)
        self.cut(address)

    def revive(self, address: str) -> None:
        self.down.discard(address)


def memory_pd_client(net: MemoryNet, nursery: trio.Nursery) -> PdClient:
    """A real PdClient whose connections go through `net`."""
    return PdClient([PD_ADDRESS], nursery, rng=random.Random(1), open_stream=net.open_stream)

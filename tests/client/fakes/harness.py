"""The fake cluster put together: stores and a PD (tests/client/fakes)
served on the memory network with an async client of them (`fake_cluster`,
behind the `h` fixture), or on loopback TCP ports from a thread of their
own (`tcp_cluster`, for the blocking client and the CLI)."""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from client.rawkv import Client, ClientConfig, open_client
from plumbing.nursery import open_background_nursery
from tests.client.fakes.cluster import FakeCluster
from tests.client.fakes.net import PD_ADDRESS, MemoryNet, memory_pd_client
from tests.client.fakes.pd import FakePd
from tests.client.fakes.store import FakeStore


@dataclass
class Harness:
    cluster: FakeCluster
    net: MemoryNet
    stores: dict[int, FakeStore]
    pd: FakePd
    kv: Client

    def store(self, store_id: int) -> FakeStore:
        return self.stores[store_id]


@asynccontextmanager
async def fake_cluster(
    split_keys: Sequence[bytes] = (),
    *,
    store_ids: list[int] | None = None,
    config: ClientConfig | None = None,
    seed: int = 7,
) -> AsyncIterator[Harness]:
    """A fake cluster on a memory network and a client of it. An exception
    of the body comes out as itself (not in an ExceptionGroup)."""
    cluster = FakeCluster.build(store_ids, list(split_keys))
    async with open_background_nursery() as nursery:
        net = MemoryNet(nursery)
        stores = {s: FakeStore(s, cluster, net) for s in cluster.store_ids}
        for s, st in stores.items():
            net.add(cluster.addresses[s], st.server())
        fake_pd = FakePd(cluster)
        net.add(PD_ADDRESS, fake_pd.server())
        pd = memory_pd_client(net, nursery)
        try:
            async with open_client(
                pd, config=config, rng=random.Random(seed), open_stream=net.open_stream
            ) as kvc:
                yield Harness(cluster, net, stores, fake_pd, kvc)
        finally:
            pd.close()
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------
# The same servers over loopback TCP, in a thread of their own (for the
# blocking client and the CLI, which run trio themselves).


@dataclass
class TcpCluster:
    cluster: FakeCluster
    pd_address: str
    stores: dict[int, FakeStore]


@contextmanager
def tcp_cluster(split_keys: Sequence[bytes] = ()) -> Iterator[TcpCluster]:
    """A fake cluster on 127.0.0.1 ports, served by trio in a background
    thread until the block ends."""
    cluster = FakeCluster.build(None, list(split_keys))
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            box["token"] = trio.lowlevel.current_trio_token()
            box["stop"] = stop = trio.Event()
            stores = {s: FakeStore(s, cluster) for s in cluster.store_ids}
            for s, st in stores.items():
                host, port = await nursery.start(st.server().serve, "127.0.0.1", 0)
                cluster.addresses[s] = f"{host}:{port}"
            host, port = await nursery.start(FakePd(cluster).server().serve, "127.0.0.1", 0)
            box["result"] = TcpCluster(cluster, f"{host}:{port}", stores)
            ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as e:
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=main, name="fake-cluster", daemon=True)
    thread.start()
    assert ready.wait(10), "fake cluster did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield box["result"]
    finally:
        trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(10)

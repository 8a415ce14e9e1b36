"""The systems the comparison benchmarks drive, behind one small face (`Kv`),
and how each is started on loopback and stopped again.

* shardkv: `LocalCluster` (a PD and N stores as child processes, durable),
  driven through the public smart client (`client.connect`); `start_shardkv`
  starts one of any shape (stores, replicas, flags) for the scaling
  benchmarks, `cluster_pids` names its processes;
* etcd: `benchmarks/etcd_kv.py`; PySyncObj: `benchmarks/pysyncobj_kv.py`.

`open_system(name, root, ...)` is an async context manager yielding a `Kv`;
every process it started is stopped when the block exits (also on Ctrl-C
or an error). `unavailable(name)` says why a system cannot run here (not
installed), or None.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import trio

import client
from kvproto.pd_client import open_pd_client
from shardkv.local_cluster import ChildProcess, LocalCluster, wait_for_voters

SYSTEMS = ("shardkv", "etcd", "pysyncobj")
INSTALL_BENCH = "python3 -m pip install -e '.[bench]'"


class Kv(Protocol):
    name: str
    # One line on what a put and a get mean for this system (durability,
    # read path, which node is asked).
    note: str

    async def put(self, key: bytes, value: bytes) -> None: ...

    async def get(self, key: bytes) -> bytes | None: ...

    async def scan(self, start: bytes, limit: int) -> int:
        """Read up to `limit` pairs from `start` on; returns how many."""
        ...

    async def load(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        """Write `pairs` as fast as the system allows (not measured)."""
        ...


def unavailable(name: str, *, etcd_http: str = "raw") -> str | None:
    """Why `name` cannot be benchmarked on this machine, or None."""
    if name == "shardkv":
        if importlib.util.find_spec("lmdb") is None:
            return "lmdb missing: python3 -m pip install -e '.[server]'"
        return None
    if name == "etcd":
        if shutil.which("etcd") is None:
            return "no etcd binary on PATH (Debian: apt-get install -y etcd-server etcd-client)"
        if etcd_http == "httpx" and importlib.util.find_spec("httpx") is None:
            return f"httpx missing ({INSTALL_BENCH})"
        return None
    if name == "pysyncobj":
        if importlib.util.find_spec("pysyncobj") is None:
            return f"pysyncobj missing ({INSTALL_BENCH})"
        return None
    return f"unknown system {name!r} (known: {', '.join(SYSTEMS)})"


@asynccontextmanager
async def open_system(
    name: str,
    root: Path,
    *,
    replicas: int = 3,
    pool: int = 256,
    etcd_http: str = "raw",
    pysyncobj_batch: bool = False,
) -> AsyncIterator[Kv]:
    """Start `name` with `replicas` members under `root`; `pool` is the most
    concurrent requests the caller will make (connection pool sizes);
    `etcd_http` the HTTP client for etcd ("raw" or "httpx"), `pysyncobj_batch`
    PySyncObj's appendEntriesUseBatch."""
    if name == "shardkv":
        async with open_shardkv(root, replicas=replicas) as kv:
            yield kv
    elif name == "etcd":
        from benchmarks.etcd_kv import open_etcd

        async with open_etcd(root, members=replicas, pool=pool, http=etcd_http) as kv:
            yield kv
    elif name == "pysyncobj":
        from benchmarks.pysyncobj_kv import open_pysyncobj

        async with open_pysyncobj(root, nodes=replicas, batch=pysyncobj_batch) as kv:
            yield kv
    else:
        raise ValueError(unavailable(name))


async def stop_processes(processes: Iterable[ChildProcess], grace: float = 10.0) -> None:
    """SIGTERM each, wait up to `grace` s, then SIGKILL; shielded from
    cancellation so that Ctrl-C still stops them."""
    with trio.CancelScope(shield=True):
        procs = list(processes)
        for p in procs:
            p.terminate()
        with trio.move_on_after(grace):
            for p in procs:
                await p.wait()
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


# -- shardkv -------------------------------------------------------------------


class ShardKv:
    name = "shardkv"

    def __init__(self, kv: client.Client, replicas: int) -> None:
        self.kv = kv
        self.note = (
            f"{replicas} stores x {replicas} replicas + a PD, Raft log fsynced (the default); "
            "puts and linearizable gets at the region leader (its lease, else a ReadIndex "
            "round: the store's defaults) through the smart client (client.connect)"
        )

    async def put(self, key: bytes, value: bytes) -> None:
        await self.kv.put(key, value)

    async def get(self, key: bytes) -> bytes | None:
        return await self.kv.get(key)

    async def scan(self, start: bytes, limit: int) -> int:
        return len(await self.kv.scan(start, limit=limit))

    async def load(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        chunks = [pairs[i : i + 500] for i in range(0, len(pairs), 500)]
        limiter = trio.CapacityLimiter(4)

        async def one(chunk: Sequence[tuple[bytes, bytes]]) -> None:
            async with limiter:
                await self.kv.batch_put(chunk)

        async with trio.open_nursery() as n:
            for chunk in chunks:
                n.start_soon(one, chunk)


@asynccontextmanager
async def start_shardkv(
    root: Path,
    *,
    stores: int = 3,
    replicas: int = 3,
    pd_flags: dict[str, str] | None = None,
    store_flags: dict[str, str] | None = None,
    ready_within: float = 120.0,
) -> AsyncIterator[LocalCluster]:
    """A LocalCluster of a PD and `stores` stores under `root`, with
    `--max-replicas replicas` (and `pd_flags`, `store_flags`), once every
    store is up and the first region has `replicas` voters; stopped on the
    way out."""
    pd_flags = {"--max-replicas": str(replicas), **(pd_flags or {})}
    cluster = LocalCluster(root, stores=stores, pd_flags=pd_flags, store_flags=store_flags or {})
    try:
        await cluster.start()
        async with open_pd_client([cluster.pd_address]) as pd:
            with trio.move_on_after(ready_within) as waiting:
                await cluster.wait_ready(pd, min_stores=stores)
                await wait_for_voters(pd, replicas)
            if waiting.cancelled_caught:
                raise RuntimeError(
                    f"shardkv: no {replicas} voters serving after {ready_within:g} s; logs in "
                    f"{root / 'logs'} (--dir keeps them)"
                )
        yield cluster
    finally:
        await cluster.aclose()


def cluster_pids(cluster: LocalCluster) -> dict[str, int]:
    """The process id of the PD ("pd") and of each running store
    ("store-N"): what the scaling benchmarks read CPU and memory of."""
    return {
        child.name: child.process.pid
        for child in cluster.children()
        if child.process is not None and child.running
    }


@asynccontextmanager
async def open_shardkv(root: Path, *, replicas: int = 3) -> AsyncIterator[ShardKv]:
    async with (
        start_shardkv(root, stores=replicas, replicas=replicas) as cluster,
        client.connect([cluster.pd_address]) as kv,
    ):
        yield ShardKv(kv, replicas)

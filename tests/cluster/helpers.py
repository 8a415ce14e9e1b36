"""Shared pieces of the process-level cluster tests."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

import client
from kvproto.debugpb import StoreStatusRequest, StoreStatusResponse
from kvproto.metapb import PeerRole, Region
from kvproto.pd_client import PdClient, open_pd_client
from kvproto.rpc import RpcCallError, connect
from shardkv.local_cluster import LocalCluster, wait_for_voters
from store_node import keys
from store_node.engine import Engine

# Small timings so that elections, heartbeats and checkers happen in
# fractions of a second.
FAST_STORE = {
    "--tick-interval": "20ms",
    "--store-heartbeat-interval": "200ms",
    "--region-heartbeat-interval": "300ms",
}
FAST_PD = {"--store-disconnect-time": "1s", "--max-store-down-time": "3s"}


def fast_cluster(root: Path, stores: int, **store_flags: str) -> LocalCluster:
    return LocalCluster(
        root,
        stores=stores,
        store_flags={**FAST_STORE, **store_flags},
        pd_flags=dict(FAST_PD),
    )


@asynccontextmanager
async def serving(
    cluster: LocalCluster, *, voters: int = 0, client_timeout: float = 20.0
) -> AsyncIterator[tuple[PdClient, client.Client]]:
    """Start `cluster`, wait until it serves (and, with `voters`, until the
    first region has that many voters), and yield a PD client and a smart
    client; every child is stopped on the way out."""
    try:
        await cluster.start()
        async with (
            open_pd_client([cluster.pd_address]) as pd,
            client.connect([cluster.pd_address], timeout=client_timeout) as kv,
        ):
            await cluster.wait_ready(pd)
            if voters:
                await wait_for_voters(pd, voters)
            yield pd, kv
    finally:
        await cluster.aclose()


async def eventually(
    check: Callable[[], Awaitable[bool]],
    poll: float = 0.1,
    describe: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Poll `check` until it holds (the caller bounds the wait with a
    cancel scope): for conditions of other processes, which send no event.
    If the wait is cancelled, `describe` says what the world looked like."""
    try:
        while not await check():  # noqa: ASYNC110 - no event crosses processes
            await trio.sleep(poll)
    except trio.Cancelled:
        if describe is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                print(f"still waiting for {check.__name__}: {await describe()}")
        raise


async def store_status(address: str) -> StoreStatusResponse | None:
    try:
        async with connect(address, connect_timeout=2) as conn:
            r = await conn.call(StoreStatusRequest(), timeout=5)
    except RpcCallError:
        return None
    assert isinstance(r, StoreStatusResponse)
    return r


def voters(region: Region) -> set[int]:
    return {p.store_id for p in region.peers if p.role == PeerRole.VOTER}


async def region_of(pd: PdClient, key: bytes) -> Region | None:
    region, _ = await pd.get_region(key)
    return region


def data_checksums(data_dir: Path, ranges: list[tuple[bytes, bytes]]) -> list[int]:
    """CRC-32 of each key range's data in a (stopped) store's kv/."""
    engine = Engine(data_dir)
    try:
        out = []
        for start, end in ranges:
            crc = 0
            for k, v in engine.kv_items(keys.DATA_DB, start, end):
                crc = zlib.crc32(k + b"\0" + v, crc)
            out.append(crc)
        return out
    finally:
        engine.close()

"""The client end to end: a real PD (placement_driver.testing.open_pd) and a
real store (store_node.node.StoreNode) in-process, trio over TCP on
127.0.0.1 port 0, LMDB in tmp dirs, the real clock. Every test is bounded by
`trio.fail_after`. The blocking client and the CLI run their own trio in
a thread, so they are driven through `trio.to_thread`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

import client
from client import InvalidArgument

pytest.importorskip("placement_driver.testing", reason="needs the PD package (placement_driver/)")

from placement_driver.testing import open_pd
from plumbing.nursery import open_background_nursery
from shardkv.__main__ import main
from store_node.config import StoreConfig
from store_node.node import StoreNode

LIMIT = 60


@dataclass
class Cluster:
    pd: str
    node: StoreNode


@asynccontextmanager
async def real_cluster(tmp: Path) -> AsyncIterator[Cluster]:
    async with open_pd(tmp / "pd") as pd, open_background_nursery() as nursery:
        node = StoreNode(
            StoreConfig(
                data_dir=str(tmp / "s1"),
                listen="127.0.0.1:0",
                pd=(pd.addresses.rpc,),
                tick_interval=0.02,
                store_heartbeat_interval=0.2,
                region_heartbeat_interval=0.3,
                kv_sync_interval=0.1,
                max_key_size=64,
            )
        )
        await nursery.start(node.run)
        try:
            yield Cluster(pd.addresses.rpc, node)
        finally:
            nursery.cancel_scope.cancel()


async def split(c: Cluster, kvc: client.Client, key: bytes) -> None:
    """Split the region holding `key` at it (for real) and wait until the
    store has both parts; the client's cache is left stale on purpose."""
    core = c.node.core
    assert core is not None
    before = len(core.peers)
    region = next(p.region for p in core.peers.values() if p.region.contains(key))
    await c.node.split_region(region.id, (key,))
    # The store has no public "region changed" event to await: poll.
    while len(core.peers) == before or not any(  # noqa: ASYNC110
        p.region.start_key == key and p.is_leader() for p in core.peers.values()
    ):
        await trio.sleep(0.01)


async def test_every_call_on_a_real_cluster(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with real_cluster(tmp_path) as c, client.connect([c.pd]) as kvc:
            await kvc.put(b"a", b"1")
            assert await kvc.get(b"a") == b"1"
            assert await kvc.get(b"nope") is None
            assert await kvc.contains(b"a") and not await kvc.contains(b"nope")
            await kvc.batch_put([(b"b%02d" % i, b"%d" % i) for i in range(30)])
            got = await kvc.batch_get([b"b05", b"zz", b"a", b"b29"])
            assert got == {b"a": b"1", b"b05": b"5", b"b29": b"29"}
            pairs = await kvc.scan(b"b", b"c", limit=5)
            assert [k for k, _ in pairs] == [b"b%02d" % i for i in range(5)]
            pairs = await kvc.scan(b"", reverse=True, limit=2)
            assert [k for k, _ in pairs] == [b"b29", b"b28"]
            assert await kvc.scan(b"a", b"b", keys_only=True) == [(b"a", b"")]
            assert [k async for k, _ in kvc.scan_iter(b"b", page_size=7)] == [
                b"b%02d" % i for i in range(30)
            ]
            assert await kvc.compare_and_set(b"a", b"1", b"2") == (True, b"1")
            assert await kvc.compare_and_set(b"a", b"1", b"3") == (False, b"2")
            assert await kvc.put_if_absent(b"a", b"x") == b"2"
            assert await kvc.put_if_absent(b"new", b"x") is None
            assert await kvc.get_and_put(b"new", b"y") == b"x"
            await kvc.delete(b"a")
            await kvc.batch_delete([b"b00", b"b01"])
            await kvc.delete_range(b"b10", b"b20")
            keys = [k for k, _ in await kvc.scan(b"")]
            assert keys == [b"b%02d" % i for i in [*range(2, 10), *range(20, 30)]] + [b"new"]
            with pytest.raises(InvalidArgument, match="key_too_large"):
                await kvc.put(b"k" * 65, b"v")
            big = b"k" * 64  # the store's limit in this test
            assert not await kvc.contains(big)
            await kvc.put(big, b"v")
            assert await kvc.contains(big)


async def test_batches_and_scans_straddling_real_splits(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with real_cluster(tmp_path) as c, client.connect([c.pd]) as kvc:
            keys = [b"k%03d" % i for i in range(200)]
            await kvc.batch_put([(k, k) for k in keys])
            assert len(await kvc.scan(b"")) == 200  # the cache holds one region
            await split(c, kvc, b"k100")
            got = await kvc.batch_get(keys)
            assert list(got) == keys
            await split(c, kvc, b"k050")
            assert [k for k, _ in await kvc.scan(b"", reverse=True)] == keys[::-1]
            seen = []
            async for k, _ in kvc.scan_iter(b"k020", b"k180", page_size=16):
                seen.append(k)
                if k == b"k030":
                    await split(c, kvc, b"k150")
            assert seen == keys[20:180]
            assert [e.region.start_key for e in kvc.cache] == [b"", b"k050", b"k100", b"k150"]
            await kvc.delete_range(b"k040", b"k160")
            assert len(await kvc.scan(b"")) == 80


async def test_a_batch_of_several_chunks_in_one_region_writes_every_chunk(
    tmp_path: Path,
) -> None:
    # Chunks of one region each need a session number of their own: with one
    # number the region answered the second chunk from the first's record,
    # as a retry, and applied nothing of it.
    config = client.ClientConfig(batch_max_keys=10)
    with trio.fail_after(LIMIT):
        async with real_cluster(tmp_path) as c, client.connect([c.pd], config=config) as kvc:
            keys = [b"c%03d" % i for i in range(25)]
            await kvc.batch_put([(k, b"v" + k) for k in keys])
            assert await kvc.batch_get(keys) == {k: b"v" + k for k in keys}
            await kvc.batch_delete(keys[3:])
            assert list(await kvc.batch_get(keys)) == keys[:3]


async def test_sync_client_and_cli_on_a_real_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(LIMIT):
        async with real_cluster(tmp_path) as c:

            def blocking() -> None:
                with client.SyncClient([c.pd]) as kvc:
                    kvc.put(b"s", b"1")
                    assert kvc.get(b"s") == b"1"
                    assert kvc.compare_and_set(b"s", b"1", b"2") == (True, b"1")
                    assert [k for k, _ in kvc.scan_iter(b"")] == [b"s"]

            await trio.to_thread.run_sync(blocking)

            async def cli(*args: str) -> int:
                return await trio.to_thread.run_sync(main, ["kv", "--pd", c.pd, *args])

            assert await cli("put", "greeting", "hello") == 0
            assert await cli("get", "greeting") == 0
            assert await cli("scan") == 0
            assert await cli("delete", "greeting") == 0
            assert await cli("get", "greeting") == 1
            out, err = capsys.readouterr()
            assert out == "hello\ngreeting\thello\ns\t2\n"
            assert err == "shardkv kv: get greeting: not found\n"

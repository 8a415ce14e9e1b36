"""Real processes (`python -m shardkv pd|store`) on 127.0.0.1 with real LMDB
in tmp dirs; SIGKILL as the crash. Every test is bounded by
`trio.fail_after`."""

from __future__ import annotations

from pathlib import Path

import trio

from kvproto import kvrpcpb as kv
from kvproto.pd_client import open_pd_client
from kvproto.rpc import RpcCallError, connect
from shardkv.local_cluster import LocalCluster, leader_context
from store_node import keys
from store_node.bootstrap import load_regions
from store_node.engine import Engine

FAST = {
    "--tick-interval": "20ms",
    "--store-heartbeat-interval": "200ms",
    "--region-heartbeat-interval": "500ms",
}


async def test_sigkill_mid_write_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, stores=1, store_flags=FAST)
    acked: set[bytes] = set()
    attempted: set[bytes] = set()
    try:
        with trio.fail_after(120):
            await cluster.start()
            async with open_pd_client([cluster.pd_address]) as pd:
                await cluster.wait_ready(pd)
                ctx, address = await leader_context(pd, b"k")
                enough = trio.Event()

                async def writer(w: int, conn) -> None:  # type: ignore[no-untyped-def]
                    for i in range(100_000):
                        k = b"w%02d-%06d" % (w, i)
                        attempted.add(k)
                        try:
                            r = await conn.call(kv.RawPutRequest(ctx, k, b"v" * 100), timeout=5)
                        except RpcCallError:
                            return
                        if r != kv.RawWriteResponse():
                            return
                        acked.add(k)
                        if len(acked) >= 500:
                            enough.set()

                async with connect(address) as conn, trio.open_nursery() as n:
                    for w in range(16):
                        n.start_soon(writer, w, conn)
                    await enough.wait()
                    await cluster.kill_store(1)
                assert len(acked) >= 500

                await cluster.start_store(1)
                await cluster.wait_ready(pd)
                ctx, address = await leader_context(pd, b"k")
                async with connect(address) as conn:
                    got: set[bytes] = set()
                    start = b""
                    while True:
                        r = await conn.call(kv.RawScanRequest(ctx, start, b"x", 5000))
                        got.update(k for k, _ in r.pairs)
                        if len(r.pairs) < 5000:
                            break
                        start = r.pairs[-1][0] + b"\x00"
            assert acked <= got, f"{len(acked - got)} acknowledged writes lost"
            assert got <= attempted | {b"__playground_probe"}
            assert await cluster.stop_store(1) == 0
            # On disk: the applied index covers what the data shows.
            engine = Engine(tmp_path / "store-1")
            try:
                ((_, apply_state),) = load_regions(engine)
                assert apply_state.applied_index > 500 // 16
                assert apply_state.truncated_index <= apply_state.applied_index
                assert len(engine.kv_items(keys.DATA_DB, b"w", b"x")) == len(
                    got - {b"__playground_probe"}
                )
            finally:
                engine.close()
    finally:
        await cluster.aclose()

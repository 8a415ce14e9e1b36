"""Large values apart from kv/ in a real store in-process (a real PD, TCP on
127.0.0.1, LMDB and blob files in tmp dirs; every test bounded by
`trio.fail_after`): every KV call sees values, the store collects the files
its overwrites emptied, restarts keep everything, and a damaged blob stops
the store rather than answer a wrong value."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from kvproto import kvrpcpb as kv
from kvproto.rpc import RpcCallError, connect
from placement_driver.testing import open_pd
from store_node.blob_files import BlobError, decode_pointer
from store_node.engine import Engine, scan_cursor
from store_node.keys import DATA_DB
from store_node.node import StoreNode
from tests.placement_driver.helpers import http_request
from tests.store_node.test_disk_faults import serving
from tests.store_node.test_node import leader_context, running_store, store_config

BLOB_SETTINGS: dict[str, object] = {
    "large_value_threshold": 1000,
    "blob_file_size": 16 << 10,
    "blob_gc_interval": 0.05,
    "kv_sync_interval": 0.05,
}


def leaves(error: BaseException | None) -> list[BaseException]:
    """The errors inside `error`'s (nested) exception groups."""
    assert error is not None
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in leaves(e)]
    return [error]


def value(i: int, n: int = 3000) -> bytes:
    return ((b"%d-" % i) * n)[:n]


async def test_large_values_round_trip_are_collected_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with open_pd(tmp_path / "pd") as pd:
            cfg = store_config(
                tmp_path, "s1", pd.addresses.rpc, status="127.0.0.1:0", **BLOB_SETTINGS
            )
            async with running_store(cfg) as (node, info):
                ctx = await leader_context(pd.addresses.rpc)
                async with connect(info.address) as conn:
                    for i in range(20):
                        r = await conn.call(kv.RawPutRequest(ctx, b"big%02d" % i, value(i)))
                        assert r == kv.RawWriteResponse()
                    await conn.call(kv.RawBatchPutRequest(ctx, ((b"small", b"s"),)))
                    # 20 values of 3 KB in files of 16 KB: several files.
                    assert node.engine.blobs.usage().files >= 3
                    r = await conn.call(kv.RawGetRequest(ctx, b"big07"))
                    assert r.value == value(7)
                    r = await conn.call(kv.RawBatchGetRequest(ctx, (b"big03", b"small")))
                    assert r.pairs == ((b"big03", value(3)), (b"small", b"s"))
                    r = await conn.call(kv.RawScanRequest(ctx, b"big", b"big05", 10))
                    assert r.pairs == tuple((b"big%02d" % i, value(i)) for i in range(5))
                    r = await conn.call(kv.RawScanRequest(ctx, b"", b"", 100, keys_only=True))
                    assert len(r.pairs) == 21 and all(v == b"" for _, v in r.pairs)
                    r = await conn.call(
                        kv.RawCompareAndSetRequest(ctx, b"big01", value(1), value(101))
                    )
                    assert r == kv.RawCompareAndSetResponse(succeeded=True, previous=value(1))

                    # The first 15 overwritten small, or deleted: their files
                    # empty, and the store deletes them by itself.
                    for i in range(15):
                        if i % 2:
                            await conn.call(kv.RawPutRequest(ctx, b"big%02d" % i, b"now small"))
                        else:
                            await conn.call(kv.RawDeleteRequest(ctx, b"big%02d" % i))
                    before = node.engine.blobs.usage().bytes
                    # The collector, in a worker thread, sends no event.
                    while node.engine.blobs.usage().collected_files < 2:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                    assert node.engine.blobs.usage().bytes < before
                    r = await http_request(f"http://{info.status_address}/status")
                    blobs = r.json()["blobs"]
                    assert blobs["collected_files"] >= 2 and blobs["files"] >= 1
                    r = await http_request(f"http://{info.status_address}/metrics")
                    assert b"shardkv_store_blob_files_collected_total" in r.body
            # Restarted: every value as last written.
            async with running_store(cfg) as (_, info):
                ctx = await leader_context(pd.addresses.rpc)
                async with connect(info.address) as conn:
                    r = await conn.call(kv.RawScanRequest(ctx, b"", b"", 100))
                    expected = {b"big%02d" % i: value(i) for i in range(15, 20)}
                    expected |= {b"big%02d" % i: b"now small" for i in range(1, 15, 2)}
                    expected[b"small"] = b"s"
                    assert dict(r.pairs) == expected


async def test_a_damaged_blob_stops_the_store_instead_of_answering(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_pd(tmp_path / "pd") as pd:
            cfg = store_config(tmp_path, "s1", pd.addresses.rpc, **BLOB_SETTINGS)
            async with running_store(cfg) as (node, info):
                ctx = await leader_context(pd.addresses.rpc)
                async with connect(info.address) as conn:
                    await conn.call(kv.RawPutRequest(ctx, b"k", value(1)))
            # The pointer as stored, read with the store stopped.
            engine = Engine(cfg.data_dir, cfg.raft_dir)
            with engine.read_kv() as txn:
                [(_, raw)] = list(scan_cursor(txn, engine.kv_db(DATA_DB), b"", b""))
            engine.close()
            pointer = decode_pointer(bytes(raw))
            path = Path(cfg.data_dir) / "blobs" / f"{pointer.file:016x}.blob"
            data = bytearray(path.read_bytes())
            data[pointer.offset + 50] ^= 0xFF
            path.write_bytes(bytes(data))

            node = StoreNode(cfg)
            async with serving(node) as (info, stopped):
                ctx = await leader_context(pd.addresses.rpc)
                async with connect(info.address) as conn:
                    # No answer: the connection ends with the store.
                    with pytest.raises(RpcCallError):
                        await conn.call(kv.RawGetRequest(ctx, b"k"))
                await stopped.done.wait()
            # The failure ends `run`; the loop may meet it too (the failed
            # engine refuses its next write): the same error, once or twice.
            failures = leaves(stopped.error)
            failure = node.engine.failed
            assert isinstance(failure, BlobError) and all(f is failure for f in failures)
            assert str(path) in str(failure)

"""Values of the largest size (16 MiB, `max_value_size`) across real store
processes: a 3-replica cluster of three regions takes them by put (with a
key of the largest size), batch put and compare-and-set (both values of the
largest size) while small writes to another region keep completing; a value
one byte larger is refused with ValueTooLarge before anything is proposed,
by the client and, past a client that lets it through, by the store; a
follower that was down meanwhile catches up by snapshot and holds them;
reads return them (scans and batch gets whose answers the stores cut at
their byte bound); a backup holds them. Loopback only; bounded by
`trio.fail_after`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

import client
from client import ClientConfig, ValueTooLarge, backup
from kvproto import kvrpcpb as kv
from kvproto.pd_client import PdClient
from shardkv.local_cluster import LocalCluster, StoreSpec, wait_replicated
from store_node import keys
from store_node.engine import Engine
from store_node.snapshot import read_records
from tests.cluster.helpers import FAST_PD, FAST_STORE, eventually, serving, store_status
from tests.cluster.test_backup_restore import split_at

MAX = kv.DEFAULT_MAX_VALUE_SIZE
STORE = {
    **FAST_STORE,
    # Heartbeats every 100 ms, elections after 0.5-1 s: two cores carry
    # three stores and the client here, and a round with a 16 MiB value
    # takes a good part of a second.
    "--tick-interval": "50ms",
    # A follower down while 32 MiB are written is past the log's hard
    # limit: it gets a snapshot.
    "--log-gc-max-bytes": "8MiB",
    "--log-gc-hard-max-bytes": "16MiB",
}
# Three regions: two take the large values, the third small writes.
BIG_A, BIG_B, SMALL = b"a", b"b", b"m"
# A writer of large values stops after this many (the small writes were
# held up).
MAX_LARGE_WRITES = 20


def big(tag: int) -> bytes:
    return bytes([tag]) * MAX


async def store_counters(cluster: LocalCluster) -> list[dict[str, int]]:
    out = []
    for spec in cluster.store_specs:
        status = await store_status(spec.address)
        assert status is not None
        out.append(dict(status.counters))
    return out


async def caught_up(cluster: LocalCluster) -> bool:
    applied: dict[int, set[int]] = {}
    for spec in cluster.store_specs:
        status = await store_status(spec.address)
        if status is None:
            return False
        for p in status.peers:
            applied.setdefault(p.region.id, set()).add(p.applied_index)
    return len(applied) == 3 and all(len(v) == 1 for v in applied.values())


async def refused_before_proposing(cluster: LocalCluster, kv_client: client.Client) -> None:
    """A value of the limit plus one: the client refuses it; past a client
    whose limit is higher, the store does, and no store proposed or
    appended anything for it."""
    key = BIG_A + b"-refused"
    before = await store_counters(cluster)
    with pytest.raises(ValueTooLarge) as info:
        await kv_client.put(key, b"x" * (MAX + 1))
    assert (info.value.size, info.value.limit) == (MAX + 1, MAX)
    lenient = ClientConfig(timeout=20, max_value_size=kv.MAX_VALUE_SIZE_LIMIT)
    async with client.connect([cluster.pd_address], config=lenient) as other:
        with pytest.raises(ValueTooLarge, match=f"exceeds the limit of {MAX} bytes"):
            await other.put(key, b"x" * (MAX + 1))
        with pytest.raises(ValueTooLarge):
            await other.batch_put([(key, b"x" * (MAX + 1))])
        with pytest.raises(ValueTooLarge):
            await other.compare_and_set(key, None, b"x" * (MAX + 1))
    after = await store_counters(cluster)
    for b, a in zip(before, after, strict=True):
        assert a.get("proposed_writes", 0) == b.get("proposed_writes", 0)
        appended = a.get("log_bytes_appended", 0) - b.get("log_bytes_appended", 0)
        assert appended < MAX // 2
    assert await kv_client.get(key) is None


async def test_values_of_the_largest_size_end_to_end(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, stores=3, store_flags=STORE, pd_flags=dict(FAST_PD))
    max_key = BIG_A + b"k" * (keys.MAX_KEY_SIZE - 1)
    large: dict[bytes, bytes] = {}
    with trio.fail_after(150):
        async with serving(cluster, voters=3, client_timeout=30) as (pd, kv_client):
            await split_at(cluster, pd, BIG_B)
            await split_at(cluster, pd, SMALL)
            await wait_replicated(pd, 3)
            await refused_before_proposing(cluster, kv_client)

            # One store misses every large value (one leading none of the
            # regions if there is one: no election in the middle).
            down = await store_to_stop(pd, cluster)
            await cluster.kill_store(down.index)
            for k in (BIG_A, BIG_B, SMALL):
                await kv_client.put(k + b"-warm", b"w")  # every region has a leader

            # Large values go on in two regions (two writers in each, so that
            # a round has more than one to take), overwriting their keys,
            # until another client's small writes to the third region have
            # completed: were those held up until the large values are in,
            # neither side would finish (the test's deadline).
            expected = {k + b"-warm": b"w" for k in (BIG_A, BIG_B, SMALL)}
            small_done = trio.Event()
            large_writes: list[int] = []

            async def overwrite(key: bytes, cas: bool = False) -> None:
                n = 0
                previous = None
                while not small_done.is_set() and n < MAX_LARGE_WRITES:
                    value = big(n % 250 + 1)
                    if cas:
                        # Both values of the largest size: a 32 MiB request.
                        ok, _ = await kv_client.compare_and_set(key, previous, value)
                        assert ok
                    elif key.startswith(BIG_B):
                        await kv_client.batch_put([(key, value), (BIG_B + b"0", b"s")])
                    else:
                        await kv_client.put(key, value)
                    previous = expected[key] = value
                    n += 1
                large_writes.append(n)

            async with (
                client.connect([cluster.pd_address], timeout=30) as other,
                trio.open_nursery() as n,
            ):
                for key, cas in ((max_key, False), (BIG_A + b"2", False), (BIG_B + b"1", False)):
                    n.start_soon(overwrite, key, cas)
                n.start_soon(overwrite, BIG_B + b"2", True)
                for i in range(8):
                    await other.put(SMALL + b"%02d" % i, b"small")
                small_done.set()
            # Each went on until the small writes were done, and got somewhere.
            assert all(1 <= w < MAX_LARGE_WRITES for w in large_writes), large_writes
            expected[BIG_B + b"0"] = b"s"

            # Reads: each answer is cut at the store's byte bound (8 MiB).
            for k, v in expected.items():
                assert await kv_client.get(k) == v
            assert await kv_client.batch_get(list(expected)) == expected
            large = {k: v for k, v in expected.items() if k < SMALL}
            assert await kv_client.scan(BIG_A, SMALL) == sorted(large.items())

            await cluster.start_store(down.index)
            with trio.fail_after(60):
                await eventually(lambda: caught_up(cluster))
            status = await store_status(down.address)
            assert status is not None
            assert dict(status.counters).get("snapshots_received", 0) >= 1

            manifest = await backup.backup([cluster.pd_address], tmp_path / "backup")
            in_backup = {
                k: v
                for entry in manifest.regions
                for is_session, k, v in read_records(tmp_path / "backup" / entry.file)
                if not is_session and k in expected
            }
            assert in_backup == expected

            for spec in cluster.store_specs:
                assert await cluster.stop_store(spec.index) == 0
    want = digest(sorted(large.items()))
    for spec in cluster.store_specs:
        assert digest(stored(spec.data_dir, BIG_A, SMALL)) == want, spec.index


async def store_to_stop(pd: PdClient, cluster: LocalCluster) -> StoreSpec:
    """A store leading none of the regions if there is one, else one not
    leading the small writes' region."""
    leading: list[str] = []
    for k in (SMALL, BIG_A, BIG_B):
        _, leader = await pd.get_region(k)
        assert leader is not None
        store = await pd.get_store(leader.store_id)
        assert store is not None
        leading.append(store.address)
    free = [s for s in cluster.store_specs if s.address not in leading]
    return (free or [s for s in cluster.store_specs if s.address != leading[0]])[0]


def stored(data_dir: Path, start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
    engine = Engine(data_dir)
    try:
        return list(engine.kv_items(keys.DATA_DB, start, end))
    finally:
        engine.close()


def digest(pairs: list[tuple[bytes, bytes]]) -> bytes:
    h = hashlib.sha256()
    for k, v in pairs:
        h.update(len(k).to_bytes(4, "big") + len(v).to_bytes(4, "big") + k + v)
    return h.digest()

"""Replicas across real store processes: the PD grows region 1 to three
voters, a follower killed while the log is truncated catches up by snapshot
then log, a killed leader is replaced without losing acknowledged writes, a
store down past the threshold has its peers replaced, and logs stay
bounded while writes go on. Loopback only; each test bounded by
`trio.fail_after`."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.cluster.helpers import (
    data_checksums,
    eventually,
    fast_cluster,
    region_of,
    serving,
    store_status,
    voters,
)

GC = {"--log-gc-max-entries": "50", "--log-gc-max-follower-lag": "200"}


async def test_region_reaches_three_voters_and_a_killed_follower_catches_up(
    tmp_path: Path,
) -> None:
    cluster = fast_cluster(tmp_path, 3, **GC)
    with trio.fail_after(120):
        async with serving(cluster, voters=3) as (pd, kv):
            await kv.batch_put([(b"a%04d" % i, b"x" * 50) for i in range(100)])
            region, leader = await pd.get_region(b"")
            assert region is not None and leader is not None
            stores = {s.id: s for s in await pd.get_all_stores()}
            follower = next(
                s for s in cluster.store_specs if s.address != stores[leader.store_id].address
            )
            await cluster.kill_store(follower.index)
            for i in range(600):  # one entry each: far past the lag allowance
                await kv.put(b"b%04d" % i, b"y" * 50)
            await cluster.start_store(follower.index)

            async def caught_up() -> bool:
                statuses = [await store_status(s.address) for s in cluster.store_specs]
                if any(st is None or len(st.peers) != 1 for st in statuses):
                    return False
                applied = {st.peers[0].applied_index for st in statuses if st}
                return len(applied) == 1

            await eventually(caught_up)
            status = await store_status(follower.address)
            assert status is not None
            assert dict(status.counters).get("snapshots_received", 0) >= 1
            assert len(await kv.scan(b"a", b"c", limit=1000)) == 700
            for spec in cluster.store_specs:
                assert await cluster.stop_store(spec.index) == 0
            sums = {tuple(data_checksums(s.data_dir, [(b"", b"")])) for s in cluster.store_specs}
            assert len(sums) == 1


async def test_killed_leader_is_replaced_and_no_acknowledged_write_is_lost(
    tmp_path: Path,
) -> None:
    cluster = fast_cluster(tmp_path, 3)
    acked: list[bytes] = []
    with trio.fail_after(120):
        async with serving(cluster, voters=3, client_timeout=20) as (pd, kv):
            for i in range(200):
                await kv.put(b"k%04d" % i, b"v")
                acked.append(b"k%04d" % i)
            _, leader = await pd.get_region(b"")
            assert leader is not None
            leader_store = await pd.get_store(leader.store_id)
            assert leader_store is not None
            victim = next(s for s in cluster.store_specs if s.address == leader_store.address)
            await cluster.kill_store(victim.index)
            for i in range(200, 300):
                await kv.put(b"k%04d" % i, b"v")  # retried until a new leader serves
                acked.append(b"k%04d" % i)
            got = [k for k, _ in await kv.scan(b"k", b"l", limit=1000)]
            assert got == acked
            _, new_leader = await pd.get_region(b"")
            assert new_leader is not None and new_leader.store_id != leader.store_id


async def test_a_down_store_has_its_peer_replaced_on_a_fourth_store(tmp_path: Path) -> None:
    cluster = fast_cluster(tmp_path, 4)
    with trio.fail_after(120):
        async with serving(cluster, voters=3) as (pd, kv):
            await kv.put(b"before", b"1")
            region, leader = await pd.get_region(b"")
            assert region is not None and leader is not None
            stores = {s.id: s.address for s in await pd.get_all_stores()}
            victim_id = next(s for s in voters(region) if s != leader.store_id)
            victim = next(s for s in cluster.store_specs if s.address == stores[victim_id])
            await cluster.kill_store(victim.index)

            async def replaced() -> bool:
                r = await region_of(pd, b"")
                return r is not None and len(voters(r)) == 3 and victim_id not in voters(r)

            await eventually(replaced)
            assert await kv.get(b"before") == b"1"


async def test_logs_stay_bounded_while_writes_go_on(tmp_path: Path) -> None:
    cluster = fast_cluster(tmp_path, 3, **GC)
    worst = 0
    with trio.fail_after(120):
        async with serving(cluster, voters=3) as (_, kv):
            for i in range(80):
                async with trio.open_nursery() as n:
                    for w in range(8):
                        n.start_soon(kv.put, b"w%d-%03d" % (w, i), b"z" * 100)
                for spec in cluster.store_specs:
                    st = await store_status(spec.address)
                    if st is not None:
                        worst = max([worst, *(p.log_entries for p in st.peers)])
            truncations = 0
            for spec in cluster.store_specs:
                st = await store_status(spec.address)
                assert st is not None
                truncations += dict(st.counters).get("log_truncations_by_entries", 0)
            assert truncations > 0
        assert worst <= 50 + 200, worst

"""Follower and stale reads across real store processes: with three voters,
reads that ask for them are served by the followers too and return the
value written before. Loopback only; bounded by `trio.fail_after`."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.cluster.helpers import fast_cluster, serving, store_status


async def test_follower_and_stale_reads_return_a_value_written_before(tmp_path: Path) -> None:
    cluster = fast_cluster(tmp_path, 3)
    with trio.fail_after(120):
        async with serving(cluster, voters=3) as (pd, kv):
            await kv.batch_put({b"a": b"1", b"k": b"v"})
            for _ in range(30):
                assert await kv.get(b"k", consistency="follower") == b"v"
            for _ in range(30):
                got = await kv.get_with_staleness(b"k", consistency="stale", max_staleness=5)
                assert got.value == b"v"
                assert 0 <= got.staleness <= 5
            assert await kv.batch_get([b"a", b"k"], consistency="stale") == {
                b"a": b"1",
                b"k": b"v",
            }
            assert await kv.scan(b"a", b"l", consistency="follower") == [(b"a", b"1"), (b"k", b"v")]

            _, leader = await pd.get_region(b"k")
            assert leader is not None
            addresses = {s.id: s.address for s in await pd.get_all_stores()}
            followers = [a for s, a in addresses.items() if s != leader.store_id]
            served: dict[str, int] = {}
            for address in followers:
                status = await store_status(address)
                assert status is not None
                for name, n in status.counters:
                    if name in ("follower_reads", "stale_reads", "stale_reads_refused"):
                        served[name] = served.get(name, 0) + n
            # The followers served follower reads, and stale ones (from their
            # applied state, or as follower reads when not fresh enough).
            assert served.get("follower_reads", 0) > 0
            assert served.get("stale_reads", 0) + served.get("stale_reads_refused", 0) > 0

"""Region splits across real store processes: with tiny thresholds the key
space becomes dozens of regions; every key stays readable once, in order,
both ways; writers and scanners ride through the splits; a store killed
during splits catches up, and every region's replicas hold the same data.
Loopback only; each test bounded by `trio.fail_after`."""

from __future__ import annotations

import itertools
from pathlib import Path

import trio

from kvproto.pd_client import PdClient
from shardkv.local_cluster import LocalCluster
from tests.cluster.helpers import (
    FAST_PD,
    FAST_STORE,
    data_checksums,
    eventually,
    serving,
    store_status,
    voters,
)

TINY = {"--region-max-keys": "400", "--region-max-size": "1MiB"}
STORE = {**FAST_STORE, "--split-check-interval": "1s", "--log-gc-max-entries": "100"}


def split_cluster(root: Path, stores: int = 3) -> LocalCluster:
    return LocalCluster(root, stores=stores, store_flags=STORE, pd_flags={**FAST_PD, **TINY})


def key(i: int) -> bytes:
    return b"user%08d" % i


async def regions(pd: PdClient) -> list[tuple[bytes, bytes]]:
    infos = await pd.scan_regions(b"", b"", 0)
    return [(i.region.start_key, i.region.end_key) for i in infos]


def covers_key_space(ranges: list[tuple[bytes, bytes]]) -> bool:
    if not ranges or ranges[0][0] != b"" or ranges[-1][1] != b"":
        return False
    return all(end == start for (_, end), (start, _) in itertools.pairwise(ranges))


async def test_twenty_thousand_keys_make_dozens_of_regions_and_read_back(tmp_path: Path) -> None:
    cluster = split_cluster(tmp_path)
    n = 20_000
    with trio.fail_after(120):
        async with serving(cluster, client_timeout=30) as (pd, kv):
            for lo in range(0, n, 200):
                await kv.batch_put([(key(i), b"v%d" % i) for i in range(lo, lo + 200)])

            async def dozens() -> bool:
                return len(await regions(pd)) >= 24

            await eventually(dozens, poll=0.5)
            forward = [k for k, _ in await kv.scan(b"user", b"usf", limit=n + 10)]
            assert forward == [key(i) for i in range(n)]
            backward = [k for k, _ in await kv.scan(b"user", b"usf", limit=n + 10, reverse=True)]
            assert backward == forward[::-1]
            sample = [key(i) for i in range(0, n, 97)]
            got = await kv.batch_get(sample)
            assert got == {k: b"v%d" % int(k[4:]) for k in sample}

            async def tree_is_whole() -> bool:
                return covers_key_space(await regions(pd))

            await eventually(tree_is_whole)


async def test_writers_and_scanners_ride_through_splits(tmp_path: Path) -> None:
    cluster = split_cluster(tmp_path)
    written: set[bytes] = set()
    scans = 0
    with trio.fail_after(120):
        async with serving(cluster, client_timeout=30) as (pd, kv):
            done = trio.Event()

            async def writer(w: int) -> None:
                for i in range(1500):
                    k = key(i * 4 + w)
                    await kv.put(k, b"x")  # raises on anything but retried errors
                    written.add(k)
                done.set()

            async def scanner() -> None:
                nonlocal scans
                while not done.is_set():
                    seen = [k async for k, _ in kv.scan_iter(b"user", b"usf", page_size=300)]
                    assert seen == sorted(set(seen))  # in order, each once
                    scans += 1

            async with trio.open_nursery() as n:
                for w in range(4):
                    n.start_soon(writer, w)
                n.start_soon(scanner)
            assert len(await regions(pd)) >= 8
            final = [k for k, _ in await kv.scan(b"user", b"usf", limit=100_000)]
            assert set(final) == written and len(final) == len(written)
            assert scans > 0


async def test_a_store_killed_during_splits_catches_up_with_equal_data(tmp_path: Path) -> None:
    cluster = split_cluster(tmp_path)
    with trio.fail_after(120):
        async with serving(cluster, voters=3, client_timeout=30) as (pd, kv):
            await kv.batch_put([(key(i), b"a") for i in range(200)])
            await cluster.kill_store(3)
            for lo in range(200, 6000, 200):
                await kv.batch_put([(key(i), b"b") for i in range(lo, lo + 200)])
            await cluster.start_store(3)
            # Every region reports three voters again, and the data is all there.

            async def settled() -> bool:
                infos = await pd.scan_regions(b"", b"", 0)
                return len(infos) >= 8 and all(len(voters(i.region)) == 3 for i in infos)

            async def regions_now() -> str:
                return repr(
                    [(i.region.id, voters(i.region)) for i in await pd.scan_regions(b"", b"", 0)]
                )

            await eventually(settled, poll=0.5, describe=regions_now)
            await kv.put(b"zz-last", b"1")
            assert len(await kv.scan(b"user", b"usf", limit=10_000)) == 6000
            ranges: list[tuple[bytes, bytes]] = []

            async def replicas_agree() -> bool:
                """The PD and every replica of every region agree on the
                regions, and each region's peers applied the same index."""
                nonlocal ranges
                ranges = await regions(pd)
                applied: dict[tuple[bytes, bytes], set[int]] = {}
                for spec in cluster.store_specs:
                    st = await store_status(spec.address)
                    if st is None:
                        return False
                    for p in st.peers:
                        r = p.region
                        applied.setdefault((r.start_key, r.end_key), set()).add(p.applied_index)
                return sorted(applied) == ranges and all(len(v) == 1 for v in applied.values())

            async def what_differs() -> str:
                lines = [f"PD: {ranges}"]
                for spec in cluster.store_specs:
                    st = await store_status(spec.address)
                    if st is None:
                        lines.append(f"{spec.address}: no answer")
                        continue
                    for p in st.peers:
                        r = p.region
                        lines.append(
                            f"store {st.store_id} region {r.id} [{r.start_key!r},"
                            f"{r.end_key!r}) v{r.epoch.version} leader={p.is_leader} "
                            f"term={p.term} commit={p.commit_index} applied={p.applied_index}"
                        )
                return "\n".join(lines)

            await eventually(replicas_agree, describe=what_differs)
            for spec in cluster.store_specs:
                assert await cluster.stop_store(spec.index) == 0
            sums = [data_checksums(s.data_dir, ranges) for s in cluster.store_specs]
            assert sums[0] == sums[1] == sums[2]

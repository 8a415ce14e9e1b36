"""Backup and restore across real processes: a 3-store cluster with several
regions is backed up (`client.backup`, what `shardkv ctl backup` runs) while
clients write and a region splits between two regions of the walk; then
`shardkv restore` brings it back as a new cluster (a new PD, the restore
store, two more stores that get the data by Raft snapshots, regions
splitting by size): every write acknowledged before the backup started is
there with its value, and every store's data matches the manifest's
checksums. Loopback only; each test bounded by `trio.fail_after`."""

from __future__ import annotations

from pathlib import Path

import trio

from client import backup
from client.admin_http import PdAdminClient
from client.backup_manifest import Manifest, RegionEntry
from kvproto.pd_client import PdClient, open_pd_client
from kvproto.rpc import RpcCallError
from shardkv.local_cluster import LocalCluster, wait_replicated
from store_node import keys
from store_node.backup_copies import digest_pairs
from store_node.engine import Engine
from tests.cluster.helpers import FAST_PD, FAST_STORE, eventually, serving

STORE = {**FAST_STORE, "--split-check-interval": "1s"}
# The restored cluster: small regions, so that its one region splits.
TINY = {"--region-max-keys": "600", "--region-max-size": "1MiB"}


# What LocalCluster.wait_ready writes (in both clusters, alike).
PROBE = b"__playground_probe"


def key(i: int) -> bytes:
    return b"user%06d" % i


async def split_at(cluster: LocalCluster, pd: PdClient, at: bytes) -> None:
    """Split the region holding `at` there (the PD's admin API) and wait
    until the PD reports the new region."""
    region, _ = await pd.get_region(at)
    assert region is not None
    body = {"name": "split-region", "region_id": region.id, "keys": [{"text": at.decode()}]}
    await trio.to_thread.run_sync(PdAdminClient(cluster.http_url).post, "/operators", body)

    async def split_done() -> bool:
        r, _ = await pd.get_region(at)
        return r is not None and r.start_key == at

    await eventually(split_done)


def store_digests(data_dir: Path, manifest: Manifest) -> list[tuple[int, bytes]]:
    engine = Engine(data_dir)
    try:
        return [
            digest_pairs(engine.kv_items(keys.DATA_DB, r.start_key, r.end_key))
            for r in manifest.regions
        ]
    finally:
        engine.close()


async def test_backup_under_writes_and_a_split_then_restore_into_a_new_cluster(
    tmp_path: Path,
) -> None:
    source = LocalCluster(tmp_path / "source", stores=3, store_flags=STORE, pd_flags=FAST_PD)
    out = tmp_path / "backup"
    acked: dict[bytes, bytes] = {}
    with trio.fail_after(150):
        async with serving(source, voters=3) as (pd, kv):
            for lo in range(0, 3000, 300):
                await kv.batch_put([(key(i), b"v%d-" % i * 20) for i in range(lo, lo + 300)])
            for at in (b"user000500", b"user001500", b"user002500"):
                await split_at(source, pd, at)
            await wait_replicated(pd, 3)
            acked.update({key(i): b"v%d-" % i * 20 for i in range(3000)})
            before = dict(acked)
            # Every value a put was sent with during the backup (acknowledged
            # or not: a put cut short may have applied).
            during: dict[bytes, set[bytes]] = {}
            splits: list[RegionEntry] = []

            async def writer(n: int) -> None:
                # New keys and overwrites of old ones, all the backup long.
                i = 0
                while True:
                    k = b"w%d-%06d" % (n, i) if i % 2 else key((i * 7 + n) % 3000)
                    v = b"during %d %d" % (n, i)
                    during.setdefault(k, set()).add(v)
                    await kv.put(k, v)
                    i += 1

            async def after_region(entry: RegionEntry) -> None:
                if not splits:
                    # The next region splits before the walk gets to it.
                    splits.append(entry)
                    await split_at(source, pd, b"user001000")

            async with trio.open_nursery() as n:
                for w in range(2):
                    n.start_soon(writer, w)
                manifest = await backup.backup([source.pd_address], out, after_region=after_region)
                n.cancel_scope.cancel()
    ranges = [(r.start_key, r.end_key) for r in manifest.regions]
    assert (b"user000500", b"user001000") in ranges and (b"user001000", b"user001500") in ranges
    assert len(ranges) == 5 and manifest.total_keys >= 3000

    # A new cluster: its first store restores the backup and bootstraps it.
    target = LocalCluster(
        tmp_path / "target", stores=3, store_flags=STORE, pd_flags={**FAST_PD, **TINY}
    )
    target.store_specs[0].child.args[0:1] = ["restore", "--from", str(out)]
    with trio.fail_after(150):
        try:
            await target.start_pd()
            await target.start_store(1)
            async with open_pd_client([target.pd_address]) as pd:
                # The other stores start once it has: they must join.

                async def bootstrapped() -> bool:
                    try:
                        return await pd.is_bootstrapped()
                    except RpcCallError:
                        return False  # not listening yet

                await eventually(bootstrapped)
            async with serving(target, voters=3) as (pd, kv):
                await wait_replicated(pd, 3)
                pairs = dict(await kv.scan(b"", b"", limit=100_000))
                for k, v in before.items():
                    # Overwritten during the backup: the old value or a new one.
                    assert pairs[k] == v or pairs[k] in during.get(k, ()), k
                for k, v in pairs.items():
                    assert before.get(k) == v or v in during.get(k, ()) or k == PROBE, k

                async def split_by_size() -> bool:
                    return len(await pd.scan_regions(b"", b"", 0)) >= 3

                await eventually(split_by_size, poll=0.5)
                await wait_replicated(pd, 3)
        finally:
            await target.aclose()
    expected = [(r.keys, r.data_sha256) for r in manifest.regions]
    for spec in target.store_specs:
        assert store_digests(spec.data_dir, manifest) == expected, spec.child.name

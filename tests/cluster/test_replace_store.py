"""A store whose data directory is lost, on real processes: started again
on an empty directory at its old address it is refused with a message
naming `--replace-store`; started with it, it joins as a new store, the
old one becomes a Tombstone, and the cluster ends with every region fully
replicated and every key readable. Loopback only, bounded by
`trio.fail_after`."""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

from kvproto.metapb import PeerRole, StoreState
from kvproto.pd_client import PdClient
from shardkv.local_cluster import LocalCluster
from tests.cluster.helpers import FAST_PD, FAST_STORE, eventually, serving

TINY = {"--region-max-keys": "400", "--region-max-size": "1MiB"}
STORE = {**FAST_STORE, "--split-check-interval": "1s"}
KEYS = 2_000


def key(i: int) -> bytes:
    return b"user%08d" % i


async def store_id_at(pd: PdClient, address: str) -> int:
    (store,) = [s for s in await pd.get_all_stores() if s.address == address]
    return store.id


async def test_a_wiped_store_is_refused_then_replaces_itself_when_told(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, stores=3, store_flags=STORE, pd_flags={**FAST_PD, **TINY})
    spec = cluster.store_specs[2]
    with trio.fail_after(180):
        async with serving(cluster, voters=3, client_timeout=30) as (pd, kv):
            for lo in range(0, KEYS, 200):
                await kv.batch_put([(key(i), b"v%d" % i) for i in range(lo, lo + 200)])

            async def several_regions() -> bool:
                return len(await pd.scan_regions(b"", b"", 0)) >= 4

            await eventually(several_regions, poll=0.2)
            lost = await store_id_at(pd, spec.address)
            assert await cluster.stop_store(3) == 0
            shutil.rmtree(spec.data_dir)

            # Without the flag: refused, saying how to replace it.
            await cluster.start_store(3)
            assert spec.child.process is not None
            assert await spec.child.process.wait() == 1
            text = spec.child.log_path.read_text()
            assert f"is store {lost}'s" in text and f"--replace-store {lost}" in text
            assert "Traceback" not in text

            async def lost_is_silent() -> bool:
                store = await pd.get_store(lost)
                return store is not None and store.state != StoreState.UP

            await eventually(lost_is_silent)
            spec.child.args += ["--replace-store", str(lost)]
            await cluster.start_store(3)
            new = 0

            async def replaced_everywhere() -> bool:
                nonlocal new
                stores = {s.id: s for s in await pd.get_all_stores(exclude_tombstone=False)}
                if stores[lost].state != StoreState.TOMBSTONE:
                    return False
                (new,) = [i for i, s in stores.items() if s.address == spec.address and i != lost]
                for info in await pd.scan_regions(b"", b"", 0):
                    peers = info.region.peers
                    if (
                        sorted(p.store_id for p in peers if p.role == PeerRole.VOTER)
                        != sorted(i for i in stores if i != lost)
                        or len(peers) != 3
                    ):
                        return False
                return True

            await eventually(replaced_everywhere, poll=0.3)
            assert new not in (0, lost)
            got = await kv.scan(b"user", b"usf", limit=KEYS + 10)
            assert got == [(key(i), b"v%d" % i) for i in range(KEYS)]

            # The flag left in place: a restart just runs.
            assert await cluster.stop_store(3) == 0
            await cluster.start_store(3)

            async def restarted() -> bool:
                assert spec.child.running, "the replacement did not start again"
                log = spec.child.log_path.read_text()
                return f"--replace-store {lost} has nothing more to do" in log

            await eventually(restarted)
            await cluster.wait_ready(pd)
            assert await store_id_at(pd, spec.address) == new

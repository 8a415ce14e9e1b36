"""Consistency checks on real processes (`python -m shardkv pd|store`, and
`shardkv ctl` as a command): replicas hash alike after writes; a copy
changed behind Raft's back while its store was stopped is named by that
store's log and metrics, the PD's admin API and `shardkv ctl region check`;
periodic checks run on the store setting. Every wait bounded by
`trio.fail_after`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

from shardkv.local_cluster import LocalCluster
from store_node import keys
from store_node.engine import Engine
from tests.cluster.helpers import eventually, fast_cluster, serving
from tests.placement_driver.helpers import http_request
from tests.prometheus import Samples


async def ctl(cluster: LocalCluster, *args: str) -> tuple[int, str]:
    """`shardkv ctl ARGS` against the cluster's PD: exit status, stdout."""
    done = await trio.run_process(
        [sys.executable, "-m", "shardkv", "ctl", "--pd-http", cluster.http_url, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.stderr == b"", done.stderr
    return done.returncode, done.stdout.decode()


async def get_json(cluster: LocalCluster, path: str) -> Any:
    r = await http_request(cluster.http_url + "/pd/api/v1" + path)
    return json.loads(r.body)


async def mismatches(cluster: LocalCluster, index: int) -> float:
    r = await http_request(cluster.store_specs[index - 1].status_url + "/metrics")
    return Samples(r.body.decode())["shardkv_store_consistency_mismatches_total"]


async def test_a_copy_changed_behind_raft_is_named_everywhere(tmp_path: Path) -> None:
    cluster = fast_cluster(tmp_path, stores=3)
    with trio.fail_after(180):
        async with serving(cluster, voters=3) as (pd, kv):
            for i in range(50):
                await kv.put(b"key%03d" % i, b"value%d" % i)
            region, leader = await pd.get_region(b"key007")
            assert region is not None and leader is not None
            rid = region.id

            code, out = await ctl(cluster, "region", "check", str(rid))
            assert code == 0, out
            assert ": match: every replica holds the same data" in out.splitlines()[0]

            # Corrupt a follower's copy while its store is stopped.
            index_of = {
                s.id: next(spec.index for spec in cluster.store_specs if spec.address == s.address)
                for s in await pd.get_all_stores()
            }
            victim = next(p.store_id for p in region.peers if p.store_id != leader.store_id)
            spec = cluster.store_specs[index_of[victim] - 1]
            await cluster.stop_store(spec.index)
            engine = Engine(spec.data_dir)
            assert engine.kv_get(keys.DATA_DB, b"key007") == b"value7"
            engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"key007", b"rotten"))
            engine.close()
            await cluster.start_store(spec.index)
            await cluster.wait_ready(pd)

            async def named() -> bool:
                code, out = await ctl(cluster, "--json", "region", "check", str(rid), "--wait", "5")
                doc = json.loads(out)
                return code == 1 and doc["state"] == "mismatch" and not doc["missing"]

            await eventually(named, poll=0.2)
            code, out = await ctl(cluster, "region", "check", str(rid))
            assert code == 1
            head, _, *rows = out.splitlines()
            assert f"MISMATCH: store {victim} differ" in head, out
            marked = [r.split()[0] for r in rows if r.rstrip().endswith("differs")]
            assert marked == [str(victim)]

            # The PD's admin API.
            doc = await get_json(cluster, f"/region/id/{rid}/check")
            assert doc["state"] == "mismatch" and doc["differing"] == [victim]
            listed = await get_json(cluster, "/regions/check?state=mismatch")
            assert [c["region_id"] for c in listed["checks"]] == [rid]

            # The store's own metrics and log: it compared with its leader.
            assert await mismatches(cluster, spec.index) >= 1
            for other in {1, 2, 3} - {spec.index}:
                assert await mismatches(cluster, other) == 0
            log = (tmp_path / "logs" / f"store-{spec.index}.log").read_text()
            lines = [line for line in log.splitlines() if "replicas differ" in line]
            assert lines and "ERROR" in lines[0], lines
            assert f"region {rid}: replicas differ at applied index" in lines[0]
            assert f"store {victim} has" in lines[0]
            pd_log = (tmp_path / "logs" / "pd.log").read_text()
            assert f"consistency check of region {rid} at applied index" in pd_log


async def test_periodic_checks_run_on_the_store_setting(tmp_path: Path) -> None:
    cluster = fast_cluster(tmp_path, stores=3, **{"--consistency-check-interval": "1s"})
    with trio.fail_after(120):
        async with serving(cluster, voters=3) as (pd, kv):
            await kv.put(b"a", b"1")
            region, _ = await pd.get_region(b"a")
            assert region is not None

            async def checked() -> bool:
                doc = await get_json(cluster, "/regions/check")
                return any(
                    c["region_id"] == region.id and c["check_id"] == 0 and c["state"] == "match"
                    for c in doc["checks"]
                )

            await eventually(checked, poll=0.2)
            assert all([await mismatches(cluster, i) == 0 for i in (1, 2, 3)])

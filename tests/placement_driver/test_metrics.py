"""The PD's `GET /metrics`: Prometheus text format on the HTTP port, over a
real HTTP connection, against a state the test sets up with fake stores'
heartbeats (no timers); and the operator counts behind it.

Rules: loopback only, port 0; every test runs under `trio.fail_after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from kvproto import pdpb
from kvproto.metapb import RegionEpoch
from kvproto.rpc import connect
from placement_driver.operator_controller import OperatorController
from placement_driver.operators import Operator, OperatorKind, SplitRegion
from placement_driver.server import PdServer
from placement_driver.testing import TEST_CLUSTER_CONFIG, open_pd
from tests.placement_driver.fake_stores import FakeStores
from tests.placement_driver.helpers import PdCaller, http_request
from tests.prometheus import Samples

TIMEOUT = 10


@pytest.fixture
async def quiet_pd(tmp_path: Path) -> AsyncIterator[PdServer]:
    """A PD whose replica checker and schedulers make no operators: only the test's."""
    config = {
        **TEST_CLUSTER_CONFIG,
        "replica_schedule_limit": 0,
        "leader_schedule_limit": 0,
        "region_schedule_limit": 0,
    }
    async with open_pd(tmp_path / "pd", config=config, seed=7) as server:
        yield server


async def scrape(pd: PdServer) -> Samples:
    r = await http_request(pd.addresses.http_url + "/metrics")
    assert r.status == 200
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    return Samples(r.body.decode())


async def test_metrics_show_stores_regions_leaders_operators_and_heartbeats(
    quiet_pd: PdServer,
) -> None:
    pd = quiet_pd
    with trio.fail_after(TIMEOUT):
        async with connect(pd.addresses.rpc, connect_timeout=5) as conn:
            caller = PdCaller(conn)
            fake = FakeStores(caller)
            await fake.bootstrap(3)
            s1, s2, s3 = fake.stores
            (rid,) = fake.regions
            before = fake.region(rid)
            op = pd.split_region(rid, (b"m",))
            await fake.heartbeat(rid)  # carries the split out, reports both halves
            assert op.status.value == "success" and len(fake.regions) == 2
            for region_id in sorted(fake.regions):  # the new region's leader speaks up
                await fake.heartbeat(region_id)
            # A heartbeat of the region as it was before the split is refused.
            stale = await caller.call(
                caller.heartbeat_request(before, term=1), pdpb.RegionHeartbeatResponse
            )
            assert stale.header.error is not None

            m = await scrape(pd)

        assert m.labelled("shardkv_pd_stores", "state") == {
            "Up": 3,
            "Disconnected": 0,
            "Down": 0,
            "Offline": 0,
            "Tombstone": 0,
        }
        assert m["shardkv_pd_regions"] == 2
        assert m.labelled("shardkv_pd_store_regions", "store") == {
            str(s1): 2,
            str(s2): 0,
            str(s3): 0,
        }
        assert m.labelled("shardkv_pd_store_leaders", "store") == {
            str(s1): 2,
            str(s2): 0,
            str(s3): 0,
        }
        split = {"kind": "admin", "type": "split-region"}
        assert m.get("shardkv_pd_operators_created_total", split) == 1
        assert m.get("shardkv_pd_operators_finished_total", {**split, "result": "success"}) == 1
        running = m.labelled("shardkv_pd_operators_running", "kind")
        assert running == {"admin": 0, "replica": 0, "leader": 0, "region": 0}
        assert m.types["shardkv_pd_scheduler_operators"] == "counter"
        # Every heartbeat is counted once, by result, and timed.
        ok = m.get("shardkv_pd_region_heartbeats_total", {"result": "ok"})
        refused = m.get("shardkv_pd_region_heartbeats_total", {"result": "stale_region"})
        assert ok is not None and ok >= 3 and refused == 1
        assert m["shardkv_pd_region_heartbeat_seconds_count"] == ok + refused
        assert m.get("shardkv_pd_region_heartbeat_seconds_bucket", {"le": "+Inf"}) == ok + refused
        assert m.types["shardkv_pd_region_heartbeat_seconds"] == "histogram"


async def test_metrics_of_a_fresh_pd_and_bad_requests(quiet_pd: PdServer) -> None:
    pd = quiet_pd
    with trio.fail_after(TIMEOUT):
        m = await scrape(pd)
        assert m["shardkv_pd_regions"] == 0
        assert m.labelled("shardkv_pd_stores", "state")["Up"] == 0
        assert m.get("shardkv_pd_region_heartbeat_seconds_count") == 0
        url = pd.addresses.http_url
        r = await http_request(url + "/metrics", method="HEAD")
        assert r.status == 200 and r.body == b""
        r = await http_request(url + "/metrics", method="POST", body=b"x")
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
        assert "read-only" in r.json()["error"]
        r = await http_request(url + "/metrics/extra")
        assert r.status == 404 and "no such endpoint" in r.json()["error"]


async def test_two_pds_in_one_process_keep_their_own_metrics(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_pd(tmp_path / "a") as a, open_pd(tmp_path / "b") as b:
            async with connect(a.addresses.rpc, connect_timeout=5) as conn:
                await FakeStores(PdCaller(conn)).bootstrap(1)
            assert (await scrape(a))["shardkv_pd_regions"] == 1
            assert (await scrape(b))["shardkv_pd_regions"] == 0


def test_the_controller_counts_operators_by_kind_type_result_and_scheduler() -> None:
    controller = OperatorController()

    def split(region_id: int) -> Operator:
        return Operator(
            region_id,
            "split-region",
            OperatorKind.ADMIN,
            (SplitRegion(1, (b"m",)),),
            RegionEpoch(1, 1),
        )

    controller.add(split(1), now=0.0)
    controller.add(split(2), now=0.0, scheduler="balance-region")
    controller.cancel(1, now=1.0, reason="test")
    assert controller.created_counts == {("admin", "split-region"): 2}
    assert controller.finished_counts == {("admin", "split-region", "canceled"): 1}
    assert controller.scheduler_counts == {"balance-region": 1}

"""A PD restarted while regions sleep: it learns their leaders from the
stores' first heartbeats (`report_leaders`), not a minute later when a
sleeping leader's periodic report comes due. Found by `shardkv chaos`: a
cluster whose PD was killed just before the clients stopped was still not
routable 60 s after healing.

Real processes on loopback; every wait bounded by `trio.fail_after`."""

from __future__ import annotations

from pathlib import Path

import trio

from kvproto.pd_client import open_pd_client
from tests.cluster.helpers import eventually, fast_cluster, serving
from tests.placement_driver.helpers import http_request
from tests.prometheus import Samples


async def test_a_restarted_pd_learns_the_leaders_of_sleeping_regions_at_once(
    tmp_path: Path,
) -> None:
    cluster = fast_cluster(tmp_path, stores=1)
    spec = cluster.store_specs[0]
    with trio.fail_after(90):
        async with serving(cluster) as (_, kv):
            for i in range(3):
                await kv.put(b"k%d" % i, b"v")

            async def asleep() -> bool:
                r = await http_request(spec.status_url + "/metrics")
                samples = Samples(r.body.decode())
                return samples["shardkv_store_regions_asleep"] == samples["shardkv_store_regions"]

            await eventually(asleep)
            assert cluster.pd is not None
            await cluster.kill_child(cluster.pd)
            await cluster.start_pd()
            async with open_pd_client([cluster.pd_address]) as fresh:

                async def leader_known() -> bool:
                    try:
                        _, leader = await fresh.get_region(b"k1")
                    except Exception:  # the PD is still starting
                        return False
                    return leader is not None

                # Sleeping leaders report every 60 s (asleep_region_heartbeat_interval):
                # within a few store heartbeats means the PD asked for them.
                with trio.fail_after(10):
                    await eventually(leader_known)
            # The regions slept through it: nothing but the report woke them.
            assert await asleep()

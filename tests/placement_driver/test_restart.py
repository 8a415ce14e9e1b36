"""A PD restarted on the same data directory keeps everything.

Rules: loopback only, port 0; every test runs under `trio.fail_after`.
"""

from __future__ import annotations

from pathlib import Path

import trio

from kvproto import pdpb
from kvproto.metapb import StoreState
from kvproto.rpc import connect
from placement_driver.testing import open_pd
from tests.factories import peer, region
from tests.placement_driver.helpers import PdCaller, bootstrap_cluster

TIMEOUT = 20


async def test_a_restart_keeps_cluster_id_stores_ids_config_and_regions(tmp_path: Path) -> None:
    data_dir = tmp_path / "pd"
    with trio.fail_after(TIMEOUT):
        async with open_pd(data_dir, id_alloc_step=10) as pd, connect(pd.addresses.rpc) as conn:
            caller = PdCaller(conn)
            stores = await bootstrap_cluster(caller, store_count=3)
            cluster_id = caller.cluster_id
            await caller.ok(
                pdpb.SetConfigRequest(caller.header(), (pdpb.ConfigItem("max_replicas", "5"),)),
                pdpb.SetConfigResponse,
            )
            first = (await caller.get_region(b"")).region
            assert first is not None
            (split,) = (
                await caller.ok(
                    pdpb.AskBatchSplitRequest(caller.header(), first, 1),
                    pdpb.AskBatchSplitResponse,
                )
            ).ids
            left = first.with_range(b"", b"m").with_epoch(pdpb.RegionEpoch(1, 2))
            right = region(
                split.new_region_id,
                b"m",
                version=2,
                peers=(peer(split.new_peer_ids[0], stores[0].id),),
            )
            await caller.region_heartbeat(left, term=2)
            await caller.region_heartbeat(right, term=1)
            before = [await caller.alloc_id() for _ in range(15)]  # crosses a block
            # Not waiting for the periodic region flush: shutdown flushes.

        async with open_pd(data_dir, id_alloc_step=10) as pd, connect(pd.addresses.rpc) as conn:
            caller = PdCaller(conn)
            r = await caller.ok(
                pdpb.IsBootstrappedRequest(caller.header()), pdpb.IsBootstrappedResponse
            )
            assert r.bootstrapped and caller.cluster_id == cluster_id
            listed = await caller.ok(
                pdpb.GetAllStoresRequest(caller.header()), pdpb.GetAllStoresResponse
            )
            assert listed.stores == tuple(stores)
            assert all(s.state == StoreState.UP for s in listed.stores)
            assert (await caller.config())["max_replicas"] == "5"
            assert await caller.scan() == [left, right]
            # Leaders are not persisted: they come back with the next heartbeat.
            assert (await caller.get_region(b"z")).leader is None
            after = [await caller.alloc_id() for _ in range(5)]
            assert min(after) > max(before)
            # A bootstrap is still refused.
            error = await caller.error(
                pdpb.BootstrapRequest(caller.header(), stores[0], first), pdpb.BootstrapResponse
            )
            assert error.code == pdpb.PdErrorCode.ALREADY_BOOTSTRAPPED


async def test_flags_and_pd_toml_win_over_the_stored_config_on_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "pd"
    with trio.fail_after(TIMEOUT):
        async with open_pd(data_dir, config={"max_replicas": 5, "region_max_keys": 10}):
            pass
        async with open_pd(data_dir, config={"max_replicas": 1}) as pd:
            assert pd.cluster.config.max_replicas == 1
            assert pd.cluster.config.region_max_keys == 10  # kept: not named again

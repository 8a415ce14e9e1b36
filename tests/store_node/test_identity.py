"""A store's identity at start against a real PD (in-process, loopback,
port 0): a removed store's data directory is refused with a clear message,
whether the PD still lists it as a Tombstone or took it off the list.

Rules: every test runs under `trio.fail_after`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from kvproto.metapb import StoreState
from kvproto.pd_client import open_pd_client
from placement_driver.testing import TEST_CLUSTER_CONFIG, open_pd
from store_node.bootstrap import DataDirMismatchError
from store_node.engine import Engine
from store_node.identity import ensure_identity

TIMEOUT = 10


async def test_a_removed_store_is_refused_at_start_even_once_off_the_store_list(
    tmp_path: Path,
) -> None:
    # One replica per region, so that the second store can be drained while
    # the first one stays Up.
    config = {**TEST_CLUSTER_CONFIG, "max_replicas": 1}
    first = Engine(tmp_path / "s1", sync=False)
    second = Engine(tmp_path / "s2", sync=False)
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                open_pd(tmp_path / "pd", config=config) as pd,
                open_pd_client([pd.addresses.rpc]) as client,
            ):
                kept, _ = await ensure_identity(first, client, "127.0.0.1:20161")
                ident, _ = await ensure_identity(second, client, "127.0.0.1:20162")
                store_id = ident.store_id
                pd.set_store_state(store_id, StoreState.OFFLINE)
                pd.set_store_state(store_id, StoreState.TOMBSTONE)
                message = (
                    f"store {store_id} was removed from the cluster (tombstone); "
                    "start with an empty --data-dir to join as a new store"
                )
                with pytest.raises(DataDirMismatchError) as listed:
                    await ensure_identity(second, client, "127.0.0.1:20162")
                assert str(listed.value) == message
                # Off the list, GetStore does not know it; PutStore still refuses it.
                removed = pd.cluster.remove_tombstone_stores(store_id)
                assert [s.id for s in removed] == [store_id]
                assert await client.get_store(store_id) is None
                with pytest.raises(DataDirMismatchError) as unlisted:
                    await ensure_identity(second, client, "127.0.0.1:20162")
                assert str(unlisted.value) == message
                assert [s.id for s in pd.cluster.stores()] == [kept.store_id]
    finally:
        first.close()
        second.close()

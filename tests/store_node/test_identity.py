"""A store's identity at start against a real PD (in-process, loopback,
port 0): a removed store's data directory is refused with a clear message,
whether the PD still lists it as a Tombstone or took it off the list; a
restored data directory bootstraps a new cluster and never joins one.

Rules: every test runs under `trio.fail_after`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from kvproto.metapb import StoreState
from kvproto.pd_client import PdClient, open_pd_client
from placement_driver.testing import TEST_CLUSTER_CONFIG, open_pd
from store_node import keys
from store_node.bootstrap import DataDirMismatchError, load_regions, read_store_ident
from store_node.engine import Engine, WriteBatch
from store_node.identity import RESTORED_BACKUP_KEY, ensure_identity
from store_node.peer_storage import RAFT_INIT_LOG_INDEX

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


def restored_engine(path: Path) -> Engine:
    """A data directory `shardkv restore` filled: data, and the mark."""
    engine = Engine(path, sync=False)
    batch = WriteBatch()
    batch.put(keys.DATA_DB, b"restored", b"1")
    batch.put(keys.META_DB, RESTORED_BACKUP_KEY, b"\x01" * 32)
    engine.write_kv_batch(batch)
    return engine


class LateBootstrapped:
    """A PD client that says "not bootstrapped" once although another store
    bootstrapped it: the race of two fresh stores, lost."""

    def __init__(self, pd: PdClient) -> None:
        self._pd = pd
        self._said = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pd, name)

    async def is_bootstrapped(self) -> bool:
        if not self._said:
            self._said = True
            return False
        return await self._pd.is_bootstrapped()


async def test_a_restored_data_dir_bootstraps_and_never_joins(tmp_path: Path) -> None:
    plain = Engine(tmp_path / "plain", sync=False)
    late = restored_engine(tmp_path / "late")
    joining = restored_engine(tmp_path / "joining")
    fresh = restored_engine(tmp_path / "fresh")
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                open_pd(tmp_path / "pd") as pd,
                open_pd_client([pd.addresses.rpc]) as client,
            ):
                await ensure_identity(plain, client, "127.0.0.1:20161")
                # Joining would leave the restored data outside every region.
                with pytest.raises(DataDirMismatchError, match="holds a restored backup"):
                    await ensure_identity(joining, client, "127.0.0.1:20162")
                assert read_store_ident(joining) is None
                # Found bootstrapped only when bootstrapping: refused too, and
                # the region it prepared (with the other PD's ids) dropped.
                with pytest.raises(DataDirMismatchError, match="holds a restored backup"):
                    await ensure_identity(late, LateBootstrapped(client), "127.0.0.1:20163")  # type: ignore[arg-type]
                assert load_regions(late) == [] and read_store_ident(late) is None
                assert late.kv_get(keys.DATA_DB, b"restored") == b"1"
            async with (
                open_pd(tmp_path / "pd2") as pd2,
                open_pd_client([pd2.addresses.rpc]) as client2,
            ):
                _, created = await ensure_identity(fresh, client2, "127.0.0.1:20164")
                [(region, apply_state)] = load_regions(fresh)
                assert created == [region.id]
                assert (region.start_key, region.end_key) == (b"", b"")
                assert apply_state.applied_index == RAFT_INIT_LOG_INDEX
    finally:
        for engine in (plain, late, joining, fresh):
            engine.close()

"""A store's identity at start against a real PD (in-process, loopback,
port 0): a removed store's data directory is refused with a clear message,
whether the PD still lists it as a Tombstone or took it off the list; a
restored data directory bootstraps a new cluster and never joins one.

Rules: every test runs under `trio.fail_after`.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kvproto.metapb import Store, StoreState
from kvproto.pd_client import PdClient, open_pd_client
from kvproto.rpc.errors import RpcConnectionLostError
from placement_driver.server import PdServer
from placement_driver.testing import TEST_CLUSTER_CONFIG, open_pd
from plumbing.nursery import open_background_nursery
from store_node import keys
from store_node.bootstrap import DataDirMismatchError, load_regions, read_store_ident
from store_node.engine import Engine, WriteBatch
from store_node.identity import RESTORED_BACKUP_KEY, ensure_identity
from store_node.peer_storage import RAFT_INIT_LOG_INDEX
from store_node.replace import AddressTakenError, ReplaceStoreError, replaced_store
from tests.kvproto.rpc_helpers import MemoryNetwork

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


# -- a store whose data was lost (store_node.replace) ------------------------------

DISCONNECT = 2.0  # TEST_CLUSTER_CONFIG's store_disconnect_time
LOST_ADDRESS = "127.0.0.1:20163"


@asynccontextmanager
async def pd_in_memory(tmp_path: Path) -> AsyncIterator[tuple[PdServer, PdClient]]:
    """A PD and a client of it over in-memory streams (virtual time under
    the autojump clock moves only when every task waits on a timer), with
    a first store registered (it bootstraps the cluster)."""
    async with open_pd(tmp_path / "pd") as pd, open_background_nursery() as nursery:
        network = MemoryNetwork(pd.rpc_server, nursery)
        async with open_pd_client(["memory"], open_stream=network.opener) as client:
            first = Engine(tmp_path / "first", sync=False)
            try:
                await ensure_identity(first, client, "127.0.0.1:20161")
            finally:
                first.close()
            yield pd, client
        nursery.cancel_scope.cancel()


async def register_lost_store(tmp_path: Path, pd: PdClient, *, wipe: bool = True) -> int:
    """A store at LOST_ADDRESS, stopped at once; with `wipe`, its data
    directory is lost. Its id."""
    engine = Engine(tmp_path / "lost", sync=False)
    try:
        ident, _ = await ensure_identity(engine, pd, LOST_ADDRESS)
    finally:
        engine.close()
    if wipe:
        shutil.rmtree(tmp_path / "lost")
    return ident.store_id


class AnswerLost:
    """A PD client whose ReplaceStore answer is lost after the PD took it."""

    def __init__(self, pd: PdClient) -> None:
        self._pd = pd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pd, name)

    async def replace_store(self, store: Store, replaced: int) -> None:
        await self._pd.replace_store(store, replaced)
        raise RpcConnectionLostError("connection lost")


async def test_a_fresh_store_at_a_taken_address_is_told_how_to_replace_the_store_there(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with pd_in_memory(tmp_path) as (_, client):
            lost = await register_lost_store(tmp_path, client)
            wiped = Engine(tmp_path / "lost", sync=False)
            try:
                with pytest.raises(AddressTakenError) as refused:
                    await ensure_identity(wiped, client, LOST_ADDRESS)
                assert read_store_ident(wiped) is None
            finally:
                wiped.close()
    assert str(refused.value) == (
        f"address {LOST_ADDRESS} is store {lost}'s (up), and this data directory holds no "
        f"store. If store {lost} lost its data, start this store with --replace-store {lost} "
        f"to join in its place (store {lost} becomes a Tombstone and its replicas are "
        "re-created); otherwise give this store another address (--advertise)"
    )


async def test_a_wiped_store_replaces_its_old_self_once_that_one_is_silent(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        async with pd_in_memory(tmp_path) as (pd, client):
            lost = await register_lost_store(tmp_path, client)
            wiped = Engine(tmp_path / "lost", sync=False)
            try:
                with pytest.raises(ReplaceStoreError, match=f"store {lost} may be alive"):
                    await ensure_identity(wiped, client, LOST_ADDRESS, replace=lost)
                assert pd.cluster.get_store(lost).state == StoreState.UP
                assert read_store_ident(wiped) is None
                await trio.sleep(DISCONNECT)
                ident, created = await ensure_identity(wiped, client, LOST_ADDRESS, replace=lost)
                assert ident.store_id != lost and created == []
                assert pd.cluster.get_store(lost).state == StoreState.TOMBSTONE
                assert pd.cluster.get_store(ident.store_id).address == LOST_ADDRESS
                assert replaced_store(wiped) == lost
                # The flag left in place (a unit file) does nothing more.
                again, _ = await ensure_identity(wiped, client, LOST_ADDRESS, replace=lost)
                assert again == ident
            finally:
                wiped.close()


async def test_replacing_a_store_needs_an_empty_data_directory(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        async with pd_in_memory(tmp_path) as (pd, client):
            lost = await register_lost_store(tmp_path, client, wipe=False)
            await trio.sleep(DISCONNECT)
            own, other, with_data = (
                Engine(tmp_path / name, sync=False) for name in ("lost", "first", "data")
            )
            batch = WriteBatch()
            batch.put(keys.DATA_DB, b"k", b"v")
            with_data.write_kv_batch(batch)
            try:
                with pytest.raises(
                    ReplaceStoreError, match=f"this data directory is store {lost}'s own"
                ):
                    await ensure_identity(own, client, LOST_ADDRESS, replace=lost)
                first = read_store_ident(other)
                assert first is not None
                with pytest.raises(
                    ReplaceStoreError, match=f"this one holds store {first.store_id}$"
                ):
                    await ensure_identity(other, client, LOST_ADDRESS, replace=lost)
                with pytest.raises(
                    ReplaceStoreError, match=r"empty data directory, and this one holds data$"
                ):
                    await ensure_identity(with_data, client, LOST_ADDRESS, replace=lost)
            finally:
                for engine in (own, other, with_data):
                    engine.close()
            assert pd.cluster.get_store(lost).state == StoreState.DISCONNECTED


async def test_a_replacement_whose_answer_was_lost_resumes_under_the_same_id(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        async with pd_in_memory(tmp_path) as (pd, client):
            lost = await register_lost_store(tmp_path, client)
            await trio.sleep(DISCONNECT)
            wiped = Engine(tmp_path / "lost", sync=False)
            try:
                with pytest.raises(RpcConnectionLostError):
                    await ensure_identity(wiped, AnswerLost(client), LOST_ADDRESS, replace=lost)  # type: ignore[arg-type]
                (registered,) = [
                    s.id
                    for s in pd.cluster.stores(exclude_tombstone=True)
                    if s.address == LOST_ADDRESS
                ]
                with pytest.raises(
                    ReplaceStoreError, match=f"start with --replace-store {lost} to finish"
                ):
                    await ensure_identity(wiped, client, LOST_ADDRESS)
                with pytest.raises(ReplaceStoreError, match="not of store 99"):
                    await ensure_identity(wiped, client, LOST_ADDRESS, replace=99)
                ident, _ = await ensure_identity(wiped, client, LOST_ADDRESS, replace=lost)
                assert ident.store_id == registered
                assert [s.id for s in pd.cluster.stores() if s.address == LOST_ADDRESS] == [
                    lost,
                    registered,
                ]
            finally:
                wiped.close()


# -- a restored data directory (shardkv restore) ------------------------------------


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
                # Nor in the place of a lost store.
                with pytest.raises(DataDirMismatchError, match="holds a restored backup"):
                    await ensure_identity(joining, client, "127.0.0.1:20162", replace=1)
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

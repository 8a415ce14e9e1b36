"""LmdbMetaStorage: what is saved is loaded back; one PD per directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvproto.metapb import RegionId, StoreState
from placement_driver.storage import (
    CorruptMetaError,
    DataDirLockedError,
    LmdbMetaStorage,
    StoredMeta,
)
from tests.factories import region, store


def test_everything_saved_is_loaded_back(tmp_path: Path) -> None:
    with LmdbMetaStorage(tmp_path / "pd") as storage:
        assert storage.load() == StoredMeta()
        storage.save_id_bound(1000)
        storage.save_bootstrap(77, store(1), region(1))
        storage.save_store(store(2))
        storage.save_store(store(2, address="127.0.0.1:3000"))  # replaced
        storage.save_store(store(3, state=StoreState.TOMBSTONE))
        storage.remove_store(3)  # its record goes, its id is remembered
        storage.save_config({"max_replicas": "5", "region_max_size": "1GiB"})
        storage.save_config({"max_replicas": "3"})  # the whole config is replaced
        storage.save_regions([region(1, b"", b"k", version=2), region(2, b"k", b"", version=2)], [])
        storage.save_regions([region(3, b"k", b"", version=3)], [RegionId(2)])
    with LmdbMetaStorage(tmp_path / "pd") as storage:
        meta = storage.load()
    assert meta.cluster_id == 77
    assert meta.id_bound == 1000
    assert meta.stores == [store(1), store(2, address="127.0.0.1:3000")]
    assert meta.config == {"max_replicas": "3"}
    assert meta.removed_stores == [3]
    assert meta.regions == [region(1, b"", b"k", version=2), region(3, b"k", b"", version=3)]


def test_store_states_are_stored_as_given(tmp_path: Path) -> None:
    with LmdbMetaStorage(tmp_path) as storage:
        storage.save_store(store(4, state=StoreState.TOMBSTONE))
        assert storage.load().stores[0].state == StoreState.TOMBSTONE


def test_a_second_pd_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with LmdbMetaStorage(tmp_path) as storage, pytest.raises(DataDirLockedError):
        LmdbMetaStorage(tmp_path)
    del storage
    with LmdbMetaStorage(tmp_path):  # the lock went with the first one
        pass


def test_the_map_grows_when_full(tmp_path: Path) -> None:
    with LmdbMetaStorage(tmp_path, map_size=64 << 10) as storage:
        many = [region(i, i.to_bytes(4, "big"), (i + 1).to_bytes(4, "big")) for i in range(1, 3000)]
        storage.save_regions(many, [])
        assert len(storage.load().regions) == len(many)


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "meta"), max_dbs=8)
    db = env.open_db(b"meta")
    with env.begin(write=True, db=db) as txn:
        txn.put(b"format", (99).to_bytes(8, "big"))
    env.close()
    with pytest.raises(CorruptMetaError, match="format 99"):
        LmdbMetaStorage(tmp_path)

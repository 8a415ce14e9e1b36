"""The LMDB engine: group commit, range deletes, scans, map growth, and the
LMDB-backed Raft log of one region (real LMDB in tmp dirs; no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft.errors import CompactedError, UnavailableError
from raft.types import ConfState, Entry, HardState
from store_node import keys
from store_node.engine import Engine, WriteBatch, scan_cursor
from store_node.peer_storage import PeerStorage
from store_node.records import ApplyState, encode_apply_state


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = Engine(tmp_path / "store", sync=False, map_size=1 << 20)
    yield e
    e.close()


def ents(lo: int, hi: int, term: int = 1, size: int = 8) -> list[Entry]:
    return [Entry(term=term, index=i, data=b"%d" % i * size) for i in range(lo, hi)]


def test_one_raft_batch_carries_several_regions(engine: Engine) -> None:
    batch = WriteBatch()
    stores = [PeerStorage(engine, rid, ConfState(voters=(1,)), ApplyState()) for rid in (1, 2, 3)]
    for s in stores:
        s.append(ents(1, 4, term=s.region_id), batch)
        s.set_hard_state(HardState(term=s.region_id, vote=1, commit=3), batch)
    engine.write_raft(batch)
    # One reopen later, each region reads back exactly its own log and state.
    reopened = [PeerStorage(engine, rid, ConfState(), ApplyState()) for rid in (1, 2, 3)]
    for s in reopened:
        assert s.last_index() == 3
        assert [e.term for e in s.entries(1, 4)] == [s.region_id] * 3
        assert s.hard_state == HardState(term=s.region_id, vote=1, commit=3)


def test_append_replaces_conflicting_suffix(engine: Engine) -> None:
    s = PeerStorage(engine, 7, ConfState(voters=(1,)), ApplyState())
    b = WriteBatch()
    s.append(ents(1, 11, term=1), b)
    engine.write_raft(b)
    b = WriteBatch()
    s.append(ents(5, 7, term=2), b)
    engine.write_raft(b)
    s2 = PeerStorage(engine, 7, ConfState(), ApplyState())
    assert s2.last_index() == 6
    assert [(e.index, e.term) for e in s2.entries(1, 7)] == [(i, 1) for i in range(1, 5)] + [
        (5, 2),
        (6, 2),
    ]
    with pytest.raises(UnavailableError):
        s2.entries(1, 8)


def test_truncation_keeps_term_at_compaction_point(engine: Engine) -> None:
    s = PeerStorage(engine, 1, ConfState(voters=(1,)), ApplyState())
    b = WriteBatch()
    s.append(ents(1, 21, term=3), b)
    engine.write_raft(b)
    s.apply_state = ApplyState(applied_index=20, applied_term=3)
    b = WriteBatch()
    s.truncate_to(10, 3, b)
    engine.write_raft(b)
    assert s.apply_state == ApplyState(20, 10, 3, 3)
    assert s.first_index() == 11
    assert s.term(10) == 3
    with pytest.raises(CompactedError):
        s.term(9)
    with pytest.raises(CompactedError):
        s.entries(10, 12)
    s.cache.clear()  # force reads from LMDB
    assert [e.index for e in s.entries(11, 21)] == list(range(11, 21))
    # Nothing of the prefix is left on disk.
    left = engine.raft_items(keys.LOG_DB, keys.raft_log_prefix(1), keys.raft_log_prefix(2))
    assert [keys.raft_log_index(k) for k, _ in left] == list(range(11, 21))


def test_entries_respect_max_bytes_but_return_at_least_one(engine: Engine) -> None:
    s = PeerStorage(engine, 1, ConfState(voters=(1,)), ApplyState())
    b = WriteBatch()
    s.append(ents(1, 11, size=100), b)
    engine.write_raft(b)
    s.cache.clear()
    assert len(s.entries(1, 11, max_bytes=1)) == 1
    got = s.entries(1, 11, max_bytes=500)
    assert 1 < len(got) < 10


def test_full_map_grows_and_keeps_every_write(engine: Engine) -> None:
    # The map starts at 1 MiB; write 8 MiB through both kinds of writes.
    value = b"v" * 4000
    for chunk in range(16):
        batch = WriteBatch()
        for i in range(128):
            batch.put(keys.DATA_DB, b"k%05d" % (chunk * 128 + i), value)
        engine.write_kv_batch(batch)
    engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"last", value))
    assert engine.kv.env.info()["map_size"] > 1 << 20
    items = engine.kv_items(keys.DATA_DB)
    assert len(items) == 16 * 128 + 1
    assert all(v == value for _, v in items)


def test_data_and_apply_state_commit_together(engine: Engine) -> None:
    def apply(txn):  # type: ignore[no-untyped-def]
        txn.put(keys.DATA_DB, b"a", b"1")
        txn.put(keys.APPLY_DB, keys.region_key(1), encode_apply_state(ApplyState(9, 5, 1)))
        raise RuntimeError("crash inside the transaction")

    with pytest.raises(RuntimeError):
        engine.write_kv(apply)
    assert engine.kv_get(keys.DATA_DB, b"a") is None
    assert engine.kv_get(keys.APPLY_DB, keys.region_key(1)) is None


@settings(max_examples=60, deadline=None)
@given(
    present=st.sets(st.binary(min_size=1, max_size=3), max_size=30),
    start=st.binary(max_size=3),
    end=st.binary(max_size=3),
    reverse=st.booleans(),
)
def test_scan_and_delete_range_match_a_sorted_list(
    tmp_path_factory: pytest.TempPathFactory,
    present: set[bytes],
    start: bytes,
    end: bytes,
    reverse: bool,
) -> None:
    e = Engine(tmp_path_factory.mktemp("scan"), sync=False)
    try:
        b = WriteBatch()
        for k in present:
            b.put(keys.DATA_DB, k, k)
        e.write_kv_batch(b)
        model = sorted(k for k in present if k >= start and (not end or k < end))
        if reverse:
            model.reverse()
        with e.read_kv() as txn:
            got = [
                bytes(k)
                for k, _ in scan_cursor(txn, e.kv_db(keys.DATA_DB), start, end, reverse=reverse)
            ]
            keys_only = list(
                scan_cursor(txn, e.kv_db(keys.DATA_DB), start, end, reverse=reverse, values=False)
            )
        assert got == model
        assert [(bytes(k), v) for k, v in keys_only] == [(k, b"") for k in model]
        deleted = e.write_kv(lambda txn: txn.delete_range(keys.DATA_DB, start, end))
        assert deleted == len(model)
        assert sorted(k for k, _ in e.kv_items(keys.DATA_DB)) == sorted(set(present) - set(model))
    finally:
        e.close()


def test_a_second_engine_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    from plumbing.dirlock import DataDirLockedError

    first = Engine(tmp_path / "store", sync=False)
    try:
        with pytest.raises(DataDirLockedError, match="another store process"):
            Engine(tmp_path / "store", sync=False)
    finally:
        first.close()
    Engine(tmp_path / "store", sync=False).close()  # free again once closed

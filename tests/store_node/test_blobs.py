"""Large values apart from kv/: blob files, pointers, reads that check them,
and collection that never deletes a value some state may still need (real
LMDB and files in tmp dirs)."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from store_node import blob_files as files_module
from store_node import keys
from store_node.blob_files import (
    POINTER_MAGIC,
    POINTER_SIZE,
    BlobError,
    decode_pointer,
    looks_like_pointer,
)
from store_node.blob_gc import collect
from store_node.engine import Engine, KvTxn, WriteBatch

DATA = keys.DATA_DB
THRESHOLD = 100


def make(path: Path, **kw: object) -> Engine:
    kw.setdefault("large_value_threshold", THRESHOLD)
    kw.setdefault("blob_file_size", 4096)
    return Engine(path, sync=True, map_size=1 << 20, **kw)  # type: ignore[arg-type]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make(tmp_path / "store")
    yield e
    e.close()


def put(engine: Engine, pairs: dict[bytes, bytes]) -> None:
    def fn(txn: KvTxn) -> None:
        for k, v in pairs.items():
            txn.put(DATA, k, v)

    engine.write_kv(fn)


def raw(engine: Engine, key: bytes) -> bytes | None:
    with engine.read_kv() as txn:
        v = txn.get(key, db=engine.kv_db(DATA))
        return None if v is None else bytes(v)


def blob_files(engine: Engine) -> list[str]:
    return sorted(p.name for p in (engine.data_dir / "blobs").iterdir())


def big(tag: int, n: int = 1000) -> bytes:
    return ((b"%d:" % tag) * n)[:n]


def test_a_long_value_goes_to_a_blob_file_and_reads_back_everywhere(engine: Engine) -> None:
    small, large = b"s" * THRESHOLD, big(1)
    put(engine, {b"a": small, b"b": large})
    assert raw(engine, b"a") == small  # at the threshold: kept in kv/
    pointer = raw(engine, b"b")
    assert pointer is not None and looks_like_pointer(pointer)
    assert decode_pointer(pointer).length == len(large)
    assert len(blob_files(engine)) == 1
    # Every way of reading sees the value, not the pointer.
    assert engine.kv_get(DATA, b"b") == large
    assert engine.kv_items(DATA) == [(b"a", small), (b"b", large)]
    with engine.read_kv() as txn:
        assert list(engine.scan_data(txn, b"", b"", reverse=True)) == [
            (b"b", large),
            (b"a", small),
        ]
        assert list(engine.scan_data_sizes(txn, b"", b"")) == [
            (b"a", len(small)),
            (b"b", len(large)),
        ]
    assert engine.pin_kv(lambda txn: list(txn.scan(DATA, b"", b""))).run() == [
        (b"a", small),
        (b"b", large),
    ]
    assert engine.write_kv(lambda txn: txn.get(DATA, b"b")) == large


def test_a_value_that_looks_like_a_pointer_is_stored_apart_and_read_back_as_itself(
    engine: Engine,
) -> None:
    fake = POINTER_MAGIC + bytes(POINTER_SIZE - len(POINTER_MAGIC))
    put(engine, {b"k": fake})
    stored = raw(engine, b"k")
    assert stored != fake and stored is not None and looks_like_pointer(stored)
    assert engine.kv_get(DATA, b"k") == fake


def test_threshold_zero_keeps_every_value_in_kv(tmp_path: Path) -> None:
    e = make(tmp_path / "s", large_value_threshold=0)
    try:
        put(e, {b"k": big(1, 100_000)})
        assert raw(e, b"k") == big(1, 100_000)
        assert blob_files(e) == []
    finally:
        e.close()


def test_batches_and_restarts_keep_values(tmp_path: Path) -> None:
    e = make(tmp_path / "s")
    b = WriteBatch()
    b.put(DATA, b"x", big(7))
    e.write_kv_batch(b)
    assert looks_like_pointer(raw(e, b"x") or b"")
    e.close()
    e = make(tmp_path / "s")
    try:
        assert e.kv_get(DATA, b"x") == big(7)
        put(e, {b"y": big(8)})  # appends go to a new file after a restart
        assert len(blob_files(e)) == 2
        assert e.kv_get(DATA, b"y") == big(8)
    finally:
        e.close()


def test_the_blob_file_is_synced_before_the_kv_transaction_commits(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes | None] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        # From another thread: what a reader (or a power loss) sees of kv/.
        t = threading.Thread(target=lambda: seen.append(raw(engine, b"k")))
        t.start()
        t.join()
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    put(engine, {b"k": big(1)})
    assert seen == [None]  # synced while kv/ did not point at it yet
    assert engine.kv_get(DATA, b"k") == big(1)


def test_a_damaged_record_or_missing_file_is_an_error_not_a_wrong_value(
    engine: Engine,
) -> None:
    put(engine, {b"a": big(1), b"b": big(2)})
    p = decode_pointer(raw(engine, b"b") or b"")
    path = engine.data_dir / "blobs" / blob_files(engine)[0]
    data = bytearray(path.read_bytes())
    data[p.offset + 20] ^= 0xFF  # inside b's value
    path.write_bytes(bytes(data))
    assert engine.kv_get(DATA, b"a") == big(1)
    with pytest.raises(BlobError, match="not key b'b'"):
        engine.kv_get(DATA, b"b")
    # A pointer to another key's record is refused as well.
    with pytest.raises(BlobError):
        engine.blobs.read(b"zz", decode_pointer(raw(engine, b"a") or b""))


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    e = make(tmp_path / "s")
    put(e, {b"a": big(1)})
    e.close()
    for name in os.listdir(tmp_path / "s" / "blobs"):
        os.unlink(tmp_path / "s" / "blobs" / name)
    e = make(tmp_path / "s")
    try:
        with pytest.raises(BlobError, match="missing"):
            e.kv_get(DATA, b"a")
    finally:
        e.close()


def fill_files(engine: Engine, n: int) -> dict[bytes, bytes]:
    """Write values over more than one file (4 KiB files, ~1 KiB values)."""
    pairs = {b"k%03d" % i: big(i) for i in range(n)}
    for k, v in pairs.items():
        put(engine, {k: v})
    return pairs


def test_a_file_nothing_points_at_is_deleted_only_after_kv_is_durable(engine: Engine) -> None:
    pairs = fill_files(engine, 12)
    files = blob_files(engine)
    assert len(files) >= 3
    first = engine.blobs.sealed()[0]
    # Overwrite (small) and delete every value of the first file.
    live_in_first = [k for k in pairs if decode_pointer(raw(engine, k) or b"").file == first]
    put(engine, {live_in_first[0]: b"small now"})

    def drop(txn: KvTxn) -> None:
        for k in live_in_first[1:]:
            txn.delete(DATA, k)

    engine.write_kv(drop)
    report = collect(engine, discardable_ratio=1.0)
    assert first in report.retired
    # kv/ is not yet synced past the drop: a power loss could bring the
    # pointers back, so the file stays.
    assert f"{first:016x}.blob" in blob_files(engine)
    engine.sync_kv()
    assert f"{first:016x}.blob" not in blob_files(engine)
    for k, v in pairs.items():
        if k not in live_in_first:
            assert engine.kv_get(DATA, k) == v


def test_a_file_stays_while_a_read_that_began_before_it_died_runs(engine: Engine) -> None:
    pairs = fill_files(engine, 12)
    first = engine.blobs.sealed()[0]
    victims = [k for k in pairs if decode_pointer(raw(engine, k) or b"").file == first]
    # A read begun now still sees the pointers into the first file.
    pin = engine.pin_kv(lambda txn: [txn.get(DATA, k) for k in victims])

    def drop(txn: KvTxn) -> None:
        for k in victims:
            txn.delete(DATA, k)

    engine.write_kv(drop)
    engine.sync_kv()
    collect(engine, discardable_ratio=1.0)
    engine.sync_kv()
    assert f"{first:016x}.blob" in blob_files(engine)
    assert pin.run() == [pairs[k] for k in victims]
    engine.sync_kv()  # the read ended: now it goes
    assert f"{first:016x}.blob" not in blob_files(engine)


def test_a_mostly_dead_file_has_its_live_values_moved_then_goes(engine: Engine) -> None:
    pairs = fill_files(engine, 12)
    first = engine.blobs.sealed()[0]
    in_first = [k for k in pairs if decode_pointer(raw(engine, k) or b"").file == first]
    assert len(in_first) >= 3
    keep = in_first[0]

    def drop(txn: KvTxn) -> None:
        for k in in_first[1:]:
            txn.delete(DATA, k)

    engine.write_kv(drop)
    report = collect(engine, discardable_ratio=0.5)
    assert first in report.rewritten
    assert report.rewritten_bytes == len(pairs[keep])
    assert decode_pointer(raw(engine, keep) or b"").file != first
    engine.sync_kv()
    assert f"{first:016x}.blob" not in blob_files(engine)
    assert engine.kv_get(DATA, keep) == pairs[keep]
    # Nothing else was touched.
    for k, v in pairs.items():
        if k not in in_first:
            assert engine.kv_get(DATA, k) == v


def test_files_left_by_a_crash_are_collected_after_the_first_sync(tmp_path: Path) -> None:
    e = make(tmp_path / "s")
    put(e, {b"a": big(1)})
    e.close()
    # A file whose transaction never committed, and a torn record at the
    # end of the live one (a crash mid-append).
    blobs = tmp_path / "s" / "blobs"
    (blobs / f"{99:016x}.blob").write_bytes(b"\x00" * 300)
    live = sorted(blobs.iterdir())[0]
    with open(live, "ab") as f:
        f.write(b"\x01\x02\x03")
    e = make(tmp_path / "s")
    try:
        report = collect(e, discardable_ratio=0.5)
        assert report.retired == [99]
        assert f"{99:016x}.blob" in blob_files(e)  # the opened state is not synced yet
        e.sync_kv()
        assert blob_files(e) == [live.name]
        assert e.kv_get(DATA, b"a") == big(1)
    finally:
        e.close()


def test_a_file_filled_by_a_transaction_not_yet_committed_is_not_collected(
    engine: Engine,
) -> None:
    """A file the writer moved past inside a transaction still in flight is
    not sealed: that transaction's pointers into it are not visible yet."""
    fill_files(engine, 3)
    before = set(engine.blobs.sealed())
    reports = []

    def fn(txn: KvTxn) -> None:
        for i in range(8):  # fills the active file and moves past it
            txn.put(DATA, b"n%d" % i, big(100 + i))
        reports.append(collect(engine, discardable_ratio=1.0))

    engine.write_kv(fn)
    assert set(engine.blobs.sealed()) > before
    assert all(set(r.retired) | set(r.rewritten) <= before for r in reports)
    engine.sync_kv()
    for i in range(8):
        assert engine.kv_get(DATA, b"n%d" % i) == big(100 + i)


def test_a_full_map_retries_with_the_values_kept(tmp_path: Path) -> None:
    e = Engine(tmp_path / "s", sync=True, map_size=64 << 10, large_value_threshold=100)
    try:
        pairs = {b"k%04d" % i: (big(i) if i % 2 else b"v%d" % i) for i in range(400)}
        put(e, pairs)
        assert dict(e.kv_items(DATA)) == pairs
    finally:
        e.close()


def test_random_writes_and_collections_keep_every_value(tmp_path: Path) -> None:
    rng = random.Random(5)
    e = make(tmp_path / "s")
    model: dict[bytes, bytes] = {}
    try:
        for step in range(300):
            k = b"k%02d" % rng.randrange(40)
            r = rng.random()
            if r < 0.6:
                v = big(step, rng.choice([10, 500, 1500]))
                put(e, {k: v})
                model[k] = v
            elif r < 0.8:
                e.write_kv(lambda txn, k=k: txn.delete(DATA, k))
                model.pop(k, None)
            elif r < 0.9:
                collect(e, discardable_ratio=rng.choice([0.3, 0.5, 1.0]))
            else:
                e.sync_kv()
            if step % 50 == 49:
                e.close()
                e = make(tmp_path / "s")
        assert dict(e.kv_items(DATA)) == model
        e.sync_kv()
        collect(e, discardable_ratio=0.01)
        e.sync_kv()
        collect(e, discardable_ratio=0.01)
        e.sync_kv()
        assert dict(e.kv_items(DATA)) == model
        live = sum(len(v) for v in model.values() if len(v) > THRESHOLD)
        # Collection leaves at most the active file's dead bytes over the live.
        assert e.blobs.usage().bytes <= live * 1.2 + 2 * 4096
    finally:
        e.close()


def test_a_pass_rewrites_within_its_budget_and_says_more_is_left(engine: Engine) -> None:
    pairs = fill_files(engine, 16)
    sealed = engine.blobs.sealed()
    assert len(sealed) >= 3
    # In every sealed file, all values but one deleted: each mostly dead.
    by_file: dict[int, list[bytes]] = {}
    for k in pairs:
        by_file.setdefault(decode_pointer(raw(engine, k) or b"").file, []).append(k)
    doomed = [k for f in sealed for k in by_file[f][1:]]
    engine.write_kv(lambda txn: [txn.delete(DATA, k) for k in doomed])
    first = collect(engine, discardable_ratio=0.5, max_rewrite_bytes=1500)
    assert len(first.rewritten) == 1 and first.more
    rest = collect(engine, discardable_ratio=0.5)
    assert len(rest.rewritten) == len(sealed) - 1 and not rest.more
    engine.sync_kv()
    for k, v in pairs.items():
        assert engine.kv_get(DATA, k) == (None if k in doomed else v)


def test_read_descriptors_stay_bounded_across_many_files(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_module, "MAX_OPEN_READERS", 2)
    pairs = fill_files(engine, 24)
    assert len(engine.blobs.sealed()) >= 4
    for _ in range(2):
        for k, v in pairs.items():
            assert engine.kv_get(DATA, k) == v
            assert engine.blobs.open_readers() <= 2
    # A read under way keeps its descriptor though others push it out.
    it = engine.blobs.records(engine.blobs.sealed()[0])
    first = next(it)
    for k, v in pairs.items():
        assert engine.kv_get(DATA, k) == v
    assert [first, *it] == list(engine.blobs.records(engine.blobs.sealed()[0]))


def test_a_pass_looks_at_the_files_looked_at_longest_ago(engine: Engine) -> None:
    pairs = fill_files(engine, 16)
    sealed = engine.blobs.sealed()
    engine.write_kv(lambda txn: [txn.delete(DATA, k) for k in pairs])
    retired = []
    for n in range(len(sealed)):
        report = collect(engine, discardable_ratio=0.5, max_files=1)
        retired += report.retired
        assert report.more == (n < len(sealed) - 1)
    assert sorted(retired) == sealed

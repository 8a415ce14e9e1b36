"""Backup copies at the store (store_node.backup_copies), on a real engine in
a tmp dir with a fake store loop whose read permits the test controls."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from kvproto.backuppb import (
    BackupChunkRequest,
    BackupPrepareRequest,
    BackupPrepareResponse,
    BackupReleaseRequest,
)
from kvproto.errorpb import DiskFull, EpochNotMatch, RegionError, ServerIsBusy
from kvproto.kvrpcpb import Context
from kvproto.rpc import RequestContext
from store_node import keys
from store_node.backup_copies import BackupCopies, data_digest
from store_node.bootstrap import write_initial_region
from store_node.engine import Engine, WriteBatch
from store_node.peer import ReadPermit
from store_node.snapshot import SnapDir, read_records
from tests.factories import peer, region

RC = RequestContext("test", 1, 1)
REGION = region(1, stores=(1,))


class FakeStore:
    """The engine, and read permits granted (or refused) as the test says."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.answer: ReadPermit | RegionError = ReadPermit(REGION)
        self.reads: list[tuple[Context, tuple[bytes, ...]]] = []

    def submit_read(
        self,
        ctx: Context,
        bounds: tuple[bytes, ...],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        self.reads.append((ctx, tuple(bounds)))
        done(self.answer)


class Disk:
    refusal: DiskFull | None = None


@contextmanager
def engine_with(tmp: Path, pairs: dict[bytes, bytes]) -> Iterator[Engine]:
    engine = Engine(tmp / "data")
    try:
        write_initial_region(engine, REGION)
        batch = WriteBatch()
        for k, v in pairs.items():
            batch.put(keys.DATA_DB, k, v)
        engine.write_kv_batch(batch)
        yield engine
    finally:
        engine.close()


def ctx(version: int = 1) -> Context:
    return Context(REGION.id, region(1, version=version).epoch, peer(10, 1))


def copies(store: FakeStore, tmp: Path, disk: Disk | None = None, **kw: object) -> BackupCopies:
    return BackupCopies(
        store,
        SnapDir(tmp / "data" / "snap"),
        disk or Disk(),
        trio.CapacityLimiter(1),
        **kw,  # type: ignore[arg-type]
    )


async def prepared(c: BackupCopies, key: bytes = b"") -> BackupPrepareResponse:
    resp = await c.prepare(BackupPrepareRequest(ctx(), key), RC)
    assert isinstance(resp, BackupPrepareResponse)
    return resp


async def fetch(c: BackupCopies, copy_id: int, size: int, chunk: int) -> bytes:
    out = b""
    while len(out) < size:
        r = await c.chunk(BackupChunkRequest(copy_id, len(out), chunk), RC)
        assert not r.error and r.data
        out += r.data
    return out


async def test_a_copy_holds_the_region_at_its_applied_index_and_is_released(
    tmp_path: Path,
) -> None:
    data = {b"k%03d" % i: b"v" * i for i in range(100)}
    with engine_with(tmp_path, data) as engine:
        store = FakeStore(engine)
        c = copies(store, tmp_path)
        resp = await prepared(c, b"k050")
        copy = resp.copy
        assert copy is not None and resp.region_error is None
        assert store.reads == [(ctx(), (b"k050",))]
        assert resp.store_id == 1
        assert copy.region == REGION and copy.applied_index == 5 and copy.keys == 100
        raw = await fetch(c, copy.copy_id, copy.size, 1000)
        assert len(raw) == copy.size and zlib.crc32(raw) == copy.crc32
        path = tmp_path / "copy.snap"
        path.write_bytes(raw)
        assert data_digest(path) == (100, copy.data_sha256)
        assert {k: v for s, k, v in read_records(path) if not s} == data
        # Beside snap/, not in it: Raft's own snapshot files are not touched.
        assert [p.parent.name for p in c.directory.iterdir()] == ["backup"]
        assert (await c.release(BackupReleaseRequest(copy.copy_id), RC)).released
        assert not any(c.directory.iterdir())
        assert not (await c.release(BackupReleaseRequest(copy.copy_id), RC)).released
        gone = await c.chunk(BackupChunkRequest(copy.copy_id, 0, 10), RC)
        assert "no backup copy" in gone.error


async def test_the_digest_is_of_the_data_alone_and_differs_when_a_value_does(
    tmp_path: Path,
) -> None:
    with engine_with(tmp_path, {b"a": b"1", b"b": b"2"}) as engine:
        c = copies(FakeStore(engine), tmp_path)
        first = (await prepared(c)).copy
        batch = WriteBatch()
        batch.put(keys.DATA_DB, b"b", b"3")
        engine.write_kv_batch(batch)
        second = (await prepared(c)).copy
        assert first is not None and second is not None
        assert first.keys == second.keys == 2
        assert first.data_sha256 != second.data_sha256
        assert first.copy_id != second.copy_id


async def test_refusals_come_back_as_region_errors(tmp_path: Path) -> None:
    with engine_with(tmp_path, {}) as engine:
        store = FakeStore(engine)
        disk = Disk()
        c = copies(store, tmp_path, disk, max_copies=1)
        store.answer = EpochNotMatch((REGION,))
        assert (await prepared(c)).region_error == EpochNotMatch((REGION,))
        # Split while the read waited: the permit's region is newer.
        newer = region(1, b"", b"m", version=2, stores=(1,))
        store.answer = ReadPermit(newer)
        assert (await prepared(c)).region_error == EpochNotMatch((newer,))
        store.answer = ReadPermit(REGION)
        disk.refusal = DiskFull("full")
        assert (await prepared(c)).region_error == DiskFull("full")
        disk.refusal = None
        assert (await prepared(c)).copy is not None
        busy = (await prepared(c)).region_error
        assert isinstance(busy, ServerIsBusy) and busy.backoff_ms > 0
        assert len(list(c.directory.iterdir())) == 1


async def test_a_destroyed_peer_has_no_copy(tmp_path: Path) -> None:
    with engine_with(tmp_path, {b"a": b"1"}) as engine:
        batch = WriteBatch()
        batch.delete(keys.APPLY_DB, keys.region_key(REGION.id))
        engine.write_kv_batch(batch)
        c = copies(FakeStore(engine), tmp_path)
        resp = await prepared(c)
        assert resp.copy is None and type(resp.region_error).__name__ == "RegionNotFound"
        assert not any(c.directory.iterdir())


async def test_bad_chunks_are_refused(tmp_path: Path) -> None:
    with engine_with(tmp_path, {b"a": b"1"}) as engine:
        c = copies(FakeStore(engine), tmp_path)
        copy = (await prepared(c)).copy
        assert copy is not None
        for offset, n in ((-1, 10), (copy.size + 1, 10), (0, 0)):
            r = await c.chunk(BackupChunkRequest(copy.copy_id, offset, n), RC)
            assert r.error.startswith("bad chunk") and r.data == b""
        # At the end: an empty chunk, not an error.
        r = await c.chunk(BackupChunkRequest(copy.copy_id, copy.size, 10), RC)
        assert r.error == "" and r.data == b""


async def test_copies_nobody_fetches_are_swept_and_a_restart_clears_them(
    tmp_path: Path,
) -> None:
    with engine_with(tmp_path, {b"a": b"1"}) as engine:
        c = copies(FakeStore(engine), tmp_path, idle_timeout=10.0)
        copy = (await prepared(c)).copy
        assert copy is not None
        now = trio.current_time()
        assert c.sweep(now + 5) == 0
        await c.chunk(BackupChunkRequest(copy.copy_id, 0, 1), RC)
        assert c.sweep(now + 9) == 0  # the chunk counted as use
        assert c.sweep(now + 100) == 1
        assert not any(c.directory.iterdir()) and c.held == 0
        assert (await prepared(c)).copy is not None
        assert c.held == 1
        again = copies(FakeStore(engine), tmp_path)
        assert not any(again.directory.iterdir())

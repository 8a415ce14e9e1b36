"""Disk faults below the store loop: the engine's fatal disk errors, LMDB
maps that fill up (grown, nothing lost, snapshot installs included), and
the disk monitor's reserve (fake disks under trio's MockClock)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio
import trio.testing

from kvproto.errorpb import DiskFull
from plumbing import failpoints
from store_node import keys
from store_node.apply import write_apply_state, write_region_state
from store_node.disk import DISK_FREE, ENGINE_SYNC, DiskFailure, DiskMonitor, DiskSpace
from store_node.engine import Engine, WriteBatch
from store_node.persist import persist_and_apply
from store_node.records import ApplyState
from store_node.region_tasks import SnapshotTask
from store_node.round_output import RoundOutput
from store_node.snapshot import SnapDir, descriptor_of, generate
from tests.factories import region as make_region

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_failpoints() -> Iterator[None]:
    failpoints.reset()
    yield
    failpoints.reset()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = Engine(tmp_path / "store", sync=True, map_size=MiB)
    yield e
    e.close()


def put_batch(n: int, size: int = 4000, prefix: bytes = b"k") -> WriteBatch:
    batch = WriteBatch()
    for i in range(n):
        batch.put(keys.LOG_DB, prefix + b"%06d" % i, b"v" * size)
    return batch


def fail_env_writes(
    env: Any, error: BaseException, *, after: int = 0, land: bool = False
) -> list[int]:
    """Make `env.write` raise `error` from its `after`+1-th call on (once
    the write landed, with `land`: the disk took it, the caller is told it
    failed). Returns the list its calls are counted in."""
    real = env.write
    calls: list[int] = []

    def write(fn: Any) -> Any:
        calls.append(1)
        if len(calls) <= after:
            return real(fn)
        if land:
            real(fn)
        raise error

    env.write = write
    return calls


# -- fatal disk errors ---------------------------------------------------------


@pytest.mark.parametrize("land", [False, True], ids=["lost", "landed"])
def test_a_failed_raft_write_fails_the_engine_for_good(
    engine: Engine, land: bool, caplog: pytest.LogCaptureFixture
) -> None:
    calls = fail_env_writes(engine.raft, OSError(errno.EIO, "Input/output error"), land=land)
    engine.write_raft(put_batch(1), must_sync=False)  # deferred: no write yet
    assert calls == []
    with caplog.at_level(logging.CRITICAL), pytest.raises(DiskFailure) as info:
        engine.write_raft(put_batch(1, prefix=b"j"))
    failure = info.value
    assert failure is engine.failed and not failure.disk_full
    assert str(engine.raft.path) in str(failure) and "Input/output error" in str(failure)
    assert str(failure).startswith("disk failure: ")
    # Never tried again, whatever the write: the same failure, logged once.
    with pytest.raises(DiskFailure) as again:
        engine.write_raft(put_batch(1, prefix=b"i"))
    assert again.value is failure and len(calls) == 1
    for attempt in (
        lambda: engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"a", b"1")),
        lambda: engine.write_kv_batch(put_batch(1)),
        engine.sync_kv,
    ):
        with pytest.raises(DiskFailure):
            attempt()
    assert engine.kv_get(keys.DATA_DB, b"a") is None
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and str(engine.raft.path) in critical[0].getMessage()


def test_a_failed_engine_closes_without_writing(tmp_path: Path) -> None:
    e = Engine(tmp_path / "store", sync=True)
    e.write_raft(put_batch(1, prefix=b"a"))
    e.write_raft(put_batch(1, prefix=b"b"), must_sync=False)  # deferred until close
    fail_env_writes(e.kv, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(DiskFailure):
        e.write_kv_batch(put_batch(1))
    e.close()  # no flush, no sync: nothing is tried after a failure
    reopened = Engine(tmp_path / "store", sync=True)
    try:
        assert [k for k, _ in reopened.raft_items(keys.LOG_DB)] == [b"a000000"]
    finally:
        reopened.close()


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), lmdb.DiskError("mdb_txn_commit", 28)],
    ids=["ENOSPC", "lmdb.DiskError"],
)
def test_a_write_out_of_space_is_a_disk_full_failure(engine: Engine, error: Exception) -> None:
    fail_env_writes(engine.kv, error)
    with pytest.raises(DiskFailure, match=r"^disk full: ") as info:
        engine.write_kv_batch(put_batch(1))
    assert info.value.disk_full and "free space, then restart" in str(info.value)


def test_a_sync_that_fails_is_a_disk_failure(engine: Engine) -> None:
    failpoints.enable(ENGINE_SYNC, "error(EIO)")
    with pytest.raises(DiskFailure, match=r"failpoint engine\.sync"):
        engine.sync_kv()
    failpoints.disable(ENGINE_SYNC)
    with pytest.raises(DiskFailure):  # cleared or not, the engine stays failed
        engine.write_raft(put_batch(1))


def test_an_lmdb_error_of_a_bad_call_is_not_a_disk_failure(engine: Engine) -> None:
    # A key LMDB cannot hold is a bug to see as such, not a disk to replace.
    with pytest.raises(lmdb.BadValsizeError):
        engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"k" * 600, b"v"))
    assert engine.failed is None
    engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"k", b"v"))


# -- LMDB maps that fill up ----------------------------------------------------


def test_a_full_raft_map_grows_and_keeps_every_write(engine: Engine) -> None:
    # 1 MiB map; 8 MiB of log through synced and deferred writes.
    for chunk in range(16):
        engine.write_raft(put_batch(128, prefix=b"%02d-" % chunk), must_sync=chunk % 2 == 0)
    engine.flush()
    assert engine.raft.env.info()["map_size"] > MiB
    items = engine.raft_items(keys.LOG_DB)
    assert len(items) == 16 * 128 and all(v == b"v" * 4000 for _, v in items)
    assert engine.failed is None


def test_a_snapshot_install_that_fills_the_map_is_retried_whole(tmp_path: Path) -> None:
    region = make_region(7, stores=(1,))
    source = Engine(tmp_path / "source", sync=False)
    try:
        data = WriteBatch()
        for i in range(2000):
            data.put(keys.DATA_DB, b"key%05d" % i, b"%05d" % i * 400)  # 4 MiB in all

        def fill(txn: Any) -> None:
            write_region_state(txn, region)
            write_apply_state(txn, region.id, ApplyState(20, 20, 3, 3))

        source.write_kv_batch(data)
        source.write_kv(fill)
        snap, path = generate(source, SnapDir(tmp_path / "snap"), region.id)
    finally:
        source.close()
    target = Engine(tmp_path / "target", sync=True, map_size=MiB)
    try:
        desc = descriptor_of(snap)
        out = RoundOutput(WriteBatch(), False, {}, {}, [], [])
        out.snapshot_tasks.append(SnapshotTask(region, path, desc.index, desc.term, ((b"", b""),)))
        out.raft_after_kv = put_batch(300)  # the log reset that follows, 1.2 MiB
        out.must_sync_after_kv = True
        persist_and_apply(target, out)
        assert target.kv.env.info()["map_size"] > MiB
        assert target.raft.env.info()["map_size"] > MiB
        items = target.kv_items(keys.DATA_DB)
        assert len(items) == 2000 and items[1] == (b"key00001", b"00001" * 400)
        assert len(target.raft_items(keys.LOG_DB)) == 300
    finally:
        target.close()


# -- the disk monitor ----------------------------------------------------------


@dataclass(slots=True)
class FakeDisk:
    free: int
    total: int = 1000 * MiB
    error: OSError | None = None
    asked: list[str] | None = None

    def __call__(self, path: str, /) -> DiskSpace:
        if self.asked is not None:
            self.asked.append(path)
        if self.error is not None:
            raise self.error
        return DiskSpace(self.total, self.free)


def monitor(disk: FakeDisk, min_free: int = 100 * MiB) -> DiskMonitor:
    return DiskMonitor(["/data"], min_free, probe=disk, interval=1.0, blocking=False)


async def test_the_reserve_is_entered_below_it_and_left_a_tenth_above(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    disk = FakeDisk(free=500 * MiB)
    m = monitor(disk)
    caplog.set_level(logging.INFO, logger="store_node.disk")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await trio.sleep(0.5)
        assert not m.full and m.refusal is None and m.space == DiskSpace(1000 * MiB, 500 * MiB)
        disk.free = 99 * MiB
        await trio.sleep(1)  # the next sample, a second after the last
        assert m.full
        assert m.refusal == DiskFull("99MiB free, below the reserve of 100MiB")
        for free in (105 * MiB, 109 * MiB, 50 * MiB):  # hovering at the line: still full
            disk.free = free
            await trio.sleep(1)
            assert m.full
        disk.free = 110 * MiB
        await trio.sleep(1)
        assert not m.full and m.refusal is None
        nursery.cancel_scope.cancel()
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in records] == ["WARNING", "INFO"]
    assert "disk full: 99MiB free in /data, below the reserve of 100MiB" in records[0][1]
    assert "client writes are refused until 110MiB are free" in records[0][1]
    assert "disk space is back: 110MiB free in /data" in records[1][1]


async def test_refresh_waits_for_a_sample_taken_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    disk = FakeDisk(free=500 * MiB)
    m = DiskMonitor(["/data"], 100 * MiB, probe=disk, interval=3600.0, blocking=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await m.refresh()
        disk.free = 0
        start = trio.current_time()
        await m.refresh()
        assert m.full and trio.current_time() == start  # at once, not in an hour
        nursery.cancel_scope.cancel()


def test_the_tightest_directory_counts_and_the_failpoint_overrides_it() -> None:
    asked: list[str] = []
    disks = {"/data": FakeDisk(free=900 * MiB), "/raft": FakeDisk(free=300 * MiB)}

    def probe(path: str, /) -> DiskSpace:
        asked.append(path)
        return disks[path](path)

    m = DiskMonitor(["/data", "/raft", None, "/data"], 100 * MiB, probe=probe)
    assert m.sample() == DiskSpace(1000 * MiB, 300 * MiB)
    assert asked == ["/data", "/raft"]
    failpoints.enable(DISK_FREE, "0")
    assert m.sample() == DiskSpace(1000 * MiB, 0)
    failpoints.enable(DISK_FREE, "return(2GiB)")
    assert m.sample().free == 2 << 30


async def test_a_disk_that_cannot_be_measured_keeps_the_state_and_warns_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    disk = FakeDisk(free=0)
    m = monitor(disk)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.run)
        await m.refresh()
        assert m.full
        disk.error = OSError(errno.EIO, "Input/output error")
        await trio.sleep(3.5)
        assert m.full
        nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if "cannot measure" in r.getMessage()]
    assert len(warnings) == 1 and "/data: [Errno 5] Input/output error" in warnings[0].getMessage()


def test_a_zero_reserve_never_refuses() -> None:
    m = monitor(FakeDisk(free=0), min_free=0)
    m.observe(DiskSpace(1000, 0))
    assert not m.full and m.state() == {"full": False, "free": 0, "total": 1000, "min_free": 0}

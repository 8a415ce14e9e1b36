"""Disk faults of a real store in-process (a real PD, TCP on 127.0.0.1,
LMDB in tmp dirs; every test bounded by `trio.fail_after`): a failed raft/
write stops the store and loses no acknowledged write; the store command's
exit paths."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from kvproto import kvrpcpb as kv
from kvproto.rpc import RpcCallError, connect
from placement_driver.testing import open_pd
from plumbing import failpoints
from plumbing.nursery import open_background_nursery
from store_node.disk import DiskFailure
from store_node.node import StoreInfo, StoreNode
from tests.store_node.test_disk import fail_env_writes
from tests.store_node.test_node import leader_context, running_store, store_config

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_failpoints() -> Iterator[None]:
    failpoints.reset()
    yield
    failpoints.reset()


class Started:
    """A task status that hands the store's info to `report`."""

    def __init__(self, report: Any) -> None:
        self.started = report


class Stopped:
    """How a store's `run` ended."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.done = trio.Event()


@asynccontextmanager
async def serving(node: StoreNode) -> AsyncIterator[tuple[StoreInfo, Stopped]]:
    """Run `node` (built by the test, its seams set) until the block ends
    or the store stops by itself; the `Stopped` says how it ended."""
    stopped = Stopped()

    async def run(task_status: trio.TaskStatus[StoreInfo]) -> None:
        started = False

        def report(info: StoreInfo) -> None:
            nonlocal started
            started = True
            task_status.started(info)

        try:
            await node.run(task_status=Started(report))  # type: ignore[arg-type]
        except Exception as e:
            if not started:
                raise  # a start error: the test's own
            stopped.error = e
        finally:
            stopped.done.set()

    async with open_background_nursery() as nursery:
        info = await nursery.start(run)
        try:
            yield info, stopped
        finally:
            nursery.cancel_scope.cancel()


def only(error: BaseException | None) -> BaseException:
    """The one error inside `error`'s (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        assert len(error.exceptions) == 1, error
        error = error.exceptions[0]
    assert error is not None
    return error


# -- a failed write is fatal -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "land"),
    [(errno.EIO, False), (errno.EIO, True), (errno.ENOSPC, False)],
    ids=["EIO-lost", "EIO-landed", "ENOSPC"],
)
async def test_a_failed_raft_write_stops_the_store_and_loses_no_acknowledged_write(
    tmp_path: Path, code: int, land: bool, caplog: pytest.LogCaptureFixture
) -> None:
    acked: dict[bytes, bytes] = {}
    with trio.fail_after(60):
        async with open_pd(tmp_path / "pd") as pd:
            cfg = store_config(tmp_path, "s1", pd.addresses.rpc)
            node = StoreNode(cfg)
            async with serving(node) as (info, stopped):
                ctx = await leader_context(pd.addresses.rpc)
                async with connect(info.address) as conn:
                    for i in range(10):
                        r = await conn.call(kv.RawPutRequest(ctx, b"a%02d" % i, b"%d" % i))
                        assert r == kv.RawWriteResponse()
                        acked[b"a%02d" % i] = b"%d" % i
                    # The disk fails at the 6th raft/ write from now (with
                    # `land`, after the write reached it: the caller is told
                    # it failed all the same).
                    calls = fail_env_writes(
                        node.engine.raft, OSError(code, os.strerror(code)), after=5, land=land
                    )

                    async def writer(w: int) -> None:
                        for i in range(1000):
                            key, value = b"w%d-%03d" % (w, i), b"%d" % i
                            try:
                                r = await conn.call(kv.RawPutRequest(ctx, key, value))
                            except RpcCallError:
                                return  # the store stopped
                            assert r == kv.RawWriteResponse()
                            acked[key] = value

                    async with trio.open_nursery() as writers:
                        for w in range(8):
                            writers.start_soon(writer, w)
                await stopped.done.wait()
            failure = only(stopped.error)
            assert isinstance(failure, DiskFailure) and failure is node.engine.failed
            assert failure.disk_full == (code == errno.ENOSPC)
            assert str(failure).startswith("disk full" if failure.disk_full else "disk failure")
            assert str(Path(cfg.data_dir) / "raft") in str(failure)
            assert len(calls) == 6  # nothing tried after the failure, not even at close
            critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
            assert [r.getMessage() for r in critical] == [str(failure)]
            assert len(acked) > 10

            # Restarted on the same data (the disk healthy again): every
            # acknowledged write is there.
            async with running_store(cfg) as (_, info):
                ctx = await leader_context(pd.addresses.rpc)
                async with connect(info.address) as conn:
                    r = await conn.call(kv.RawScanRequest(ctx, b"", b"", 10_000))
                    stored = dict(r.pairs)
                    assert {k: stored.get(k) for k in acked} == acked


# -- the store command ----------------------------------------------------------------------


def test_a_bad_failpoint_spec_stops_the_store_command_with_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, failpoints.ENV_VAR: "engine.snyc=eio"}
    cmd = [sys.executable, "-m", "shardkv", "store", "--data-dir", str(tmp_path / "d")]
    r = subprocess.run(
        [*cmd, "--pd", "127.0.0.1:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "SHARDKV_FAILPOINTS: unknown failpoint 'engine.snyc'" in r.stderr
    assert "Traceback" not in r.stderr


async def test_a_disk_failure_ends_the_store_command_with_exit_status_3(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_pd(tmp_path / "pd") as pd:
            data = tmp_path / "d"
            env = {**os.environ, failpoints.ENV_VAR: "engine.sync=eio"}
            cmd = [sys.executable, "-m", "shardkv", "store", "--data-dir", str(data)]
            cmd += ["--pd", pd.addresses.rpc, "--listen", "127.0.0.1:0"]
            r = await trio.run_process(
                cmd, env=env, capture_stdout=True, capture_stderr=True, check=False
            )
    stderr = r.stderr.decode()
    assert r.returncode == 3, stderr
    assert f"CRITICAL store_node.engine: disk failure: writing {data}" in stderr
    assert "Traceback" not in stderr

"""Disk faults of a real store in-process (a real PD, TCP on 127.0.0.1,
LMDB in tmp dirs; every test bounded by `trio.fail_after`): a failed raft/
write stops the store and loses no acknowledged write; a full disk refuses
every write with DiskFull while reads go on, shown on the status port;
failpoints set through the status port; the store command's exit paths."""

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

import client
from kvproto import kvrpcpb as kv
from kvproto.errorpb import DiskFull, RegionNotFound
from kvproto.rpc import RpcCallError, connect
from placement_driver.testing import open_pd
from plumbing import failpoints
from plumbing.config_file import ConfigError, load
from plumbing.nursery import open_background_nursery
from store_node.config import StoreConfig
from store_node.disk import DiskFailure
from store_node.node import StoreInfo, StoreNode
from store_node.status_http import StatusApp
from tests.placement_driver.helpers import http_request
from tests.prometheus import Samples
from tests.store_node.test_disk import FakeDisk, fail_env_writes
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


async def test_engine_sync_failpoint_set_through_the_status_port_stops_the_store(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with open_pd(tmp_path / "pd") as pd:
            cfg = store_config(
                tmp_path, "s1", pd.addresses.rpc, status="127.0.0.1:0", enable_failpoints=True
            )
            async with serving(StoreNode(cfg)) as (info, stopped):
                ctx = await leader_context(pd.addresses.rpc)
                r = await http_request(
                    f"http://{info.status_address}/failpoints/engine.sync", "PUT", b"eio"
                )
                assert (r.status, r.json()) == (
                    200,
                    {"name": "engine.sync", "action": "error(EIO)"},
                )
                async with connect(info.address) as conn:
                    with pytest.raises(RpcCallError):
                        await conn.call(kv.RawPutRequest(ctx, b"k", b"v"))
                await stopped.done.wait()
            failure = only(stopped.error)
            assert isinstance(failure, DiskFailure) and "failpoint engine.sync" in str(failure)


# -- a full disk refuses writes -----------------------------------------------------------


WRITES: list[Any] = [
    lambda ctx: kv.RawPutRequest(ctx, b"n", b"1"),
    lambda ctx: kv.RawBatchPutRequest(ctx, ((b"n", b"1"), (b"o", b"2"))),
    lambda ctx: kv.RawDeleteRequest(ctx, b"a"),
    lambda ctx: kv.RawBatchDeleteRequest(ctx, (b"a", b"b")),
    lambda ctx: kv.RawDeleteRangeRequest(ctx, b"a", b"z"),
    lambda ctx: kv.RawCompareAndSetRequest(ctx, b"a", b"1", b"2"),
]


async def status_of(url: str) -> dict[str, Any]:
    r = await http_request(url + "/status")
    assert r.status == 200
    document: dict[str, Any] = r.json()
    return document


async def metrics_of(url: str) -> Samples:
    r = await http_request(url + "/metrics")
    assert r.status == 200
    return Samples(r.body.decode())


async def test_a_full_disk_refuses_every_write_and_serves_reads(tmp_path: Path) -> None:
    disk = FakeDisk(free=10 << 30)
    with trio.fail_after(60):
        async with open_pd(tmp_path / "pd") as pd:
            cfg = store_config(
                tmp_path, "s1", pd.addresses.rpc, status="127.0.0.1:0", min_free_disk=100 * MiB
            )
            node = StoreNode(cfg)
            node.disk.probe, node.disk.blocking = disk, False
            async with (
                serving(node) as (info, _),
                connect(info.address) as conn,
                client.connect(pd.addresses.rpc, timeout=1.0) as kvc,
            ):
                url = f"http://{info.status_address}"
                ctx = await leader_context(pd.addresses.rpc)
                await kvc.batch_put([(b"a", b"1"), (b"b", b"2")])
                assert (await status_of(url))["disk"] == {
                    "full": False,
                    "free": 10 << 30,
                    "total": disk.total,
                    "min_free": 100 * MiB,
                }

                disk.free = 50 * MiB
                await node.disk.refresh()
                for make in WRITES:
                    r = await conn.call(make(ctx))
                    assert r.region_error == DiskFull("50MiB free, below the reserve of 100MiB")
                # Routing errors come first: the leader may be elsewhere.
                wrong = kv.Context(ctx.region_id + 100, ctx.region_epoch, ctx.peer)
                r = await conn.call(kv.RawPutRequest(wrong, b"n", b"1"))
                assert isinstance(r.region_error, RegionNotFound)
                # Reads go on: at the leader, its lease or not, and scans.
                assert await kvc.get(b"a") == b"1"
                assert await kvc.batch_get([b"a", b"b"]) == {b"a": b"1", b"b": b"2"}
                assert await kvc.scan(b"", b"") == [(b"a", b"1"), (b"b", b"2")]
                r = await conn.call(kv.RawGetRequest(ctx, b"b"))
                assert r == kv.RawGetResponse(value=b"2")
                # The client library retries for its deadline, then says why.
                with pytest.raises(client.StoreDiskFull) as refused:
                    await kvc.put(b"n", b"1")
                assert refused.value.store_id == info.store_id
                assert f"store {info.store_id} is out of disk space" in str(refused.value)
                assert isinstance(refused.value, client.DeadlineExceeded)
                assert (await status_of(url))["disk"]["full"] is True
                m = await metrics_of(url)
                assert (m["shardkv_store_disk_full"], m["shardkv_store_disk_free_bytes"]) == (
                    1,
                    50 * MiB,
                )

                disk.free = 200 * MiB
                await node.disk.refresh()
                await kvc.put(b"n", b"1")
                assert await kvc.get(b"n") == b"1"
                assert (await status_of(url))["disk"]["full"] is False
                assert (await metrics_of(url))["shardkv_store_disk_full"] == 0


async def test_the_disk_free_failpoint_over_the_status_port_fills_and_frees_the_disk(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with open_pd(tmp_path / "pd") as pd:
            cfg = store_config(
                tmp_path, "s1", pd.addresses.rpc, status="127.0.0.1:0", enable_failpoints=True
            )
            node = StoreNode(cfg)
            async with serving(node) as (info, _), connect(info.address) as conn:
                url = f"http://{info.status_address}/failpoints"
                ctx = await leader_context(pd.addresses.rpc)
                r = await http_request(f"{url}/disk.free", "PUT", b"0")
                assert (r.status, r.json()) == (200, {"name": "disk.free", "action": "return(0)"})
                await node.disk.refresh()
                r = await conn.call(kv.RawPutRequest(ctx, b"k", b"v"))
                assert isinstance(r.region_error, DiskFull)
                r = await http_request(url)
                assert r.json()["set"] == {"disk.free": "return(0)"}
                assert set(r.json()["known"]) >= {"disk.free", "engine.sync"}

                r = await http_request(f"{url}/disk.free", "DELETE")
                assert (r.status, r.json()["was_set"]) == (200, True)
                await node.disk.refresh()
                r = await conn.call(kv.RawPutRequest(ctx, b"k", b"v"))
                assert r == kv.RawWriteResponse()

                # Bad requests are refused, and change nothing.
                for method, path, body, status in [
                    ("PUT", "/disk.free", b"eio", 400),
                    ("PUT", "/disk.free", b"lots", 400),
                    ("PUT", "/disk.free", b"\xff", 400),
                    ("PUT", "/disk.fre", b"0", 404),
                    ("DELETE", "/nope", b"", 404),
                    ("POST", "/disk.free", b"0", 405),
                    ("PUT", "/disk.free", b"0" * 5000, 413),
                ]:
                    r = await http_request(url + path, method, body)
                    assert r.status == status, (path, body, r.body)
                    assert "error" in r.json()
                assert failpoints.current() == {}


def test_failpoints_are_refused_without_enable_failpoints() -> None:
    app = StatusApp({})
    for method, path in [("PUT", "/failpoints/disk.free"), ("GET", "/failpoints")]:
        page, _ = app.respond(method, path, b"0")
        assert page.status == 403 and b"--enable-failpoints" in page.body
    assert failpoints.current() == {}


# -- the store command ----------------------------------------------------------------------


def test_the_reserve_is_a_size_setting() -> None:
    settings = {"data_dir": "d", "pd": "127.0.0.1:1"}
    assert load(StoreConfig, overrides=settings).min_free_disk == 256 * MiB
    cfg = load(StoreConfig, overrides={**settings, "min_free_disk": "1GiB"})
    assert cfg.min_free_disk == 1 << 30
    with pytest.raises(ConfigError, match="min_free_disk"):
        load(StoreConfig, overrides={**settings, "min_free_disk": "-1"})


def test_failpoints_at_run_time_need_the_status_port() -> None:
    settings = {"data_dir": "d", "pd": "127.0.0.1:1", "enable_failpoints": "true"}
    with pytest.raises(ConfigError, match="enable_failpoints needs a status port"):
        load(StoreConfig, overrides=settings)
    assert load(StoreConfig, overrides={**settings, "status": "127.0.0.1:0"}).enable_failpoints
    assert not load(StoreConfig, overrides={"data_dir": "d"}).enable_failpoints


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

"""`shardkv playground` as a user runs it: a subprocess that prints the
cluster's addresses, serves a write and a read, and leaves no child behind
on Ctrl-C (or when it is killed outright). Loopback only; every test is
bounded by `trio.fail_after`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import client
from client.admin_http import PdAdminClient
from client.errors import ClientError
from kvproto.pd_client import open_pd_client
from shardkv.local_cluster import under_replicated
from tests.placement_driver.helpers import http_request
from tests.prometheus import Samples


def processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (here: a data dir path)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


async def start_playground(data_dir: Path, *extra: str) -> tuple[trio.Process, str, str]:
    """The playground's process, its PD address and its banner."""
    argv = [sys.executable, "-m", "shardkv", "playground", "--stores", "2", *extra]
    proc = await trio.lowlevel.open_process(
        [*argv, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = b""
    while b"Ctrl-C stops the cluster" not in out:
        chunk = await proc.stdout.receive_some()
        assert chunk, f"playground exited early: {out.decode()}"
        out += chunk
    m = re.search(rb"PD:\s+(\S+)", out)
    assert m is not None
    return proc, m.group(1).decode(), out.decode()


def status_urls(banner: str) -> list[str]:
    return sorted(re.findall(r"status: (http://\S+)/status", banner))


async def check_metrics_and_status(banner: str) -> None:
    """The banner names the PD's /metrics and each store's status port;
    they answer, and agree with a 2-store cluster that took a write."""
    m = re.search(r"metrics:\s+(http://\S+)", banner)
    assert m is not None
    r = await http_request(m.group(1))
    assert r.status == 200
    assert Samples(r.body.decode()).labelled("shardkv_pd_stores", "state")["Up"] == 2
    urls = status_urls(banner)
    assert len(urls) == 2
    leaders = 0
    for url in urls:
        r = await http_request(url + "/status")
        assert r.status == 200 and r.json()["region_count"] >= 1
        leaders += r.json()["leader_count"]
        r = await http_request(url + "/metrics")
        assert Samples(r.body.decode())["shardkv_store_rounds_total"] > 0
    assert leaders >= 1


async def wait_gone(marker: str) -> None:
    # They are the playground's children, not ours: nothing to wait on but /proc.
    while processes_mentioning(marker):  # noqa: ASYNC110
        await trio.sleep(0.1)


async def test_playground_serves_and_ctrl_c_leaves_no_child(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    with trio.fail_after(90):
        proc, pd, banner = await start_playground(data_dir)
        try:
            # "Up" means replicated: 2 stores, 2 voters in every region.
            async with open_pd_client([pd]) as pd_client:
                assert await under_replicated(pd_client, 2) == []
            async with client.connect([pd]) as kv:
                await kv.put(b"hello", b"world")
                assert await kv.get(b"hello") == b"world"
            await check_metrics_and_status(banner)
            children = [p for p in processes_mentioning(str(data_dir)) if p != proc.pid]
            assert len(children) == 3  # the PD and two stores
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
            await wait_gone(str(data_dir))
        finally:
            proc.kill()
        # The kept data dir restarts the same cluster, data and ports included.
        proc, pd, again = await start_playground(data_dir)
        try:
            assert status_urls(again) == status_urls(banner)
            async with client.connect([pd]) as kv:
                assert await kv.get(b"hello") == b"world"
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        await wait_gone(str(data_dir))


async def test_children_die_with_a_killed_playground(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    with trio.fail_after(90):
        proc, _, _ = await start_playground(data_dir)
        proc.kill()
        await proc.wait()
        await wait_gone(str(data_dir))


async def test_playground_with_tls_serves_clients_that_trust_its_ca(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    with trio.fail_after(90):
        proc, pd, banner = await start_playground(data_dir, "--tls")
        try:
            m = re.search(r"TLS CA:\s+(\S+)", banner)
            assert m is not None
            ca = m.group(1)
            assert f"--tls-ca {ca} put hello world" in banner
            async with client.connect([pd], tls_ca=ca) as kv:
                await kv.put(b"hello", b"tls")
                assert await kv.get(b"hello") == b"tls"
            async with client.connect([pd], timeout=2.0) as kv:  # no TLS: no answer
                with pytest.raises(ClientError):
                    await kv.get(b"hello")
            m = re.search(r"admin API: (https://\S+)/pd/api/v1/stores", banner)
            assert m is not None
            ctl = PdAdminClient(m.group(1), tls_ca=ca)
            stores = await trio.to_thread.run_sync(ctl.get, "/stores")
            assert len(stores["stores"]) == 2
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
            await wait_gone(str(data_dir))
        finally:
            proc.kill()

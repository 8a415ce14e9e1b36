"""`shardkv chaos` as a user runs it: a real local cluster, clients whose
every call is recorded, each fault kind injected on a seeded schedule, the
cluster healed, every key read back and the history checked. It exits 0
when the history is linearizable, and 1 when a client saw something the
store never held (a lying client stands in for a bug here)."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import client.rawkv
from kvproto.pd_client import open_pd_client
from shardkv.__main__ import main
from shardkv.chaos import FAULTS, ReplicaState, netns, replica_mismatches
from shardkv.chaos.processes import listening_pid
from shardkv.local_cluster import LocalCluster, wait_replicated


def _chaos(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardkv", "chaos", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


NO_PARTITIONS = netns.unavailable()


def test_a_60_second_seeded_run_covers_every_fault_kind_and_is_linearizable(
    tmp_path: Path,
) -> None:
    out = tmp_path / "chaos.json"
    r = _chaos("--seconds", "60", "--seed", "7", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: linearizable" in r.stdout
    assert re.search(
        r"replicas: \d+ regions, \d+ copies compared, \d+ behind, 0 differing", r.stdout
    )
    doc = json.loads(out.read_text())
    assert doc["seed"] == 7 and doc["verdict"] == "linearizable"
    # Partitions need a network namespace and nft (.ci/run installs nftables).
    expected = set(FAULTS) - ({"partition"} if NO_PARTITIONS else set())
    assert {f["kind"] for f in doc["faults"]} == expected
    lasting = {"kill", "pause", "pd-kill", "partition", "disk"}  # not the operators
    assert all(f["healed_at"] is not None for f in doc["faults"] if f["kind"] in lasting)
    outcomes = [op["outcome"] for op in doc["operations"]]
    assert outcomes.count("OK") > 1000


@pytest.mark.skipif(NO_PARTITIONS is not None, reason=f"no partitions here: {NO_PARTITIONS}")
def test_partitions_of_every_kind_leave_the_history_linearizable(tmp_path: Path) -> None:
    # The first partition cuts the busiest leader off from its peers and the
    # PD while the clients still reach it: its lease must run out before a
    # new leader's does, or a client reads a stale value.
    out = tmp_path / "partitions.json"
    r = _chaos("--faults", "partition", "--seconds", "26", "--seed", "11", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    modes = [f["target"].split(":")[0] for f in doc["faults"]]
    assert modes[0] == "isolate-leader"
    assert set(modes) == {"isolate-leader", "split", "one-way", "pd"}
    # The cut was real: answers paused while the cut-off leader's lease ran
    # out and the others elected a new one (about an election timeout).
    first = doc["faults"][0]
    done = sorted(
        op["complete"]
        for op in doc["operations"]
        if op["outcome"] == "OK" and first["at"] <= op["complete"] <= first["healed_at"]
    )
    gaps = [b - a for a, b in itertools.pairwise([first["at"], *done])]
    assert max(gaps) > 0.5
    assert doc["verdict"] == "linearizable"


def test_crash_matrix_repeated_sigkill_of_every_store_under_writes(tmp_path: Path) -> None:
    # Kills only, one every 1-3 s for 16 s, 16 clients: every acknowledged
    # write must be there, none applied twice (the linearizability check,
    # with deletes in the mix), and the copies of every region equal.
    out = tmp_path / "crash.json"
    r = _chaos(
        "--faults", "kill", "--seconds", "16", "--clients", "16", "--seed", "5", "--out", str(out)
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    killed = {f["target"] for f in doc["faults"] if f["kind"] == "kill"}
    assert len(killed) == 3  # every store
    assert re.search(r"copies compared, \d+ behind, 0 differing", r.stdout)


def test_a_stale_read_is_a_violation_and_exit_status_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_get = client.rawkv.Client.get
    calls = 0

    async def lying_get(self: client.rawkv.Client, key: bytes, **kw: object) -> bytes | None:
        nonlocal calls
        calls += 1
        value = await real_get(self, key, **kw)  # type: ignore[arg-type]
        return b"never written" if calls % 50 == 0 else value

    monkeypatch.setattr(client.rawkv.Client, "get", lying_get)
    code = main(["chaos", "--seconds", "4", "--seed", "3", "--faults", "transfer"])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "verdict: VIOLATION" in captured.out
    assert "never written" in captured.err


def test_copies_at_the_same_applied_index_must_hold_the_same_data() -> None:
    copies = [
        ReplicaState(1, 2, version=3, applied_index=40, checksum=0xAA),
        ReplicaState(2, 2, version=3, applied_index=40, checksum=0xAA),
        ReplicaState(3, 2, version=3, applied_index=38, checksum=0x11),  # behind: not compared
        ReplicaState(1, 5, version=4, applied_index=9, checksum=0xBB),
        ReplicaState(2, 5, version=4, applied_index=9, checksum=0xBC),  # diverged
        ReplicaState(3, 5, version=2, applied_index=30, checksum=0x00),  # an older epoch
    ]
    differ, behind = replica_mismatches(copies)
    assert behind == 2
    assert differ == [
        "region 5 at applied index 9: copies differ (store 1: 000000bb, store 2: 000000bc)"
    ]


async def test_a_cluster_started_elsewhere_gets_operator_faults_and_kills_when_allowed(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path / "cluster", stores=3)
    out = tmp_path / "foreign.json"
    base = [sys.executable, "-m", "shardkv", "chaos", "--pd", "", "--pd-http", ""]
    try:
        with trio.fail_after(180):
            await cluster.start()
            async with open_pd_client([cluster.pd_address]) as pd:
                await cluster.wait_ready(pd)
                await wait_replicated(pd, 3)
            base[5], base[7] = cluster.pd_address, cluster.http_url
            refused = await trio.run_process(
                [*base, "--faults", "kill"], capture_stdout=True, capture_stderr=True, check=False
            )
            assert refused.returncode == 2
            assert b"need --allow-kill" in refused.stderr

            async def supervise() -> None:  # systemd's Restart=always, for the kills
                while True:
                    for spec in cluster.store_specs:
                        if not spec.child.running:
                            await cluster.start_store(spec.index)
                    await trio.sleep(0.2)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(supervise)
                r = await trio.run_process(
                    [*base, "--allow-kill", "--seconds", "18", "--seed", "4", "--out", str(out)],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                nursery.cancel_scope.cancel()
            assert r.returncode == 0, (r.stdout + r.stderr).decode()
            assert b"replicas: not compared (a cluster started elsewhere)" in r.stdout
            doc = json.loads(out.read_text())
            kinds = {f["kind"] for f in doc["faults"]}
            assert kinds == {"transfer", "split", "move", "kill", "pause"}
            # Keys of its own, so a cluster's other data never reads as a violation.
            assert all(
                bytes.fromhex(op["args"]["key"]).startswith(b"chaos-00000004-")
                for op in doc["operations"]
            )
    finally:
        await cluster.aclose()


def test_a_listening_pid_is_found_from_the_address(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listening_pid(f"127.0.0.1:{port}") == os.getpid()
    assert listening_pid(f"127.0.0.1:{port}") is None


def test_partitions_are_refused_with_the_reason_where_they_cannot_be_made(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(netns, "unavailable", lambda: "nft is not installed")
    monkeypatch.delenv(netns.ENV, raising=False)
    assert main(["chaos", "--faults", "partition", "--seconds", "1"]) == 2
    assert "cannot make partitions: nft is not installed" in capsys.readouterr().err

"""`shardkv chaos` as a user runs it: a real local cluster, clients whose
every call is recorded, each fault kind injected on a seeded schedule, the
cluster healed, every key read back and the history checked. It exits 0
when the history is linearizable, and 1 when a client saw something the
store never held (a lying client stands in for a bug here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import client.rawkv
from shardkv.__main__ import main
from shardkv.chaos import FAULTS, ReplicaState, replica_mismatches


def test_a_40_second_seeded_run_covers_every_fault_kind_and_is_linearizable(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardkv",
            "chaos",
            "--seconds",
            "40",
            "--seed",
            "7",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: linearizable" in r.stdout
    assert re.search(
        r"replicas: \d+ regions, \d+ copies compared, \d+ behind, 0 differing", r.stdout
    )
    doc = json.loads(out.read_text())
    assert doc["seed"] == 7 and doc["verdict"] == "linearizable"
    assert {f["kind"] for f in doc["faults"]} == set(FAULTS)
    outcomes = [op["outcome"] for op in doc["operations"]]
    assert outcomes.count("OK") > 1000


def test_crash_matrix_repeated_sigkill_of_every_store_under_writes(tmp_path: Path) -> None:
    # Kills only, one every 1-3 s for 16 s, 16 clients: every acknowledged
    # write must be there, none applied twice (the linearizability check,
    # with deletes in the mix), and the copies of every region equal.
    out = tmp_path / "crash.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardkv",
            "chaos",
            "--faults",
            "kill",
            "--seconds",
            "16",
            "--clients",
            "16",
            "--seed",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    killed = {f["target"] for f in doc["faults"] if f["kind"] == "kill"}
    assert killed == {"store process 1", "store process 2", "store process 3"}
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

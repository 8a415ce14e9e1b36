"""`shardkv restore`: its checks refuse a bad backup, a non-empty data
directory and a bootstrapped PD before anything is written; a good backup
is loaded and its store bootstraps a new cluster holding all of the data.

The PD is in-process (placement_driver.testing, loopback, port 0); the
command runs its own trio in a thread (`trio.to_thread`). Every test that
does I/O with the PD runs under `trio.fail_after`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import client
from client.backup_manifest import MANIFEST, Manifest
from kvproto.epoch import INITIAL_EPOCH
from kvproto.metapb import Peer, PeerId, Region, RegionId, Store, StoreId, StoreState
from kvproto.pd_client import open_pd_client
from placement_driver.testing import open_pd
from plumbing.nursery import open_background_nursery
from shardkv.__main__ import main
from shardkv.restore import Refused, prepare
from store_node.bootstrap import load_regions
from store_node.config import StoreConfig
from store_node.engine import Engine
from store_node.node import StoreNode
from store_node.peer_storage import RAFT_INIT_LOG_INDEX
from tests.shardkv.backups import make_backup, restored_digests

LIMIT = 30
DATA = {b"k%04d" % i: b"value %d" % i * (1 + i % 7) for i in range(500)}
SPLITS = (b"k0100", b"k0250", b"k0400")


@pytest.fixture
def backup(tmp_path: Path) -> tuple[Path, Manifest]:
    directory = tmp_path / "backup"
    return directory, make_backup(directory, tmp_path / "scratch", DATA, SPLITS)


def restore_args(backup_dir: Path, data_dir: Path, pd: str) -> list[str]:
    return ["restore", "--from", str(backup_dir), "--data-dir", str(data_dir), "--pd", pd]


def config(data_dir: Path, pd: str) -> StoreConfig:
    return StoreConfig(
        data_dir=str(data_dir),
        listen="127.0.0.1:0",
        pd=(pd,),
        tick_interval=0.02,
        store_heartbeat_interval=0.2,
        region_heartbeat_interval=0.3,
    )


@asynccontextmanager
async def store_on(cfg: StoreConfig) -> AsyncIterator[StoreNode]:
    async with open_background_nursery() as nursery:
        node = StoreNode(cfg)
        await nursery.start(node.run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()


def refused(capsys: pytest.CaptureFixture[str], args: list[str], data_dir: Path, why: str) -> None:
    """The command exits 2 saying `why`, and the data dir is as it was."""
    before = sorted(data_dir.rglob("*")) if data_dir.exists() else None
    assert main(args) == 2
    err = capsys.readouterr().err
    assert why in err and "nothing was written" in err, err
    after = sorted(data_dir.rglob("*")) if data_dir.exists() else None
    assert after == before


# -- refusals before anything is written ------------------------------------------


def test_a_corrupted_file_is_refused_before_anything_is_written(
    tmp_path: Path, backup: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, manifest = backup
    victim = directory / manifest.regions[2].file
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    # No PD listens there: the checks come first.
    args = restore_args(directory, tmp_path / "s1", "127.0.0.1:1")
    refused(capsys, args, tmp_path / "s1", "checksum mismatch")


def test_a_file_whose_data_differs_from_the_manifest_is_refused(
    tmp_path: Path, backup: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    # Size and CRC-32 right (the manifest edited to match), the data digest not.
    directory, _ = backup
    doc = json.loads((directory / MANIFEST).read_text())
    doc["regions"][1]["data_sha256"] = "00" * 32
    (directory / MANIFEST).write_text(json.dumps(doc))
    args = restore_args(directory, tmp_path / "s1", "127.0.0.1:1")
    refused(capsys, args, tmp_path / "s1", "data checksum mismatch")


def test_a_missing_file_is_refused(
    tmp_path: Path, backup: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, manifest = backup
    (directory / manifest.regions[0].file).unlink()
    args = restore_args(directory, tmp_path / "s1", "127.0.0.1:1")
    refused(capsys, args, tmp_path / "s1", manifest.regions[0].file)


def test_a_backup_without_manifest_is_refused_as_incomplete(
    tmp_path: Path, backup: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = backup
    (directory / MANIFEST).unlink()
    args = restore_args(directory, tmp_path / "s1", "127.0.0.1:1")
    refused(capsys, args, tmp_path / "s1", "did not finish")


def test_a_manifest_whose_ranges_leave_a_gap_is_refused(
    tmp_path: Path, backup: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = backup
    doc = json.loads((directory / MANIFEST).read_text())
    del doc["regions"][1]
    (directory / MANIFEST).write_text(json.dumps(doc))
    args = restore_args(directory, tmp_path / "s1", "127.0.0.1:1")
    refused(capsys, args, tmp_path / "s1", "do not tile the key space")


def test_a_data_dir_that_is_not_empty_is_refused(
    tmp_path: Path, backup: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = backup
    data_dir = tmp_path / "s1"
    data_dir.mkdir()
    (data_dir / "something").write_text("mine")
    args = restore_args(directory, data_dir, "127.0.0.1:1")
    refused(capsys, args, data_dir, "is not empty")
    # A store's data directory too.
    Engine(tmp_path / "s2").close()
    refused(
        capsys,
        restore_args(directory, tmp_path / "s2", "127.0.0.1:1"),
        tmp_path / "s2",
        "is not empty",
    )


def test_replacing_a_store_is_refused(
    tmp_path: Path, backup: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = backup
    args = [*restore_args(directory, tmp_path / "s1", "127.0.0.1:1"), "--replace-store", "4"]
    refused(capsys, args, tmp_path / "s1", "--replace-store joins an existing cluster")


async def test_a_bootstrapped_pd_is_refused_before_anything_is_written(
    tmp_path: Path, backup: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = backup
    with trio.fail_after(LIMIT):
        async with open_pd(tmp_path / "pd") as pd, open_pd_client([pd.addresses.rpc]) as pdc:
            store = Store(StoreId(1), "127.0.0.1:9", StoreState.UP)
            first = Region(RegionId(2), b"", b"", INITIAL_EPOCH, (Peer(PeerId(3), StoreId(1)),))
            await pdc.bootstrap(store, first)
            args = restore_args(directory, tmp_path / "s1", pd.addresses.rpc)
            code = await trio.to_thread.run_sync(main, args)
    assert code == 2
    err = capsys.readouterr().err
    assert "already bootstrapped" in err and "nothing was written" in err
    assert not (tmp_path / "s1").exists()


def test_an_unreachable_pd_fails_before_anything_is_written(
    tmp_path: Path,
    backup: tuple[Path, Manifest],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shardkv.restore.PD_CHECK_TIMEOUT", 1.0)
    directory, _ = backup
    assert main(restore_args(directory, tmp_path / "s1", "127.0.0.1:1")) == 1
    assert "cannot ask the PD" in capsys.readouterr().err
    assert not (tmp_path / "s1").exists()


# -- a restore ---------------------------------------------------------------------------


async def test_a_restored_store_bootstraps_a_cluster_holding_all_of_the_data(
    tmp_path: Path, backup: tuple[Path, Manifest]
) -> None:
    directory, manifest = backup
    data_dir = tmp_path / "s1"
    with trio.fail_after(LIMIT):
        async with open_pd(tmp_path / "pd") as pd:
            cfg = config(data_dir, pd.addresses.rpc)
            await trio.to_thread.run_sync(prepare, directory, cfg)
            assert restored_digests(data_dir, manifest) == [
                (r.keys, r.data_sha256) for r in manifest.regions
            ]
            # Loaded already: a second run resumes instead of refusing.
            await trio.to_thread.run_sync(prepare, directory, cfg)
            async with store_on(cfg), client.connect([pd.addresses.rpc]) as kvc:
                got = dict(await kvc.scan(b"", b"", limit=10_000))
                assert got == DATA
                await kvc.put(b"new", b"1")
            engine = Engine(data_dir)
            try:
                [(region, apply_state)] = load_regions(engine)
            finally:
                engine.close()
            assert (region.start_key, region.end_key) == (b"", b"")
            assert apply_state.applied_index > RAFT_INIT_LOG_INDEX  # its own writes since
            # Bootstrapped now: restore on it again starts its store; another
            # backup is refused.
            await trio.to_thread.run_sync(prepare, directory, cfg)
            other = make_backup(tmp_path / "other", tmp_path / "scratch2", {b"a": b"b"}, ())
            assert other.total_keys == 1
            with pytest.raises(Refused, match="not empty"):
                await trio.to_thread.run_sync(prepare, tmp_path / "other", cfg)

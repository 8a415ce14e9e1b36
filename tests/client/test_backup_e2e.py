"""`shardkv ctl backup` end to end, in-process: a real PD
(placement_driver.testing.open_pd) and a real store (StoreNode), trio over
TCP on 127.0.0.1 port 0, LMDB in tmp dirs. Every test is bounded by
`trio.fail_after`. Regions are split through the store's own split path
(`StoreNode.split_region`), in the backup's hook between two regions, so a
split "during the backup" happens at a known point of the walk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import client
from client import backup
from client.backup_manifest import MANIFEST, Manifest, RegionEntry, read_manifest

pytest.importorskip("placement_driver.testing", reason="needs the PD package (placement_driver/)")

from kvproto.backuppb import (
    BackupChunkRequest,
    BackupChunkResponse,
    BackupPrepareRequest,
    BackupPrepareResponse,
    BackupReleaseRequest,
)
from kvproto.pd_client import open_pd_client
from kvproto.rpc import RequestContext
from placement_driver.testing import open_pd
from plumbing.nursery import open_background_nursery
from shardkv.__main__ import main
from store_node.backup_copies import BackupCopies, data_digest
from store_node.config import StoreConfig
from store_node.node import StoreNode
from store_node.snapshot import read_records

LIMIT = 60


@asynccontextmanager
async def one_store(
    tmp: Path, cluster_token: Path | None = None, client_token: Path | None = None
) -> AsyncIterator[tuple[str, StoreNode]]:
    """A PD and one store that bootstrapped it: (PD address, store); with
    the token files, both run with them."""
    async with (
        open_pd(tmp / "pd", cluster_token_file=cluster_token, client_token_file=client_token) as pd,
        open_background_nursery() as nursery,
    ):
        node = StoreNode(
            StoreConfig(
                data_dir=str(tmp / "s1"),
                listen="127.0.0.1:0",
                pd=(pd.addresses.rpc,),
                tick_interval=0.02,
                store_heartbeat_interval=0.2,
                region_heartbeat_interval=0.3,
                cluster_token_file=str(cluster_token or ""),
                client_token_file=str(client_token or ""),
            )
        )
        await nursery.start(node.run)
        try:
            yield pd.addresses.rpc, node
        finally:
            nursery.cancel_scope.cancel()


async def split(node: StoreNode, key: bytes) -> None:
    """Split the region holding `key` at it and wait until the store leads
    both parts."""
    core = node.core
    assert core is not None
    region = next(p.region for p in core.peers.values() if p.region.contains(key))
    # The split asks the PD for ids of the region, which it must know (a
    # region made by the previous split is known after its heartbeat).
    async with open_pd_client(node.config.pd) as pd:
        while True:
            known, _ = await pd.get_region(key)
            if known is not None and (known.id, known.epoch) == (region.id, region.epoch):
                break
            await trio.sleep(0.01)
    await node.split_region(region.id, (key,))
    # No "region changed" event crosses the store's loop: poll.
    while not any(  # noqa: ASYNC110
        p.region.start_key == key and p.is_leader() for p in core.peers.values()
    ):
        await trio.sleep(0.01)


def file_pairs(directory: Path, entry: RegionEntry) -> dict[bytes, bytes]:
    """The data pairs of a region file, each checked to be in its range."""
    out = {}
    for is_session, k, v in read_records(directory / entry.file):
        if not is_session:
            assert k >= entry.start_key and (not entry.end_key or k < entry.end_key)
            out[k] = v
    return out


def check_files(directory: Path, manifest: Manifest) -> dict[bytes, bytes]:
    """Every file against its manifest entry; all their pairs."""
    pairs: dict[bytes, bytes] = {}
    for r in manifest.regions:
        assert (directory / r.file).stat().st_size == r.size
        assert data_digest(directory / r.file) == (r.keys, r.data_sha256)
        got = file_pairs(directory, r)
        assert not pairs.keys() & got.keys()
        pairs.update(got)
    return pairs


async def test_backup_copies_each_region_once_while_regions_split(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with one_store(tmp_path) as (pd, node), client.connect([pd]) as kvc:
            data = {b"k%03d" % i: b"v%d" % i for i in range(200)}
            await kvc.batch_put(data)
            for key in (b"k050", b"k100", b"k150"):
                await split(node, key)
            seen: list[tuple[bytes, bytes]] = []

            async def after_region(entry: RegionEntry) -> None:
                seen.append((entry.start_key, entry.end_key))
                if len(seen) == 1:
                    # The region just copied, and the next one, which the
                    # walk's cache still holds whole.
                    await split(node, b"k025")
                    await split(node, b"k075")

            out = tmp_path / "backup"
            manifest = await backup.backup([pd], out, after_region=after_region)
            ranges = [(r.start_key, r.end_key) for r in manifest.regions]
            assert (
                ranges
                == seen
                == [
                    (b"", b"k050"),
                    (b"k050", b"k075"),
                    (b"k075", b"k100"),
                    (b"k100", b"k150"),
                    (b"k150", b""),
                ]
            )
            assert check_files(out, manifest) == data
            assert manifest.total_keys == 200
            assert read_manifest(out)[0] == manifest
            # Every copy was released: nothing left on the store.
            assert not any((Path(node.config.data_dir) / "snap" / "backup").iterdir())
            # The epoch recorded is the region's as copied: after the split.
            core = node.core
            assert core is not None
            by_start = {p.region.start_key: p.region for p in core.peers.values()}
            for r in manifest.regions[1:]:
                assert by_start[r.start_key].epoch.version == r.version


async def test_every_acknowledged_write_before_the_backup_is_in_it(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with one_store(tmp_path) as (pd, node), client.connect([pd]) as kvc:
            await split(node, b"m")
            acked: dict[bytes, bytes] = {}
            writing = trio.Event()

            async def writer() -> None:
                i = 0
                while True:
                    key = b"%s%05d" % (b"am"[i % 2 : i % 2 + 1], i)
                    await kvc.put(key, b"x%d" % i)
                    acked[key] = b"x%d" % i
                    i += 1
                    if i == 50:
                        writing.set()

            async with trio.open_nursery() as n:
                n.start_soon(writer)
                await writing.wait()
                before = dict(acked)
                manifest = await backup.backup([pd], tmp_path / "backup")
                n.cancel_scope.cancel()
            pairs = check_files(tmp_path / "backup", manifest)
            for key, value in before.items():
                assert pairs.get(key) == value
            # Writes acknowledged later may or may not be in it, but nothing
            # that was never written.
            assert pairs.keys() <= acked.keys()


async def test_backup_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    out = tmp_path / "backup"
    out.mkdir()
    (out / "old").write_text("x")
    with trio.fail_after(LIMIT):
        async with one_store(tmp_path) as (pd, _):
            with pytest.raises(client.ClientError, match="not empty"):
                await backup.backup([pd], out)
    assert sorted(p.name for p in out.iterdir()) == ["old"]


async def test_the_command_prints_progress_and_writes_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(LIMIT):
        async with one_store(tmp_path) as (pd, node), client.connect([pd]) as kvc:
            await kvc.batch_put({b"a": b"1", b"z": b"2"})
            await split(node, b"m")
            out = tmp_path / "backup"
            code = await trio.to_thread.run_sync(
                main, ["ctl", "backup", "--pd", pd, "--to", str(out)]
            )
            assert code == 0
    captured = capsys.readouterr()
    assert "backup: 1 regions" in captured.err and "backup: 2 regions" in captured.err
    assert "2 regions, 2 keys" in captured.out and MANIFEST in captured.out
    manifest, _ = read_manifest(out)
    assert check_files(out, manifest) == {b"a": b"1", b"z": b"2"}


async def test_a_copy_lost_while_it_is_fetched_is_prepared_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = BackupCopies.chunk
    prepare = BackupCopies.prepare
    prepared: list[int] = []
    failed: list[int] = []

    async def count_prepare(
        self: BackupCopies, req: BackupPrepareRequest, ctx: RequestContext
    ) -> BackupPrepareResponse:
        resp = await prepare(self, req, ctx)
        if resp.copy is not None:
            prepared.append(resp.copy.copy_id)
        return resp

    async def lose_first(
        self: BackupCopies, req: BackupChunkRequest, ctx: RequestContext
    ) -> BackupChunkResponse:
        if not failed:
            # As if the store restarted, or swept it.
            failed.append(req.copy_id)
            await self.release(BackupReleaseRequest(req.copy_id), ctx)
        return await chunk(self, req, ctx)

    monkeypatch.setattr(BackupCopies, "prepare", count_prepare)
    monkeypatch.setattr(BackupCopies, "chunk", lose_first)
    with trio.fail_after(LIMIT):
        async with one_store(tmp_path) as (pd, node), client.connect([pd]) as kvc:
            await kvc.batch_put({b"k%d" % i: b"v" * 100 for i in range(50)})
            manifest = await backup.backup([pd], tmp_path / "backup")
            assert check_files(tmp_path / "backup", manifest) == {
                b"k%d" % i: b"v" * 100 for i in range(50)
            }
            assert failed == prepared[:1] and len(prepared) == 2
            assert not any((Path(node.config.data_dir) / "snap" / "backup").iterdir())
    assert not list((tmp_path / "backup").glob("*.part"))


async def test_a_cluster_run_with_tokens_is_backed_up_with_the_client_token(
    tmp_path: Path,
) -> None:
    cluster, clients = tmp_path / "cluster.token", tmp_path / "client.token"
    cluster.write_text("cluster-secret-1\n")
    clients.write_text("client-secret-2\n")
    with trio.fail_after(LIMIT):
        async with (
            one_store(tmp_path, cluster, clients) as (pd, _),
            client.connect([pd], token="client-secret-2") as kvc,
        ):
            await kvc.put(b"k", b"v")
            manifest = await backup.backup([pd], tmp_path / "backup", token="client-secret-2")
            assert check_files(tmp_path / "backup", manifest) == {b"k": b"v"}
            quick = backup.BackupOptions(region_timeout=1.0)
            with pytest.raises(client.ClientError):
                await backup.backup([pd], tmp_path / "nope", token="wrong", options=quick)
            assert not (tmp_path / "nope" / MANIFEST).exists()


async def test_a_backup_that_gives_up_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(
        self: BackupCopies, req: BackupChunkRequest, ctx: RequestContext
    ) -> BackupChunkResponse:
        return BackupChunkResponse(error="gone")

    monkeypatch.setattr(BackupCopies, "chunk", never)
    out = tmp_path / "backup"
    with trio.fail_after(LIMIT):
        async with one_store(tmp_path) as (pd, node):
            with pytest.raises(client.DeadlineExceeded, match="gone"):
                await backup.backup([pd], out, options=backup.BackupOptions(region_timeout=1.0))
            assert not any((Path(node.config.data_dir) / "snap" / "backup").iterdir())
    assert list(out.iterdir()) == []  # no manifest, no part file

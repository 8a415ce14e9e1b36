"""Backup copies of regions: the store's side of `shardkv ctl backup`.

A copy is prepared at the region's leader (`BackupPrepareRequest`, routed
like a KV request): first a permit for a strong read (the leader's lease or
a ReadIndex round, as a linearizable get: everything committed before the
request arrived is then applied here), then the snapshot generator
(`store_node.snapshot.generate`) writes the region's pairs, region state
and applied index from ONE kv/ read transaction into a file of its own
under `snap/backup/`. The applied index of that transaction is at least
the permit's, so the copy holds every write acknowledged before the
request arrived; and since region, index and data come from one
transaction, the copy is consistent even if the region split or the peer
moved after the permit: it then describes the region as it was at that
index, which is what the tool continues from.

The tool pulls the file in chunks from this store and releases it; a copy
idle for `idle_timeout` is deleted (a tool that died leaks nothing), and at
most `max_copies` exist at once (more: ServerIsBusy, the client backs off).
Copies do not survive a restart: the directory is emptied at start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from kvproto.backuppb import (
    BackupChunkRequest,
    BackupChunkResponse,
    BackupCopy,
    BackupPrepareRequest,
    BackupPrepareResponse,
    BackupReleaseRequest,
    BackupReleaseResponse,
)
from kvproto.errorpb import DiskFull, EpochNotMatch, RegionError, RegionNotFound, ServerIsBusy
from kvproto.kvrpcpb import Context
from kvproto.rpc import Handler, RequestContext
from store_node.engine import Engine
from store_node.peer import ReadPermit
from store_node.snapshot import SnapDir, SnapshotFileError, descriptor_of, generate, read_records

log = logging.getLogger(__name__)

# The largest chunk a store sends, whatever the tool asks (frames are
# limited to 64 MiB; a chunk is read in one piece).
MAX_CHUNK = 8 << 20
_LENS = struct.Struct(">II")


def digest_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """The count and SHA-256 of `pairs` (in key order), each hashed as its
    key and value lengths (4 bytes big-endian each), key and value: what
    the backup manifest records per region and restore checks."""
    h = hashlib.sha256()
    n = 0
    for k, v in pairs:
        h.update(_LENS.pack(len(k), len(v)))
        h.update(k)
        h.update(v)
        n += 1
    return n, h.digest()


def data_digest(path: Path) -> tuple[int, bytes]:
    """`digest_pairs` of the data pairs of a snapshot file (session rows
    are not data)."""
    return digest_pairs((k, v) for is_session, k, v in read_records(path) if not is_session)


class BackupStore(Protocol):
    """What the copies need of the store (`StoreNode` has it)."""

    @property
    def engine(self) -> Engine: ...

    def submit_read(
        self,
        ctx: Context,
        bounds: tuple[bytes, ...],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None: ...


class DiskState(Protocol):
    """The store's disk monitor (`store_node.disk.DiskMonitor`)."""

    @property
    def refusal(self) -> DiskFull | None: ...


class _CopyDir(SnapDir):
    """Names the one file `generate` writes for a copy: apart from the
    Raft snapshots of the same region and index, so releasing a copy never
    deletes a snapshot being sent."""

    def __init__(self, path: Path, copy_id: int) -> None:
        super().__init__(path)
        self.copy_id = copy_id

    def generated(self, region_id: int, term: int, index: int) -> Path:
        return self.path / f"backup_{region_id}_{self.copy_id:016x}.snap"


@dataclass(slots=True)
class _Held:
    path: Path
    size: int
    last_used: float


class BackupCopies:
    """RPC handlers of backup copies, and the sweeper of forgotten ones."""

    def __init__(
        self,
        store: BackupStore,
        snap_dir: SnapDir,
        disk: DiskState,
        limiter: trio.CapacityLimiter,
        *,
        max_copies: int = 4,
        idle_timeout: float = 120.0,
    ) -> None:
        self._store = store
        # Beside the Raft snapshots, which `SnapDir.clear_stale` sweeps.
        self.directory = directory = snap_dir.path / "backup"
        self._disk = disk
        self._limiter = limiter
        self.max_copies = max_copies
        self.idle_timeout = idle_timeout
        self._held: dict[int, _Held] = {}
        self._preparing = 0
        self._rng = random.SystemRandom()
        directory.mkdir(parents=True, exist_ok=True)
        for p in directory.iterdir():
            # Left by an earlier run: no tool can still be fetching them.
            if p.is_file():
                p.unlink()

    def handlers(self) -> dict[type, Handler]:
        return {
            BackupPrepareRequest: self.prepare,
            BackupChunkRequest: self.chunk,
            BackupReleaseRequest: self.release,
        }

    @property
    def held(self) -> int:
        return len(self._held)

    async def prepare(self, req: BackupPrepareRequest, _: RequestContext) -> BackupPrepareResponse:
        refusal = self._disk.refusal
        if refusal is not None:
            # The reserve is for Raft's own snapshots and logs.
            return BackupPrepareResponse(region_error=refusal)
        if len(self._held) + self._preparing >= self.max_copies:
            busy = ServerIsBusy(f"{self.max_copies} backup copies held", backoff_ms=500)
            return BackupPrepareResponse(region_error=busy)
        self._preparing += 1
        try:
            return await self._prepare(req)
        finally:
            self._preparing -= 1

    async def _prepare(self, req: BackupPrepareRequest) -> BackupPrepareResponse:
        ctx = req.context
        permit = await self._permit(ctx, req.key)
        if not isinstance(permit, ReadPermit):
            return BackupPrepareResponse(region_error=permit)
        if permit.region.epoch.version != ctx.region_epoch.version:
            # Split while the read waited: the caller re-routes.
            return BackupPrepareResponse(region_error=EpochNotMatch((permit.region,)))
        copy_id = self._rng.getrandbits(63)
        try:
            copy, path = await trio.to_thread.run_sync(
                self._write_copy, ctx.region_id, copy_id, limiter=self._limiter
            )
        except SnapshotFileError as e:
            # The peer was destroyed since the permit (moved away).
            log.info("region %d: no backup copy: %s", ctx.region_id, e)
            return BackupPrepareResponse(region_error=RegionNotFound(ctx.region_id))
        self._held[copy_id] = _Held(path, copy.size, trio.current_time())
        log.info(
            "region %d: backup copy %016x at index %d: %d keys, %d bytes",
            ctx.region_id,
            copy_id,
            copy.applied_index,
            copy.keys,
            copy.size,
        )
        return BackupPrepareResponse(copy=copy, store_id=ctx.peer.store_id)

    async def _permit(self, ctx: Context, key: bytes) -> ReadPermit | RegionError:
        """A strong read's permit for the region at `key` (its leader's
        lease, or a ReadIndex round applied here)."""
        got = trio.Event()
        box: list[ReadPermit | RegionError] = []

        def done(value: ReadPermit | RegionError) -> None:
            box.append(value)
            got.set()

        self._store.submit_read(ctx, (key,), done)
        await got.wait()
        return box[0]

    def _write_copy(self, region_id: int, copy_id: int) -> tuple[BackupCopy, Path]:
        """In a worker thread: the snapshot file of the region as of now, and
        the digest of its data."""
        snap, path = generate(self._store.engine, _CopyDir(self.directory, copy_id), region_id)
        try:
            desc = descriptor_of(snap)
            keys, digest = data_digest(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        copy = BackupCopy(
            copy_id,
            desc.region,
            desc.index,
            desc.term,
            desc.size,
            desc.checksum,
            keys,
            digest,
        )
        return copy, path

    async def chunk(self, req: BackupChunkRequest, _: RequestContext) -> BackupChunkResponse:
        held = self._held.get(req.copy_id)
        if held is None:
            return BackupChunkResponse(
                error=f"no backup copy {req.copy_id:016x} here (released, timed out, "
                "or the store restarted)"
            )
        if not 0 <= req.offset <= held.size or req.max_bytes <= 0:
            return BackupChunkResponse(
                error=f"bad chunk: offset {req.offset}, {req.max_bytes} bytes "
                f"of a copy of {held.size} bytes"
            )
        held.last_used = trio.current_time()
        n = min(req.max_bytes, MAX_CHUNK, held.size - req.offset)
        try:
            data = await trio.to_thread.run_sync(_read_at, held.path, req.offset, n)
        except FileNotFoundError:
            # Released or swept while this chunk was asked for.
            return BackupChunkResponse(error=f"backup copy {req.copy_id:016x} was deleted")
        held.last_used = trio.current_time()
        return BackupChunkResponse(data=data)

    async def release(self, req: BackupReleaseRequest, _: RequestContext) -> BackupReleaseResponse:
        held = self._held.pop(req.copy_id, None)
        if held is None:
            return BackupReleaseResponse(released=False)
        held.path.unlink(missing_ok=True)
        return BackupReleaseResponse(released=True)

    def sweep(self, now: float) -> int:
        """Delete the copies idle for longer than `idle_timeout`; returns
        how many."""
        gone = [cid for cid, h in self._held.items() if now - h.last_used > self.idle_timeout]
        for cid in gone:
            held = self._held.pop(cid)
            held.path.unlink(missing_ok=True)
            log.info("backup copy %016x: not fetched for %.0f s, deleted", cid, self.idle_timeout)
        return len(gone)

    async def run_sweeper(self) -> None:
        while True:
            await trio.sleep(self.idle_timeout / 4)
            self.sweep(trio.current_time())


def _read_at(path: Path, offset: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)

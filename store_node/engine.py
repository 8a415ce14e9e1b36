"""The storage engine of a store: two LMDB environments, `kv/` and `raft/`.

* `raft/` holds every region's Raft log and hard state. It is written once
  per loop round, for all regions together, in one transaction with one fsync
  (group commit across Raft groups).
* `kv/` holds user data, region states and apply states. Applying a batch of
  committed entries writes the data and the applied index in one transaction,
  so a crash never separates them. It runs in LMDB's MDB_NOMETASYNC mode:
  each commit flushes its data pages (one fdatasync) but not the meta page
  that makes it current, so a power loss may undo the last transaction and
  never corrupts the environment (MDB_NOSYNC, the cheaper mode, lets a
  later commit overwrite pages the last durable meta page still points to).
  Losing the last transaction is harmless: the Raft log is the redo log,
  and a log prefix is deleted only after `sync_kv()` (a full sync, meta page
  included) made the kv state that includes it durable (`kv_durable_seq`).
  Without `sync` (benchmarks only) kv/ is not flushed at all.
* `blobs/` holds values longer than `large_value_threshold`, apart from
  kv/, which keeps a pointer (`store_node.blob_files`; collected by
  `store_node.blob_gc`). A kv/ write's blob records are synced before it
  commits; every read resolves pointers, so the rest of the store sees
  values only.

Threads: writes run in one worker thread at a time (the store loop hands them
over), reads run anywhere. When a map fills up, the writer grows it and
retries the whole transaction; growing needs no reader inside the
environment, so readers hold the environment's read lock around their
transactions (`store_node.lmdb_env`). kv/ writes take sequence numbers inside
their transactions, so the numbers follow commit order: `kv_begun_seq` (the
last taken), `kv_durable_seq` (the last synced).

A write or sync that fails (an OSError or an LMDB error that is not a bad
call: `store_node.disk`) raises `DiskFailure` and leaves the engine failed:
every later write raises it again, untried, and `close` flushes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from plumbing import failpoints
from plumbing.dirlock import DirLock
from store_node import keys
from store_node.blob_files import (
    DEFAULT_FILE_SIZE,
    DEFAULT_THRESHOLD,
    POINTER_SIZE,
    BlobFiles,
    value_size,
)
from store_node.disk import ENGINE_SYNC, DiskFailure, is_disk_error
from store_node.lmdb_env import (
    Env,
    KvTxn,
    LmdbKvTxn,
    Pinned,
    WriteBatch,
    apply_batch,
    apply_kv,
    scan_cursor,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAP_SIZE = 1 << 30  # grows by doubling when full


class Engine:
    """The two environments of one store's data directory."""

    KV_DBS = (keys.DATA_DB, keys.REGION_DB, keys.APPLY_DB, keys.META_DB, keys.SESSION_DB)
    RAFT_DBS = (keys.LOG_DB, keys.STATE_DB)

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        raft_dir: str | os.PathLike[str] | None = None,
        *,
        sync: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        flush_to_disk: bool = True,
        large_value_threshold: int = DEFAULT_THRESHOLD,
        blob_file_size: int = DEFAULT_FILE_SIZE,
    ) -> None:
        """`flush_to_disk` False opens both environments without any fsync
        while the engine keeps `sync`'s rules (which writes wait for which):
        for a simulation that models what a crash keeps by itself. Values
        longer than `large_value_threshold` (0: none) are stored apart, in
        blob files of about `blob_file_size` bytes."""
        self.data_dir = Path(data_dir)
        # One store process per data directory (two would corrupt it).
        self._lock = DirLock(self.data_dir, "store")
        raft_path = Path(raft_dir) if raft_dir is not None else self.data_dir / "raft"
        # `sync` governs the raft log (the durability point). kv/ flushes
        # each commit's data pages but not its meta page (MDB_NOMETASYNC),
        # see the module docstring; without `sync` nothing is flushed.
        flush = sync and flush_to_disk
        self.kv = Env(
            self.data_dir / "kv", self.KV_DBS, sync=flush, metasync=False, map_size=map_size
        )
        self.raft = Env(raft_path, self.RAFT_DBS, sync=flush, map_size=map_size)
        self.blobs = BlobFiles(
            self.data_dir / "blobs",
            threshold=large_value_threshold,
            file_size=blob_file_size,
            sync=flush,
            quiet=self.kv.lock.quiet,
        )
        self.sync = sync
        # Every kv write takes a sequence number inside its transaction
        # (LMDB runs one at a time, so numbers follow commit order):
        # `_kv_begun` is the last one taken (no state a read sees is newer),
        # `_kv_seq` the last committed, `kv_durable_seq` the last synced.
        # The state kv/ opened with counts as write 1: after a crash a power
        # loss may still undo its last transaction, until the first sync.
        self._kv_begun = 1
        self._kv_seq = 1
        self.kv_durable_seq = 0
        # Raft writes that need no fsync of their own (a commit index moving):
        # they ride with the next synced write, or `flush()`.
        self._deferred = WriteBatch()
        # The first disk failure: no write is tried after it.
        self.failed: DiskFailure | None = None

    def close(self) -> None:
        with self.kv.pins_lock:
            pins = list(self.kv.pins)
        for pin in pins:  # LMDB closes an environment with no transaction open
            pin.close()
        if self.failed is None:
            self.flush()
            self.sync_kv()
        self.blobs.close()
        self.kv.close()
        self.raft.close()
        self._lock.release()

    # -- writes (one worker thread at a time) --------------------------------

    def _write(self, env: Env, fn: Callable[[Any], T]) -> T:
        """`env.write(fn)`; a disk error in it fails the engine. (Not a
        context manager: this runs on every write, and a generator-based one
        costs a few microseconds each time.)"""
        if self.failed is not None:
            raise self.failed
        try:
            if failpoints.registry.active:
                failpoints.fire(ENGINE_SYNC)
            return env.write(fn)
        except DiskFailure as e:  # a blob file's write or read
            self.fail(e)
            raise
        except Exception as e:
            if not is_disk_error(e):
                raise
            raise self.fail(DiskFailure(env.path, e)) from e

    def fail(self, error: DiskFailure) -> DiskFailure:
        """Leave the engine failed by `error` (the first failure stays, and
        is logged once); returns the failure to raise."""
        if self.failed is None:
            self.failed = error
            log.critical("%s", error)
        return self.failed

    def write_raft(self, batch: WriteBatch, must_sync: bool = True) -> None:
        """Write a round's Raft batch in one transaction (one fsync when the
        engine is durable). A batch that need not be synced is deferred and
        written, in order, before the next one that must."""
        if not batch.ops:
            return
        if not must_sync and self.sync:
            self._deferred.extend(batch)
            return
        if self._deferred.ops:
            combined, self._deferred = self._deferred, WriteBatch()
            combined.extend(batch)
            batch = combined
        self._write(self.raft, lambda txn: apply_batch(txn, self.raft.dbs, batch))

    def flush(self) -> None:
        """Write deferred Raft writes now (on shutdown)."""
        if self._deferred.ops:
            deferred, self._deferred = self._deferred, WriteBatch()
            self._write(self.raft, lambda txn: apply_batch(txn, self.raft.dbs, deferred))

    def write_kv(self, fn: Callable[[KvTxn], T]) -> T:
        """Run `fn` in one kv transaction (see `Env.write` for retries);
        the blob records it appended are synced before it commits."""
        dbs, blobs = self.kv.dbs, self.blobs
        return self._write_kv(lambda txn: fn(LmdbKvTxn(txn, dbs, blobs)))

    def _write_kv(self, fn: Callable[[Any], T]) -> T:
        blobs = self.blobs
        seq = 0

        def run(txn: Any) -> T:
            nonlocal seq
            self._kv_begun += 1
            seq = self._kv_begun
            blobs.begin(seq)
            result = fn(txn)
            blobs.sync_appends()
            return result

        result = self._write(self.kv, run)
        self._kv_seq = max(self._kv_seq, seq)
        blobs.committed(seq)
        return result

    def write_kv_batch(self, batch: WriteBatch) -> None:
        if batch.ops:
            self.write_kv(lambda txn: apply_kv(txn, batch))

    def write_kv_raw(self, fn: Callable[[Any, dict[bytes, Any]], T]) -> T:
        """Run `fn(txn, dbs)` on the bare LMDB transaction of kv/ (pointers
        as stored: the blob collector's); blob appends synced before commit."""
        return self._write_kv(lambda txn: fn(txn, self.kv.dbs))

    @property
    def kv_begun_seq(self) -> int:
        """The last sequence number a kv write took: a read transaction
        begun before this is read sees no newer state."""
        return self._kv_begun

    def read_generation(self) -> int:
        """End the current generation of kv/ reads (see `ReadWriteLock`)."""
        return self.kv.lock.advance()

    def sync_kv(self) -> int:
        """Make every kv write so far durable; returns the synced sequence."""
        seq = self._kv_seq
        if self.failed is not None:
            raise self.failed
        try:
            if failpoints.registry.active:
                failpoints.fire(ENGINE_SYNC)
            with self.kv.lock.shared():
                self.kv.env.sync(True)
        except Exception as e:
            if not is_disk_error(e):
                raise
            raise self.fail(DiskFailure(self.kv.path, e)) from e
        self.kv_durable_seq = seq
        try:
            self.blobs.reap(seq)
        except DiskFailure as e:
            self.fail(e)
            raise
        return seq

    def used_bytes(self) -> int:
        """Bytes of both environments' data files on disk."""
        total = self.blobs.usage().bytes
        for env in (self.kv, self.raft):
            with suppress(OSError):
                total += (env.path / "data.mdb").stat().st_size
        return total

    # -- reads -----------------------------------------------------------------

    @contextmanager
    def read_kv(self) -> Iterator[Any]:
        with self.kv.read() as txn:
            yield txn

    @contextmanager
    def read_raft(self) -> Iterator[Any]:
        with self.raft.read() as txn:
            yield txn

    def pin_kv(self, work: Callable[[KvTxn], T]) -> Pinned[T]:
        """A read of kv/ as it is now, for `work` to run later (`Pinned`)."""
        return Pinned(self.kv, work, self.blobs)

    def pinned_kv(self) -> int:
        """Pinned reads of kv/ still open."""
        return len(self.kv.pins)

    def kv_get(self, db: bytes, key: bytes) -> bytes | None:
        # Every strong get comes here: no generator context managers (they
        # were a tenth of a store's CPU per get at 64 client tasks).
        env = self.kv
        token = env.lock.acquire_shared()
        try:
            with env.env.begin(write=False) as txn:
                v = txn.get(key, db=env.dbs[db])
            if v is None:
                return None
            if len(v) == POINTER_SIZE and db == keys.DATA_DB:
                # Read under the lock: the file outlives every read that
                # began while kv/ still pointed into it.
                return self.blobs.resolve(key, v)
        finally:
            env.lock.release_shared(token)
        return bytes(v)

    def raft_get(self, db: bytes, key: bytes) -> bytes | None:
        with self.raft.read() as txn:
            v = txn.get(key, db=self.raft.dbs[db])
            return None if v is None else bytes(v)

    def kv_items(
        self, db: bytes, start: bytes = b"", end: bytes = b""
    ) -> list[tuple[bytes, bytes]]:
        with self.kv.read() as txn:
            if db == keys.DATA_DB:
                pairs = self.scan_data(txn, start, end)
            else:
                pairs = scan_cursor(txn, self.kv.dbs[db], start, end)
            return [(bytes(k), bytes(v)) for k, v in pairs]

    def scan_data(
        self, txn: Any, start: bytes, end: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """User pairs of a kv/ read transaction (`read_kv`) in [start, end),
        values resolved (`scan_cursor` shows blob pointers as stored)."""
        pairs = scan_cursor(txn, self.kv.dbs[keys.DATA_DB], start, end, reverse=reverse)
        return self.blobs.resolved(pairs)

    def scan_data_sizes(self, txn: Any, start: bytes, end: bytes) -> Iterator[tuple[bytes, int]]:
        """Keys of [start, end) with the length of their values, unread."""
        for k, v in scan_cursor(txn, self.kv.dbs[keys.DATA_DB], start, end):
            yield k, value_size(v)

    def raft_items(
        self, db: bytes, start: bytes = b"", end: bytes = b""
    ) -> list[tuple[bytes, bytes]]:
        with self.raft.read() as txn:
            return [
                (bytes(k), bytes(v)) for k, v in scan_cursor(txn, self.raft.dbs[db], start, end)
            ]

    def kv_db(self, name: bytes) -> Any:
        return self.kv.dbs[name]

    def raft_db(self, name: bytes) -> Any:
        return self.raft.dbs[name]


__all__ = [
    "DEFAULT_MAP_SIZE",
    "Engine",
    "KvTxn",
    "Pinned",
    "WriteBatch",
    "scan_cursor",
]

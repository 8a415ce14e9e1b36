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

Threads: writes run in one worker thread at a time (the store loop hands them
over), reads run anywhere. When a map fills up, the writer grows it and
retries the whole transaction; growing needs no reader inside the
environment, so readers hold `reading()` around their transactions.

A write or sync that fails (an OSError or an LMDB error that is not a bad
call: `store_node.disk`) raises `DiskFailure` and leaves the engine failed:
every later write raises it again, untried, and `close` flushes nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import lmdb

from plumbing import failpoints
from plumbing.dirlock import DirLock
from store_node import keys
from store_node.blob_files import DEFAULT_FILE_SIZE, POINTER_SIZE, BlobFiles, value_size
from store_node.disk import ENGINE_SYNC, DiskFailure, is_disk_error

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAP_SIZE = 1 << 30  # grows by doubling when full
DEFAULT_LARGE_VALUE_THRESHOLD = 64 << 10
MAX_DBS = 8


class _ReadWriteLock:
    """Many readers or one exclusive holder (the map resizer).

    Readers are counted by generation, so that a writer can ask whether
    every read that began before some moment has ended (`advance`, then
    `quiet`) without waiting for a moment with no reader at all: a blob
    file is deleted only once no read that might hold a pointer into it
    still runs (`store_node.blob_files`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False
        self._generation = 0
        self._by_generation: dict[int, int] = {}

    def acquire_shared(self) -> int:
        """Returns the token to give back to `release_shared`."""
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
            g = self._generation
            self._by_generation[g] = self._by_generation.get(g, 0) + 1
            return g

    def release_shared(self, token: int) -> None:
        with self._cond:
            self._readers -= 1
            left = self._by_generation[token] - 1
            if left:
                self._by_generation[token] = left
            else:
                del self._by_generation[token]
            if self._readers == 0:
                self._cond.notify_all()

    def advance(self) -> int:
        """End the current generation of readers; returns it."""
        with self._cond:
            self._generation += 1
            return self._generation - 1

    def quiet(self, generation: int) -> bool:
        """Whether every read of `generation` or older has ended."""
        with self._cond:
            return all(g > generation for g in self._by_generation)

    @contextmanager
    def shared(self) -> Iterator[None]:
        token = self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared(token)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._readers:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass(slots=True)
class WriteBatch:
    """Writes to one environment, applied in order in one transaction."""

    # (op, db, key, value_or_end): op in {"put", "del", "delrange"}.
    ops: list[tuple[str, bytes, bytes, bytes]] = field(default_factory=list)
    nbytes: int = 0

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        self.ops.append(("put", db, key, value))
        self.nbytes += len(key) + len(value)

    def delete(self, db: bytes, key: bytes) -> None:
        self.ops.append(("del", db, key, b""))
        self.nbytes += len(key)

    def delete_range(self, db: bytes, start: bytes, end: bytes) -> None:
        """Delete keys in [start, end); an empty `end` means to the end."""
        self.ops.append(("delrange", db, start, end))
        self.nbytes += len(start) + len(end)

    def __len__(self) -> int:
        return len(self.ops)

    def extend(self, other: WriteBatch) -> None:
        self.ops.extend(other.ops)
        self.nbytes += other.nbytes


class KvTxn(Protocol):
    """What apply logic may do inside a `kv/` write transaction."""

    def get(self, db: bytes, key: bytes) -> bytes | None: ...

    def put(self, db: bytes, key: bytes, value: bytes) -> None: ...

    def delete(self, db: bytes, key: bytes) -> bool: ...

    def delete_range(self, db: bytes, start: bytes, end: bytes) -> int: ...

    def scan(
        self, db: bytes, start: bytes, end: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]: ...


class _Env:
    """One LMDB environment with named databases and a growable map."""

    def __init__(
        self,
        path: Path,
        db_names: tuple[bytes, ...],
        *,
        sync: bool,
        map_size: int,
        metasync: bool | None = None,
    ):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=MAX_DBS,
            sync=sync,
            # With `sync` and not `metasync` (MDB_NOMETASYNC) each commit
            # flushes its data pages but not the meta page: a power loss may
            # undo the last transaction, never corrupt. With neither
            # (MDB_NOSYNC) a process crash still loses nothing (OS buffers),
            # but a power loss may corrupt the environment.
            metasync=sync if metasync is None else metasync,
            readahead=False,
            lock=True,
        )
        self.dbs: dict[bytes, Any] = {name: self.env.open_db(name) for name in db_names}
        self.sync = sync
        self.lock = _ReadWriteLock()
        # Open `Pinned` reads: growing the map runs their work first.
        self.pins: set[Pinned[Any]] = set()
        self.pins_lock = threading.Lock()

    def grow(self) -> None:
        # A pinned read holds the lock until its work has run, and its work
        # may be waiting for the thread that now wants to grow (pinned in
        # this round, not handed to its own thread yet): run it here.
        with self.pins_lock:
            pins = list(self.pins)
        for pin in pins:
            with suppress(Exception):  # kept in the pin for its owner
                pin.run()
        with self.lock.exclusive():
            size = self.env.info()["map_size"] * 2
            log.info("LMDB map of %s is full, growing it to %d MiB", self.path, size >> 20)
            self.env.set_mapsize(size)

    def write(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(txn)` in a write transaction and commit it; on a full map,
        grow the map and run `fn` again from scratch (so `fn` must not change
        anything outside the transaction)."""
        while True:
            try:
                with self.lock.shared(), self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self.grow()

    @contextmanager
    def read(self) -> Iterator[Any]:
        with self.lock.shared(), self.env.begin(write=False) as txn:
            yield txn

    def close(self) -> None:
        self.env.close()


class Pinned(Generic[T]):
    """A read transaction of one environment, begun when this is made, and
    the work to run on it once, later and in any thread: `run()` runs it
    (or waits for the run under way) and returns its result; then the
    transaction ends. It sees the state of the last commit before it was
    made, however long the work waits (LMDB's MVCC; py-lmdb opens every
    environment MDB_NOTLS, so a read transaction may move between threads).

    While it is open the map cannot grow (LMDB remaps only with no
    transaction active), so `_Env.grow` runs the work of every open pin
    first rather than wait for it: the pin may be the grower's own. Each
    open pin also holds one of LMDB's reader slots, and keeps the pages it
    sees from reuse: pin for work that runs soon. `close()` gives up
    without running it."""

    def __init__(self, env: _Env, work: Callable[[KvTxn], T], blobs: BlobFiles) -> None:
        self._env = env
        self._work: Callable[[KvTxn], T] | None = work
        self._mutex = threading.Lock()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._blobs = blobs
        self._token = env.lock.acquire_shared()
        try:
            self._txn: Any = env.env.begin(write=False)
        except BaseException:
            env.lock.release_shared(self._token)
            raise
        with env.pins_lock:
            env.pins.add(self)

    def run(self) -> T:
        with self._mutex:
            work, self._work = self._work, None
            if work is not None:
                try:
                    self._result = work(_LmdbKvTxn(self._txn, self._env.dbs, self._blobs))
                except Exception as e:
                    self._error = e
                finally:
                    self._end()
            if self._error is not None:
                raise self._error
            return self._result  # type: ignore[return-value]

    def close(self) -> None:
        with self._mutex:
            if self._work is not None:
                self._work = None
                self._error = RuntimeError("the pinned read was closed before its work ran")
                self._end()

    def _end(self) -> None:
        with suppress(lmdb.Error):  # the environment was closed under it
            self._txn.abort()
        with self._env.pins_lock:
            self._env.pins.discard(self)
        self._env.lock.release_shared(self._token)


def _apply_batch(txn: Any, dbs: dict[bytes, Any], batch: WriteBatch) -> None:
    for op, db_name, key, value in batch.ops:
        db = dbs[db_name]
        if op == "put":
            txn.put(key, value, db=db)
        elif op == "del":
            txn.delete(key, db=db)
        else:
            _delete_range(txn, db, key, value)


def _delete_range(txn: Any, db: Any, start: bytes, end: bytes) -> int:
    n = 0
    with txn.cursor(db=db) as cur:
        if not cur.set_range(start):
            return 0
        while True:
            k = cur.key()
            if end and k >= end:
                break
            n += 1
            if not cur.delete():
                break
            # After delete the cursor sits on the next item (or is unset).
            if not cur.key():
                break
    return n


class _LmdbKvTxn:
    """`KvTxn` over an LMDB transaction of kv/. Its "data" db holds values
    however they are stored: a long value goes to a blob file and kv/ keeps
    a pointer (`store_node.blob_files`), and reads resolve pointers, so the
    rest of the store (apply, snapshots, hashes) sees values only."""

    __slots__ = ("_blobs", "_dbs", "_txn")

    def __init__(self, txn: Any, dbs: dict[bytes, Any], blobs: BlobFiles) -> None:
        self._txn = txn
        self._dbs = dbs
        self._blobs = blobs

    def get(self, db: bytes, key: bytes) -> bytes | None:
        v = self._txn.get(key, db=self._dbs[db])
        if v is None:
            return None
        return self._blobs.resolve(key, v) if db == keys.DATA_DB else bytes(v)

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        if db == keys.DATA_DB and self._blobs.separate(value):
            value = self._blobs.append(key, value).encode()
        self._txn.put(key, value, db=self._dbs[db])

    def delete(self, db: bytes, key: bytes) -> bool:
        return bool(self._txn.delete(key, db=self._dbs[db]))

    def delete_range(self, db: bytes, start: bytes, end: bytes) -> int:
        return _delete_range(self._txn, self._dbs[db], start, end)

    def scan(
        self, db: bytes, start: bytes, end: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        pairs = scan_cursor(self._txn, self._dbs[db], start, end, reverse=reverse)
        return self._blobs.resolved(pairs) if db == keys.DATA_DB else pairs


def _apply_kv(txn: KvTxn, batch: WriteBatch) -> None:
    for op, db, key, value in batch.ops:
        if op == "put":
            txn.put(db, key, value)
        elif op == "del":
            txn.delete(db, key)
        else:
            txn.delete_range(db, key, value)


def scan_cursor(
    txn: Any, db: Any, start: bytes, end: bytes, *, reverse: bool = False
) -> Iterator[tuple[bytes, bytes]]:
    """Items with start <= key < end (empty end: no bound) in key order, or in
    reverse order."""
    with txn.cursor(db=db) as cur:
        if not reverse:
            if not cur.set_range(start):
                return
            for k, v in cur:
                if end and k >= end:
                    return
                yield k, v
            return
        if end:
            # Position on the first key >= end, then step back once.
            if cur.set_range(end):
                if not cur.prev():
                    return
            elif not cur.last():
                return
        elif not cur.last():
            return
        while True:
            k = cur.key()
            if k < start:
                return
            yield k, cur.value()
            if not cur.prev():
                return


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
        large_value_threshold: int = DEFAULT_LARGE_VALUE_THRESHOLD,
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
        self.kv = _Env(
            self.data_dir / "kv", self.KV_DBS, sync=flush, metasync=False, map_size=map_size
        )
        self.raft = _Env(raft_path, self.RAFT_DBS, sync=flush, map_size=map_size)
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

    def _write(self, env: _Env, fn: Callable[[Any], T]) -> T:
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
            self.failed = e
            log.critical("%s", e)
            raise
        except Exception as e:
            if not is_disk_error(e):
                raise
            raise self._fail(env, e) from e

    def _fail(self, env: _Env, error: Exception) -> DiskFailure:
        self.failed = DiskFailure(env.path, error)
        log.critical("%s", self.failed)
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
        self._write(self.raft, lambda txn: _apply_batch(txn, self.raft.dbs, batch))

    def flush(self) -> None:
        """Write deferred Raft writes now (on shutdown)."""
        if self._deferred.ops:
            deferred, self._deferred = self._deferred, WriteBatch()
            self._write(self.raft, lambda txn: _apply_batch(txn, self.raft.dbs, deferred))

    def write_kv(self, fn: Callable[[KvTxn], T]) -> T:
        """Run `fn` in one kv transaction (see `_Env.write` for retries);
        the blob records it appended are synced before it commits."""
        dbs, blobs = self.kv.dbs, self.blobs
        return self._write_kv(lambda txn: fn(_LmdbKvTxn(txn, dbs, blobs)))

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
            self.write_kv(lambda txn: _apply_kv(txn, batch))

    def write_kv_raw(self, fn: Callable[[Any, dict[bytes, Any]], T]) -> T:
        """Run `fn(txn, dbs)` on the bare LMDB transaction of kv/ (pointers
        as stored: the blob collector's); blob appends synced before commit."""
        return self._write_kv(lambda txn: fn(txn, self.kv.dbs))

    @property
    def kv_seq(self) -> int:
        """The sequence number of the last committed kv write."""
        return self._kv_seq

    @property
    def kv_begun_seq(self) -> int:
        """The last sequence number a kv write took: a read transaction
        begun before this is read sees no newer state."""
        return self._kv_begun

    def read_generation(self) -> int:
        """End the current generation of kv/ reads (see `_ReadWriteLock`)."""
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
            raise self._fail(self.kv, e) from e
        self.kv_durable_seq = seq
        try:
            self.blobs.reap(seq)
        except DiskFailure as e:
            self.failed = e
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
            pairs = scan_cursor(txn, self.kv.dbs[db], start, end)
            if db == keys.DATA_DB:
                pairs = self.blobs.resolved(pairs)
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

"""LMDB environments as the engine uses them (`store_node.engine`).

* `Env`: one environment with named databases and a map that grows when
  full (a write that hits the end runs again on the grown map).
* `ReadWriteLock`: many readers or the one resizer; readers are counted
  by generation so a writer can wait for the reads begun before a moment.
* `Pinned`: a read transaction begun now, for work that runs later.
* `WriteBatch` and `apply_batch`: writes gathered, then applied in order.
* `KvTxn` and `LmdbKvTxn`: what apply logic may do in a kv/ transaction;
  its "data" db holds user values however they are stored (long values in
  blob files, `store_node.blob_files`).
* `scan_cursor`: ordered and reverse range scans.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import lmdb

from store_node import keys
from store_node.blob_files import BlobFiles

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DBS = 8


class ReadWriteLock:
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


class Env:
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
        self.lock = ReadWriteLock()
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
    transaction active), so `Env.grow` runs the work of every open pin
    first rather than wait for it: the pin may be the grower's own. Each
    open pin also holds one of LMDB's reader slots, and keeps the pages it
    sees from reuse: pin for work that runs soon. `close()` gives up
    without running it."""

    def __init__(self, env: Env, work: Callable[[KvTxn], T], blobs: BlobFiles) -> None:
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
                    self._result = work(LmdbKvTxn(self._txn, self._env.dbs, self._blobs))
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


def apply_batch(txn: Any, dbs: dict[bytes, Any], batch: WriteBatch) -> None:
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


class LmdbKvTxn:
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


def apply_kv(txn: KvTxn, batch: WriteBatch) -> None:
    for op, db, key, value in batch.ops:
        if op == "put":
            txn.put(db, key, value)
        elif op == "del":
            txn.delete(db, key)
        else:
            txn.delete_range(db, key, value)


def scan_cursor(
    txn: Any,
    db: Any,
    start: bytes,
    end: bytes,
    *,
    reverse: bool = False,
    values: bool = True,
) -> Iterator[tuple[bytes, bytes]]:
    """Items with start <= key < end (empty end: no bound) in key order, or in
    reverse order; without `values`, each value is b"" (none is read: a
    long one is a run of overflow pages)."""
    with txn.cursor(db=db) as cur:
        if not reverse:
            if not cur.set_range(start):
                return
            if not values:
                for k in cur.iternext(keys=True, values=False):
                    if end and k >= end:
                        return
                    yield k, b""
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
            yield k, cur.value() if values else b""
            if not cur.prev():
                return

"""A disk model for the deterministic simulation: process crash and power loss.

`SimEngine` is the real `Engine` on real LMDB. It adds what a test cannot do
to real LMDB: cut the power. LMDB writes every commit into the OS page cache,
so a process crash (`crash()`) loses only what the engine kept in memory, the
deferred Raft batches. What a power loss (`power_loss()`) keeps depends on how
each environment syncs (`SyncMode`); the transactions a power loss may undo
are kept in an undo journal (the before-image of every key each committed
transaction changed), and a power loss reverts each environment to a durable
point chosen by the simulation's rng by undoing the lost transactions, newest
first, in one transaction, then closes the engine without flushing or syncing.
Reopening the directory shows exactly the durable state.

How the journal hooks in: every write transaction of an environment goes
through `Env.write(fn)`, whichever `Engine` method (`write_raft`, `flush`,
`write_kv`, `write_kv_batch`, ...) starts it. `SimEngine` shadows `write` on
its two `Env` instances with a wrapper that hands `fn` a recording proxy of
the LMDB transaction instead of the transaction. The proxy records the
before-image of a key before forwarding put/delete/replace/pop, on the
transaction or on a cursor (so `_delete_range`'s cursor deletes are seen), and
forwards everything else (reads, cursor moves). This is less fragile than
overriding the `Engine` write methods, which would mean copying their logic
(the deferral, the sequence numbers) and missing any write method added later:
it depends only on `Env.write(fn)` calling `fn(txn)` and on the engine using
the transaction's ordinary put/delete/cursor calls. Mutations the proxy does
not model (`putmulti`, `drop`) raise rather than go unrecorded. A retry after
`lmdb.MapFullError` runs `fn` again with a fresh record; only the record of
the attempt that committed is journaled.

Durability is forced only by `sync_kv()` (kv) and by every commit of an
environment in `SyncMode.SYNC`, whose writes are therefore not journaled.

Blob files (large values apart from kv/, `store_node.blob_files`): a power
loss keeps what was synced of each (`BlobFiles.synced_sizes`, which
`sync_appends` advances) and an rng-chosen part of the rest, cutting each
file there; a deleted file stays deleted.

Limits of the model: the journal lives in this object, so a power loss after a
`crash()` and a restart treats everything committed before the crash as
durable; dupsort databases are not modelled (the engine opens none); writes
`Engine.__init__` might make before the hook is installed count as durable.
"""

from __future__ import annotations

import enum
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from store_node.engine import Engine, WriteBatch
from store_node.lmdb_env import Env

T = TypeVar("T")

# Before-images of one committed transaction: (db handle, key) -> the value
# before the transaction, None if the key was absent.
_Images = dict[tuple[Any, bytes], bytes | None]


class _Write(Protocol):
    """The signature of `Env.write`."""

    def __call__(self, fn: Callable[[Any], T]) -> T: ...


class SyncMode(enum.Enum):
    """What a power loss may undo in one environment (a forced sync, here
    `sync_kv()` for kv/, makes everything committed before it durable)."""

    SYNC = "sync"
    """lmdb sync=True, metasync=True: every commit is durable (raft/ by default)."""
    NOMETASYNC = "nometasync"
    """lmdb sync=True, metasync=False: the last commit may be undone, nothing before
    it ("preserves ACI but not D")."""
    NOSYNC = "nosync"
    """lmdb sync=False: any suffix of the commits since the last forced sync may
    be lost (raft/ with Engine(sync=False); kv/ before NOMETASYNC)."""


@dataclass(frozen=True, slots=True)
class Loss:
    """What a crash or power loss threw away, for the simulation's log."""

    kv_txns: int
    raft_txns: int
    deferred_ops: int
    blob_bytes: int = 0


@dataclass(slots=True)
class _Journal:
    """The committed transactions of one environment that a power loss may
    still undo, oldest first; durable ones are dropped at once."""

    mode: SyncMode
    txns: list[_Images] = field(default_factory=list)

    def committed(self, images: _Images) -> None:
        self.txns.append(images)
        if self.mode is SyncMode.NOMETASYNC:
            del self.txns[:-1]  # a commit makes the one before it durable

    def synced(self) -> None:
        self.txns.clear()

    def take_lost(self, rng: random.Random) -> list[_Images]:
        """Choose how many of the newest transactions the power loss undoes
        (0 up to all journaled) and remove them from the journal."""
        n = rng.randint(0, len(self.txns))
        lost = self.txns[len(self.txns) - n :]
        del self.txns[len(self.txns) - n :]
        return lost


class _RecordingCursor:
    """An LMDB cursor that records before-images of what it changes."""

    __slots__ = ("_cur", "_db", "_txn")

    def __init__(self, txn: _RecordingTxn, cur: Any, db: Any) -> None:
        self._txn = txn
        self._cur = cur
        self._db = db

    def __enter__(self) -> _RecordingCursor:
        self._cur.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._cur.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self._cur)

    def __getattr__(self, name: str) -> Any:
        if name == "putmulti":
            raise NotImplementedError("SimEngine's journal does not record Cursor.putmulti")
        return getattr(self._cur, name)  # moves and reads change nothing

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        key = self._cur.key()
        if key:
            self._txn.record(self._db, key, self._cur.value())
        return self._cur.delete(*args, **kwargs)

    def put(self, key: bytes, *args: Any, **kwargs: Any) -> Any:
        self._txn.remember(self._db, key)
        return self._cur.put(key, *args, **kwargs)

    def replace(self, key: bytes, *args: Any, **kwargs: Any) -> Any:
        self._txn.remember(self._db, key)
        return self._cur.replace(key, *args, **kwargs)

    def pop(self, key: bytes) -> Any:
        self._txn.remember(self._db, key)
        return self._cur.pop(key)


class _RecordingTxn:
    """An LMDB write transaction that records, into `images`, the value each
    key had before the transaction first changed it."""

    __slots__ = ("_txn", "images")

    def __init__(self, txn: Any, images: _Images) -> None:
        self._txn = txn
        self.images = images

    def record(self, db: Any, key: bytes, old: bytes | None) -> None:
        self.images.setdefault((db, bytes(key)), None if old is None else bytes(old))

    def remember(self, db: Any, key: bytes) -> None:
        if (db, bytes(key)) not in self.images:
            self.record(db, key, self._txn.get(key, db=db))

    def __getattr__(self, name: str) -> Any:
        if name in ("putmulti", "drop"):
            raise NotImplementedError(f"SimEngine's journal does not record Transaction.{name}")
        return getattr(self._txn, name)  # get, stat, id, ...: reads

    def cursor(self, db: Any = None) -> _RecordingCursor:
        return _RecordingCursor(self, self._txn.cursor(db=db), db)

    def put(self, key: bytes, value: bytes, *args: Any, db: Any = None, **kwargs: Any) -> Any:
        self.remember(db, key)
        return self._txn.put(key, value, *args, db=db, **kwargs)

    def replace(self, key: bytes, value: bytes, db: Any = None) -> Any:
        self.remember(db, key)
        return self._txn.replace(key, value, db=db)

    def delete(self, key: bytes, *args: Any, db: Any = None, **kwargs: Any) -> Any:
        self.remember(db, key)
        return self._txn.delete(key, *args, db=db, **kwargs)

    def pop(self, key: bytes, db: Any = None) -> Any:
        self.remember(db, key)
        return self._txn.pop(key, db=db)


class SimEngine(Engine):
    """An `Engine` that can crash and lose power like a real machine.

    `kv_mode` is a parameter (not read from the engine) so a simulation can
    compare modes; `raft_mode` defaults to what `Engine(sync=...)` opens raft/
    with. `rng` chooses the durable point of each environment at a power loss.
    Every other argument goes to `Engine`.
    """

    def __init__(
        self,
        *args: Any,
        rng: random.Random,
        kv_mode: SyncMode = SyncMode.NOMETASYNC,
        raft_mode: SyncMode | None = None,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(*args, **engine_kwargs)
        self.rng = rng
        if raft_mode is None:
            raft_mode = SyncMode.SYNC if self.sync else SyncMode.NOSYNC
        self._kv_journal = _Journal(kv_mode)
        self._raft_journal = _Journal(raft_mode)
        self._dead = False
        for env, journal in ((self.kv, self._kv_journal), (self.raft, self._raft_journal)):
            if journal.mode is not SyncMode.SYNC:
                env.write = _journaled_write(env, journal)  # type: ignore[method-assign]

    @property
    def kv_undoable(self) -> int:
        """Committed kv transactions a power loss may still undo."""
        return len(self._kv_journal.txns)

    @property
    def raft_undoable(self) -> int:
        """Committed raft transactions a power loss may still undo."""
        return len(self._raft_journal.txns)

    def sync_kv(self) -> int:
        seq = super().sync_kv()
        self._kv_journal.synced()
        return seq

    def crash(self) -> Loss:
        """SIGKILL: every committed transaction survives (page cache), the
        deferred Raft batches are lost. Closes without flush or sync."""
        deferred = self._drop_deferred()
        self._die()
        return Loss(kv_txns=0, raft_txns=0, deferred_ops=deferred)

    def power_loss(self) -> Loss:
        """Machine crash: revert each environment to a durable point the rng
        chooses within its `SyncMode`, drop the deferred Raft batches, and
        close without flush or sync."""
        deferred = self._drop_deferred()
        kv_lost = _undo(self.kv, self._kv_journal.take_lost(self.rng))
        raft_lost = _undo(self.raft, self._raft_journal.take_lost(self.rng))
        blob_lost = self._cut_blob_files()
        self._die()
        return Loss(
            kv_txns=kv_lost, raft_txns=raft_lost, deferred_ops=deferred, blob_bytes=blob_lost
        )

    def _cut_blob_files(self) -> int:
        """Cut each blob file somewhere between its synced size and its end
        (the rng's draws come after the journals', so runs without blob
        files draw as before)."""
        lost = 0
        for path in sorted(self.blobs.path.glob("*.blob")):
            size = path.stat().st_size
            synced = self.blobs.synced_sizes.get(int(path.stem, 16), 0)
            if size > synced:
                keep = self.rng.randint(synced, size)
                os.truncate(path, keep)
                lost += size - keep
        return lost

    def close(self) -> None:
        """A clean shutdown (`Engine.close`); nothing after a crash."""
        if not self._dead:
            self._dead = True
            super().close()

    def _drop_deferred(self) -> int:
        n = len(self._deferred.ops)
        self._deferred = WriteBatch()
        return n

    def _die(self) -> None:
        if self._dead:
            raise RuntimeError("this SimEngine is already closed")
        self._dead = True
        self.blobs.close()
        self.kv.close()
        self.raft.close()
        self._lock.release()


def _journaled_write(env: Env, journal: _Journal) -> _Write:
    """`env.write` that journals the before-images of the attempt that
    committed (an attempt that hit MapFullError was aborted: it is dropped)."""

    def write(fn: Callable[[Any], T]) -> T:
        attempts: list[_Images] = []

        def attempt(txn: Any) -> T:
            attempts.append({})
            return fn(_RecordingTxn(txn, attempts[-1]))

        result = Env.write(env, attempt)  # returns only once committed
        journal.committed(attempts[-1])
        return result

    return write


def _undo(env: Env, lost: list[_Images]) -> int:
    """Restore the before-images of `lost` (oldest first), newest first, so
    the oldest transaction's images win; one unjournaled transaction."""

    def revert(txn: Any) -> None:
        for images in reversed(lost):
            for (db, key), old in images.items():
                if old is None:
                    txn.delete(key, db=db)
                else:
                    txn.put(key, old, db=db)

    if lost:
        Env.write(env, revert)
    return len(lost)

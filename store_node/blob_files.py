"""Large values stored apart from kv/ (WiscKey, TiKV's Titan): blob files.

A value longer than `large_value_threshold` is appended to the active blob
file under `<data-dir>/blobs/`, and kv/'s "data" db holds a pointer to it
instead (`store_node.blob_txn` decides, resolves and collects). A blob file
is a sequence of records, each

    value crc32 (4)  key length (2)  value length (4)  key  value

A pointer is

    POINTER_MAGIC (4)  file number (8)  record offset (8)  value length (4)  value crc32 (4)

so a read checks what it gets twice: the value against the pointer's CRC,
and the record's key against the key asked for (a pointer to the wrong
record is caught as surely as a torn one).

Durability rules (the simulation checks both, `tests/sim/disk.py`):

* A record is written and the file fdatasync'ed (`sync_appends`) before
  the kv/ transaction that points at it commits: a power loss can undo
  that transaction, never leave it pointing at bytes that were not kept.
  A new file's directory entry is synced when the file is made.
* A file is deleted only once no kv/ state a power loss could return to
  points into it (the kv/ sync after the transaction that dropped the last
  pointer: `retire(..., seq)` waits for `kv_durable_seq >= seq`), and no
  read that began before then is still running (it may hold an old
  pointer: `retire` takes the engine's read generation and waits for it to
  drain).

Files are written only by the kv/ writer (appends happen inside LMDB write
transactions, which LMDB runs one at a time); reads come from any thread. A
file is collected (`store_node.blob_gc`) only once sealed: no longer the
active file, and the transaction that moved past it committed (`committed`),
so no transaction still in flight can point into it.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from plumbing.files import sync_directory
from store_node.disk import DiskFailure
from store_node.keys import BLOB_FILE_SIZE, LARGE_VALUE_THRESHOLD, MAX_KEY_SIZE

log = logging.getLogger(__name__)

POINTER_MAGIC: Final = b"\xffBLB"
_POINTER = struct.Struct(">4sQQII")
POINTER_SIZE: Final = _POINTER.size
_RECORD = struct.Struct(">IHI")
RECORD_HEADER: Final = _RECORD.size

DEFAULT_THRESHOLD: Final = LARGE_VALUE_THRESHOLD
DEFAULT_FILE_SIZE: Final = BLOB_FILE_SIZE
# Read descriptors kept open (a store may hold thousands of blob files).
MAX_OPEN_READERS: Final = 128
_NAME = re.compile(r"^([0-9a-f]{16})\.blob$")


class BlobError(DiskFailure):
    """A pointer whose value cannot be read back as written: a missing
    file, a short read, a CRC or key mismatch. The store cannot serve that
    value, and must not go on as if it could."""

    def __init__(self, path: Path, why: str) -> None:
        self.why = why
        self.path = path
        self.error = OSError(why)
        self.disk_full = False
        # Not DiskFailure's message: nothing failed to be written.
        Exception.__init__(
            self,
            f"blob file {path}: {why}; the store stops rather than answer a wrong value "
            "(its data is damaged: replace the store, `--replace-store`)",
        )


@dataclass(frozen=True, slots=True)
class Pointer:
    file: int
    offset: int
    length: int
    crc: int

    def encode(self) -> bytes:
        return _POINTER.pack(POINTER_MAGIC, self.file, self.offset, self.length, self.crc)


def looks_like_pointer(value: bytes) -> bool:
    """Whether a kv/ "data" value is a pointer. A user value that would be
    mistaken for one is itself stored apart (`BlobFiles.separate`), so this
    is exact."""
    return len(value) == POINTER_SIZE and value[:4] == POINTER_MAGIC


def decode_pointer(value: bytes) -> Pointer:
    _, file, offset, length, crc = _POINTER.unpack(value)
    return Pointer(file, offset, length, crc)


def value_size(value: bytes) -> int:
    """The length of the user value a kv/ "data" value stands for, unread."""
    if looks_like_pointer(value):
        return decode_pointer(bytes(value)).length
    return len(value)


@dataclass(frozen=True, slots=True)
class Record:
    """One record found by `BlobFiles.records` (its value unread)."""

    offset: int
    key: bytes
    length: int
    size: int  # header, key and value


@dataclass(slots=True)
class _Fd:
    fd: int
    users: int = 0
    dropped: bool = False


@dataclass(slots=True)
class _Retired:
    file: int
    seq: int  # kv/ write sequence that must be durable first
    generation: int  # reads of this generation or older must end first


@dataclass(slots=True)
class BlobStats:
    files: int = 0
    bytes: int = 0
    live_bytes: int = 0  # as of the last collection pass
    collected_files: int = 0
    rewritten_bytes: int = 0
    retired: int = 0  # files waiting to be deleted


class BlobFiles:
    """The blob files of one store (see the module docstring).

    `quiet(generation)` says whether every read of that generation or an
    older one has ended (the engine's read lock keeps the count); `sync`
    False (benchmarks, the simulation's no-flush engine) skips fsyncs."""

    def __init__(
        self,
        path: Path,
        *,
        threshold: int,
        file_size: int = DEFAULT_FILE_SIZE,
        sync: bool = True,
        quiet: Callable[[int], bool] = lambda generation: True,
    ) -> None:
        self.path = path
        self.threshold = threshold
        self.file_size = file_size
        self.sync = sync
        self._quiet = quiet
        path.mkdir(parents=True, exist_ok=True)
        # Guards the file table (`_sizes`, `_sealed`, `_retired`) between
        # the writer, the collector and status readers.
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        for p in path.iterdir():
            m = _NAME.match(p.name)
            if m:
                self._sizes[int(m.group(1), 16)] = p.stat().st_size
        # A new file for this run's appends: an old file's tail may hold a
        # torn record, and appending after it would bury it.
        self._next = max(self._sizes, default=0) + 1
        self._sealed = set(self._sizes)
        # Bytes of each file known to be on disk (synced, or there at open):
        # what a power loss keeps (the simulation's disk model reads it).
        self.synced_sizes: dict[int, int] = dict(self._sizes)
        # (kv/ write sequence, file): sealed once that write commits.
        self._sealing: list[tuple[int, int]] = []
        self._txn_seq = 0
        self._active: int | None = None
        self._active_fd = -1
        self._unsynced = False
        # Open descriptors for reads, least recently used first, at most
        # MAX_OPEN_READERS of them unless more are in use at once.
        self._readers: OrderedDict[int, _Fd] = OrderedDict()
        self._readers_lock = threading.Lock()
        self._retired: list[_Retired] = []
        self.stats = BlobStats()
        # The collector's bookkeeping (store_node.blob_gc): its passes, the
        # pass that last looked at each file, the live bytes it found there.
        self.passes = 0
        self.scanned: dict[int, int] = {}
        self.live: dict[int, int] = {}

    # -- what goes apart -----------------------------------------------------

    def separate(self, value: bytes) -> bool:
        return (0 < self.threshold < len(value)) or looks_like_pointer(value)

    # -- writes (the kv/ writer) -----------------------------------------------

    def append(self, key: bytes, value: bytes) -> Pointer:
        """Write one record to the active file (synced by `sync_appends`)."""
        if self._active is None or self._sizes[self._active] >= self.file_size:
            self._open_next()
        file = self._active
        assert file is not None
        crc = zlib.crc32(value)
        offset = self._sizes[file]
        head = _RECORD.pack(crc, len(key), len(value)) + key
        _write_all(self._active_fd, head, value, self._file_path(file))
        with self._lock:
            self._sizes[file] = offset + RECORD_HEADER + len(key) + len(value)
        self._unsynced = True
        return Pointer(file, offset, len(value), crc)

    def sync_appends(self) -> None:
        """Make every record appended so far durable (before the kv/ commit
        that points at them)."""
        if self._unsynced:
            if self.sync:
                try:
                    os.fdatasync(self._active_fd)
                except OSError as e:
                    raise DiskFailure(self.path, e) from e
            self._unsynced = False
            assert self._active is not None
            self.synced_sizes[self._active] = self._sizes[self._active]

    def begin(self, seq: int) -> None:
        """A kv/ write transaction numbered `seq` begins (its appends are
        its own until it commits)."""
        self._txn_seq = seq

    def committed(self, seq: int) -> None:
        """The kv/ write `seq` committed: the files it, or one before it,
        moved past are sealed (no transaction yet to commit points into them)."""
        if self._sealing:
            done = [f for s, f in self._sealing if s <= seq]
            with self._lock:
                self._sealed.update(done)
            self._sealing = [(s, f) for s, f in self._sealing if s > seq]

    def _open_next(self) -> None:
        if self._active is not None:
            self.sync_appends()
            os.close(self._active_fd)
            self._sealing.append((self._txn_seq, self._active))
            log.debug("blob file %d full at %d bytes", self._active, self._sizes[self._active])
        file = self._next
        self._next += 1
        p = self._file_path(file)
        try:
            self._active_fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self.sync:
                sync_directory(self.path)
        except OSError as e:
            raise DiskFailure(p, e) from e
        self._active = file
        self.synced_sizes[file] = 0
        with self._lock:
            self._sizes[file] = 0

    def sealed(self) -> list[int]:
        """Sealed files not yet retired, oldest first."""
        with self._lock:
            retired = {r.file for r in self._retired}
            return sorted(self._sealed - retired)

    def size(self, file: int) -> int:
        with self._lock:
            return self._sizes.get(file, 0)

    # -- reads (any thread) ------------------------------------------------------

    def read(self, key: bytes, pointer: Pointer) -> bytes:
        """The value `pointer` (held by `key`) names, checked."""
        want = RECORD_HEADER + len(key) + pointer.length
        handle = self._acquire(pointer.file)
        try:
            data = os.pread(handle.fd, want, pointer.offset)
        finally:
            self._release(handle)
        if len(data) != want:
            raise BlobError(self._file_path(pointer.file), f"short record at {pointer.offset}")
        crc, klen, vlen = _RECORD.unpack_from(data)
        view = memoryview(data)
        if (
            crc != pointer.crc
            or klen != len(key)
            or vlen != pointer.length
            or view[RECORD_HEADER : RECORD_HEADER + klen] != key
            or zlib.crc32(view[RECORD_HEADER + klen :]) != pointer.crc
        ):
            raise BlobError(
                self._file_path(pointer.file),
                f"the record at {pointer.offset} is not key {key[:32]!r}'s value as written",
            )
        return data[RECORD_HEADER + klen :]

    def resolve(self, key: bytes, value: bytes) -> bytes:
        """The user value a kv/ "data" value stands for (a pointer's
        target, checked)."""
        if looks_like_pointer(value):
            return self.read(bytes(key), decode_pointer(bytes(value)))
        return bytes(value)

    def resolved(self, pairs: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        """The pairs of a kv/ "data" scan with their values resolved."""
        for k, v in pairs:
            if looks_like_pointer(v):
                key = bytes(k)
                yield key, self.read(key, decode_pointer(bytes(v)))
            else:
                yield k, v

    def records(self, file: int) -> Iterator[Record]:
        """The records of `file`, headers and keys only; a torn tail (a
        crash mid-append) ends the walk."""
        handle = self._acquire(file)
        try:
            end = self.size(file)
            offset = 0
            while offset + RECORD_HEADER <= end:
                head = os.pread(handle.fd, RECORD_HEADER + MAX_KEY_SIZE, offset)
                if len(head) < RECORD_HEADER:
                    return
                _, klen, vlen = _RECORD.unpack_from(head)
                size = RECORD_HEADER + klen + vlen
                if not 0 < klen <= MAX_KEY_SIZE or offset + size > end or len(head) < size - vlen:
                    return  # not a record: what a crash mid-append left
                yield Record(offset, head[RECORD_HEADER : RECORD_HEADER + klen], vlen, size)
                offset += size
        finally:
            self._release(handle)

    def _acquire(self, file: int) -> _Fd:
        """A read descriptor of `file`, held until `_release` (an evicted
        or deleted file's descriptor closes when its last user is done)."""
        with self._readers_lock:
            handle = self._readers.get(file)
            if handle is None:
                p = self._file_path(file)
                try:
                    handle = _Fd(os.open(p, os.O_RDONLY))
                except FileNotFoundError:
                    raise BlobError(p, "the file is missing") from None
                self._readers[file] = handle
                self._evict()
            else:
                self._readers.move_to_end(file)
            handle.users += 1
            return handle

    def _release(self, handle: _Fd) -> None:
        with self._readers_lock:
            handle.users -= 1
            if handle.users == 0 and handle.dropped:
                os.close(handle.fd)

    def _evict(self) -> None:
        over = len(self._readers) - MAX_OPEN_READERS
        for file in [f for f, h in self._readers.items() if h.users == 0][: max(over, 0)]:
            self._drop(file)

    def _drop(self, file: int) -> None:
        handle = self._readers.pop(file, None)
        if handle is not None:
            handle.dropped = True
            if handle.users == 0:
                os.close(handle.fd)

    def open_readers(self) -> int:
        with self._readers_lock:
            return len(self._readers)

    # -- deletion ----------------------------------------------------------------

    def retire(self, file: int, seq: int, generation: int) -> None:
        """Delete `file` once kv/ write `seq` is durable and the reads of
        `generation` and older have ended (`reap`)."""
        with self._lock:
            self._retired.append(_Retired(file, seq, generation))

    def reap(self, durable_seq: int) -> int:
        """Delete the retired files whose time has come; returns how many."""
        with self._lock:
            ready = [r for r in self._retired if r.seq <= durable_seq and self._quiet(r.generation)]
            for r in ready:
                self._retired.remove(r)
                self._sizes.pop(r.file, None)
                self.synced_sizes.pop(r.file, None)
                self.scanned.pop(r.file, None)
                self.live.pop(r.file, None)
                self._sealed.discard(r.file)
        if not ready:
            return 0
        for r in ready:
            with self._readers_lock:
                self._drop(r.file)
            try:
                self._file_path(r.file).unlink(missing_ok=True)
            except OSError as e:
                raise DiskFailure(self.path, e) from e
            log.debug("blob file %d deleted", r.file)
        if self.sync:
            sync_directory(self.path)
        self.stats.collected_files += len(ready)
        return len(ready)

    def usage(self) -> BlobStats:
        with self._lock:
            self.stats.files = len(self._sizes)
            self.stats.bytes = sum(self._sizes.values())
            self.stats.retired = len(self._retired)
        return self.stats

    def close(self) -> None:
        if self._active is not None:
            os.close(self._active_fd)
            self._active = None
        with self._readers_lock:
            for file in list(self._readers):
                self._drop(file)

    def _file_path(self, file: int) -> Path:
        return self.path / f"{file:016x}.blob"


def _write_all(fd: int, head: bytes, value: bytes, path: Path) -> None:
    """`head` then `value`, without joining them (a value may be 16 MiB)."""
    parts = [memoryview(head), memoryview(value)]
    try:
        while parts:
            n = os.writev(fd, parts)
            while parts and n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            if parts and n:
                parts[0] = parts[0][n:]
    except OSError as e:
        raise DiskFailure(path, e) from e


__all__ = [
    "DEFAULT_FILE_SIZE",
    "DEFAULT_THRESHOLD",
    "POINTER_MAGIC",
    "POINTER_SIZE",
    "BlobError",
    "BlobFiles",
    "BlobStats",
    "Pointer",
    "Record",
    "decode_pointer",
    "looks_like_pointer",
    "value_size",
]

"""Where the PD keeps its metadata: the `MetaStorage` seam and its LMDB and
in-memory implementations.

Every ``save_*`` is synchronous and durable on return (LMDB commits with
fsync), so callers persist first and change memory after: a failed write
leaves the PD as it was. Writes are rare and small (bootstrap, PutStore, one
id block per `alloc_step` ids, SetConfig, and region metadata flushed in
batches), so they run on the caller's thread.

On-disk layout, one LMDB environment under the data directory::

    DIR/LOCK             flock'ed by the running PD (one PD per directory)
    DIR/meta/            LMDB env
        db "meta"        b"format"      -> u64 BE format version
                         b"cluster_id"  -> u64 BE (absent: not bootstrapped)
                         b"id_bound"    -> u64 BE (ids below it may be used)
                         b"schedulers"  -> the active schedulers' names, UTF-8,
                                           one per line (absent: never set, the
                                           defaults run)
        db "store"       store_id u64 BE  -> metapb.Store (CBOR message)
        db "region"      region_id u64 BE -> metapb.Region (CBOR message)
        db "config"      key name (UTF-8) -> value text (UTF-8)
        db "removed_store"  store_id u64 BE -> b"" (Tombstone stores taken
                         off the store list: their ids never join again)
        db "replaced_store" store_id u64 BE -> u64 BE, the id of the store
                         that replaced it at its address (its data was lost)

Keys are built by the named functions below. Big-endian integers make
LMDB's byte order the numeric order.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import lmdb

from kvproto import codec
from kvproto.codec import DecodeError
from kvproto.metapb import Region, RegionId, Store
from plumbing.dirlock import DataDirLockedError, DirLock

__all__ = [
    "CorruptMetaError",
    "DataDirLockedError",
    "LmdbMetaStorage",
    "MemoryMetaStorage",
    "MetaStorage",
    "StoredMeta",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT_VERSION: Final = 1
INITIAL_MAP_SIZE: Final = 64 << 20  # grows by doubling when full

_U64 = struct.Struct(">Q")

META_DB: Final = b"meta"
STORE_DB: Final = b"store"
REGION_DB: Final = b"region"
CONFIG_DB: Final = b"config"
# Added without a format change: a PD that predates it opens the
# environment as before and does not know the removed ids (it would let a
# removed store's process join again; it never writes this db).
REMOVED_STORE_DB: Final = b"removed_store"
# Likewise added without a format change (an older PD ignores it and shows
# no replacements; the Tombstone it wrote stays a Tombstone).
REPLACED_STORE_DB: Final = b"replaced_store"

FORMAT_KEY: Final = b"format"
CLUSTER_ID_KEY: Final = b"cluster_id"
ID_BOUND_KEY: Final = b"id_bound"
SCHEDULERS_KEY: Final = b"schedulers"


def store_key(store_id: int) -> bytes:
    return _U64.pack(store_id)


def region_key(region_id: int) -> bytes:
    return _U64.pack(region_id)


def config_key(name: str) -> bytes:
    return name.encode()


def _u64(value: int) -> bytes:
    return _U64.pack(value)


class CorruptMetaError(Exception):
    """A stored record that cannot be decoded."""


@dataclass(slots=True)
class StoredMeta:
    """Everything the PD persisted, as loaded at start."""

    cluster_id: int = 0  # 0: not bootstrapped
    id_bound: int = 0
    stores: list[Store] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    config: dict[str, str] = field(default_factory=dict)
    removed_stores: list[int] = field(default_factory=list)  # ids, ascending
    # A store whose data was lost -> the store that replaced it.
    replaced_stores: dict[int, int] = field(default_factory=dict)


class MetaStorage(Protocol):
    """The PD's durable metadata. Every save is durable on return; a save
    that raises may or may not have happened, and the caller must not
    change its memory."""

    def load(self) -> StoredMeta: ...

    def save_bootstrap(self, cluster_id: int, store: Store, region: Region) -> None:
        """The cluster id, first store and first region, atomically."""
        ...

    def save_id_bound(self, bound: int) -> None: ...

    def save_store(self, store: Store) -> None: ...

    def remove_store(self, store_id: int) -> None:
        """Delete the store's record and remember its id as removed,
        atomically."""
        ...

    def save_replacement(self, old: Store, new: Store) -> None:
        """`new` replaces `old` (now a Tombstone) at its address: both
        records and the replacement, atomically."""
        ...

    def save_config(self, items: Mapping[str, str]) -> None:
        """Replace the whole stored config."""
        ...

    def save_regions(self, put: Iterable[Region], delete: Iterable[RegionId]) -> None:
        """Store and delete region records, in one transaction."""
        ...

    def save_schedulers(self, names: Sequence[str]) -> None:
        """Replace the stored set of active schedulers."""
        ...

    def load_schedulers(self) -> list[str] | None:
        """The stored active schedulers; None if never saved."""
        ...


class MemoryMetaStorage:
    """A MetaStorage in memory for tests of the pure core. `fail_writes`
    makes every save raise OSError (a broken disk)."""

    def __init__(self) -> None:
        self.meta = StoredMeta()
        self.schedulers: list[str] | None = None
        self.fail_writes = False
        self.writes = 0

    def load(self) -> StoredMeta:
        m = self.meta
        return StoredMeta(
            m.cluster_id,
            m.id_bound,
            list(m.stores),
            list(m.regions),
            dict(m.config),
            list(m.removed_stores),
            dict(m.replaced_stores),
        )

    def _write(self) -> None:
        if self.fail_writes:
            raise OSError("injected write failure")
        self.writes += 1

    def save_bootstrap(self, cluster_id: int, store: Store, region: Region) -> None:
        self._write()
        self.meta.cluster_id = cluster_id
        self._put_store(store)
        self.meta.regions = [region]

    def save_id_bound(self, bound: int) -> None:
        self._write()
        self.meta.id_bound = bound

    def save_store(self, store: Store) -> None:
        self._write()
        self._put_store(store)

    def _put_store(self, store: Store) -> None:
        stores = {s.id: s for s in self.meta.stores}
        stores[store.id] = store
        self.meta.stores = sorted(stores.values(), key=lambda s: s.id)

    def remove_store(self, store_id: int) -> None:
        self._write()
        self.meta.stores = [s for s in self.meta.stores if s.id != store_id]
        self.meta.removed_stores = sorted({*self.meta.removed_stores, store_id})

    def save_replacement(self, old: Store, new: Store) -> None:
        self._write()
        self._put_store(old)
        self._put_store(new)
        self.meta.replaced_stores[old.id] = new.id

    def save_config(self, items: Mapping[str, str]) -> None:
        self._write()
        self.meta.config = dict(items)

    def save_schedulers(self, names: Sequence[str]) -> None:
        self._write()
        self.schedulers = list(names)

    def load_schedulers(self) -> list[str] | None:
        return None if self.schedulers is None else list(self.schedulers)

    def save_regions(self, put: Iterable[Region], delete: Iterable[RegionId]) -> None:
        self._write()
        regions = {r.id: r for r in self.meta.regions}
        for rid in delete:
            regions.pop(rid, None)
        for r in put:
            regions[r.id] = r
        self.meta.regions = sorted(regions.values(), key=lambda r: r.id)


class LmdbMetaStorage:
    """MetaStorage in an LMDB environment under `data_dir` (created if
    missing). Holds an exclusive lock on the directory until `close`.

    Raises DataDirLockedError if another process holds the lock, and
    CorruptMetaError if the directory holds an unknown format.
    """

    def __init__(
        self, data_dir: str | os.PathLike[str], *, map_size: int = INITIAL_MAP_SIZE
    ) -> None:
        self.path = Path(data_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = DirLock(self.path, "PD")
        try:
            self._env = lmdb.open(
                str(self.path / "meta"),
                map_size=map_size,
                max_dbs=8,
                subdir=True,
                sync=True,
                metasync=True,
            )
            self._dbs = {
                name: self._env.open_db(name)
                for name in (
                    META_DB,
                    STORE_DB,
                    REGION_DB,
                    CONFIG_DB,
                    REMOVED_STORE_DB,
                    REPLACED_STORE_DB,
                )
            }
            self._check_format()
        except BaseException:
            self._close_env()
            raise

    def close(self) -> None:
        self._close_env()

    def _close_env(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()  # idempotent
        self._lock.release()

    def __enter__(self) -> LmdbMetaStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_format(self) -> None:
        with self._env.begin(db=self._dbs[META_DB]) as txn:
            raw = txn.get(FORMAT_KEY)
        if raw is None:
            self._write(lambda txn: txn.put(FORMAT_KEY, _u64(FORMAT_VERSION), db=self._db(META_DB)))
            return
        version = _U64.unpack(raw)[0]
        if version != FORMAT_VERSION:
            raise CorruptMetaError(
                f"{self.path}: PD metadata format {version}, this PD reads format {FORMAT_VERSION}"
            )

    def _db(self, name: bytes) -> Any:
        return self._dbs[name]

    def _write(self, fn: Callable[[Any], object]) -> None:
        """Run `fn(txn)` in one write transaction; grow the map and retry the
        whole transaction when it is full."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    fn(txn)
                return
            except lmdb.MapFullError:
                new_size = self._env.info()["map_size"] * 2
                log.info("PD metadata map full; growing it to %d MiB", new_size >> 20)
                self._env.set_mapsize(new_size)

    # -- MetaStorage ----------------------------------------------------------

    def load(self) -> StoredMeta:
        meta = StoredMeta()
        with self._env.begin() as txn:
            raw = txn.get(CLUSTER_ID_KEY, db=self._db(META_DB))
            meta.cluster_id = 0 if raw is None else _U64.unpack(raw)[0]
            raw = txn.get(ID_BOUND_KEY, db=self._db(META_DB))
            meta.id_bound = 0 if raw is None else _U64.unpack(raw)[0]
            for _, v in txn.cursor(db=self._db(STORE_DB)):
                meta.stores.append(_decode(bytes(v), Store, "store"))
            for _, v in txn.cursor(db=self._db(REGION_DB)):
                meta.regions.append(_decode(bytes(v), Region, "region"))
            for k, _ in txn.cursor(db=self._db(REMOVED_STORE_DB)):
                meta.removed_stores.append(_U64.unpack(bytes(k))[0])
            for k, v in txn.cursor(db=self._db(REPLACED_STORE_DB)):
                meta.replaced_stores[_U64.unpack(bytes(k))[0]] = _U64.unpack(bytes(v))[0]
            for k, v in txn.cursor(db=self._db(CONFIG_DB)):
                try:
                    meta.config[bytes(k).decode()] = bytes(v).decode()
                except UnicodeDecodeError as e:
                    raise CorruptMetaError(f"config record {bytes(k)!r}: {e}") from e
        return meta

    def save_bootstrap(self, cluster_id: int, store: Store, region: Region) -> None:
        def fn(txn: Any) -> None:
            txn.put(CLUSTER_ID_KEY, _u64(cluster_id), db=self._db(META_DB))
            txn.put(store_key(store.id), codec.dumps(store), db=self._db(STORE_DB))
            txn.put(region_key(region.id), codec.dumps(region), db=self._db(REGION_DB))

        self._write(fn)

    def save_id_bound(self, bound: int) -> None:
        self._write(lambda txn: txn.put(ID_BOUND_KEY, _u64(bound), db=self._db(META_DB)))

    def save_store(self, store: Store) -> None:
        self._write(
            lambda txn: txn.put(store_key(store.id), codec.dumps(store), db=self._db(STORE_DB))
        )

    def remove_store(self, store_id: int) -> None:
        def fn(txn: Any) -> None:
            txn.delete(store_key(store_id), db=self._db(STORE_DB))
            txn.put(store_key(store_id), b"", db=self._db(REMOVED_STORE_DB))

        self._write(fn)

    def save_replacement(self, old: Store, new: Store) -> None:
        def fn(txn: Any) -> None:
            txn.put(store_key(old.id), codec.dumps(old), db=self._db(STORE_DB))
            txn.put(store_key(new.id), codec.dumps(new), db=self._db(STORE_DB))
            txn.put(store_key(old.id), _u64(new.id), db=self._db(REPLACED_STORE_DB))

        self._write(fn)

    def save_config(self, items: Mapping[str, str]) -> None:
        def fn(txn: Any) -> None:
            db = self._db(CONFIG_DB)
            txn.drop(db, delete=False)
            for name, value in items.items():
                txn.put(config_key(name), value.encode(), db=db)

        self._write(fn)

    def save_schedulers(self, names: Sequence[str]) -> None:
        value = "\n".join(names).encode()
        self._write(lambda txn: txn.put(SCHEDULERS_KEY, value, db=self._db(META_DB)))

    def load_schedulers(self) -> list[str] | None:
        with self._env.begin(db=self._dbs[META_DB]) as txn:
            raw = txn.get(SCHEDULERS_KEY)
        if raw is None:
            return None
        try:
            text = bytes(raw).decode()
        except UnicodeDecodeError as e:
            raise CorruptMetaError(f"schedulers record: {e}") from e
        return text.split("\n") if text else []

    def save_regions(self, put: Iterable[Region], delete: Iterable[RegionId]) -> None:
        puts = [(region_key(r.id), codec.dumps(r)) for r in put]
        deletes = [region_key(rid) for rid in delete]

        def fn(txn: Any) -> None:
            db = self._db(REGION_DB)
            for k in deletes:
                txn.delete(k, db=db)
            for k, v in puts:
                txn.put(k, v, db=db)

        self._write(fn)


def _decode(raw: bytes, cls: type[T], what: str) -> T:
    try:
        return codec.loads(raw, cls)
    except DecodeError as e:
        raise CorruptMetaError(f"{what} record: {e}") from e

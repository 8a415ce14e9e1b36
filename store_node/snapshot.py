"""Region snapshots as files: generate, verify, load.

A snapshot is taken from ONE `kv/` read transaction: the region's apply
state (index and term), its region state and every pair in its key range,
so data and metadata always agree. The pairs stream into a file under
`snap/` (bounded memory), with a CRC-32 over the file; the Raft snapshot's
opaque data is a `SnapshotDescriptor` naming size and checksum. Loading
replays the file into a `kv/` write transaction.

The region's client sessions (`store_node.sessions`) travel with the data:
a retry answered from a session must be answered alike by every replica.

With a `TreeShape`, generating also builds the hash tree of the region's
sub-ranges (`store_node.snapshot_digest`) from the same pairs, kept beside
the file: what an incremental catch-up compares (`store_node.snapshot_delta`).
A delta file has this same format, holding the pairs of its ranges only.

File format: the magic b"SKVSNAP2", then per pair a 4-byte big-endian key
length, a 4-byte big-endian value length, the key, the value: first the
data pairs, then (after a record whose key length is 0xFFFFFFFF and value
length 0) the session rows, keys without their region prefix.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from kvproto import codec
from kvproto.raft_serverpb import RegionLocalState, SnapshotDescriptor, SnapshotKey
from raft.types import Snapshot, SnapshotMetadata
from store_node import keys, membership
from store_node.engine import Engine, KvTxn, scan_cursor
from store_node.records import decode_apply_state
from store_node.snapshot_digest import TreeBuilder, TreeShape, save_tree, tree_path

log = logging.getLogger(__name__)

MAGIC = b"SKVSNAP2"
# Starts the session section (no key is that long).
_SESSIONS_MARK = (0xFFFFFFFF, 0)
_LENS = struct.Struct(">II")
_READ_CHUNK = 1 << 20


class SnapshotFileError(Exception):
    """A snapshot file is missing, truncated or fails its checksum."""


class SnapDir:
    """The `snap/` directory of a store: names of generated and received files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def clear_stale(self) -> None:
        """Drop every file left by an earlier run (nothing in flight survives)."""
        for p in self.path.iterdir():
            if p.is_file():
                p.unlink()

    def generated(self, region_id: int, term: int, index: int) -> Path:
        return self.path / f"gen_{region_id}_{term}_{index}.snap"

    def received(self, key: SnapshotKey, *, delta: bool = False) -> Path:
        kind = "delta" if delta else "rcv"
        return self.path / f"{kind}_{key.region_id}_{key.term}_{key.index}_{key.from_store}.snap"


def generate(
    engine: Engine, snap_dir: SnapDir, region_id: int, shape: TreeShape | None = None
) -> tuple[Snapshot, Path]:
    """Write a snapshot of `region_id` at its current applied index, and with
    `shape` its hash tree (blocking: run it in a worker thread)."""
    with engine.read_kv() as txn:
        raw_apply = txn.get(keys.region_key(region_id), db=engine.kv_db(keys.APPLY_DB))
        raw_region = txn.get(keys.region_key(region_id), db=engine.kv_db(keys.REGION_DB))
        if raw_apply is None or raw_region is None:
            raise SnapshotFileError(f"region {region_id} has no state to snapshot")
        apply = decode_apply_state(bytes(raw_apply))
        region = codec.loads(bytes(raw_region), RegionLocalState).region
        path = snap_dir.generated(region_id, apply.applied_term, apply.applied_index)
        tmp = path.with_suffix(".tmp")
        crc = zlib.crc32(MAGIC)
        size = len(MAGIC)
        count = 0
        with open(tmp, "wb") as f:

            def write(rec: bytes) -> None:
                nonlocal crc, size
                f.write(rec)
                crc = zlib.crc32(rec, crc)
                size += len(rec)

            f.write(MAGIC)
            tree = None
            if shape is not None:
                tree = TreeBuilder(shape, region.start_key, region.end_key, size)
            for k, v in engine.scan_data(txn, region.start_key, region.end_key):
                key = bytes(k)
                rec = _LENS.pack(len(key), len(v)) + key + bytes(v)
                if tree is not None:
                    tree.add(key, rec, size)
                write(rec)
                count += 1
            data_end = size
            write(_LENS.pack(*_SESSIONS_MARK))
            prefix = keys.session_prefix(region_id)
            for k, v in scan_cursor(
                txn, engine.kv_db(keys.SESSION_DB), prefix, keys.session_prefix(region_id + 1)
            ):
                suffix = bytes(k)[len(prefix) :]
                write(_LENS.pack(len(suffix), len(v)) + suffix + bytes(v))
            f.flush()
            os.fsync(f.fileno())
        if tree is not None:
            save_tree(tree.finish(data_end, size), tree_path(path))
    os.replace(tmp, path)
    desc = SnapshotDescriptor(
        region=region,
        index=apply.applied_index,
        term=apply.applied_term,
        size=size,
        checksum=crc,
        keys=count,
    )
    meta = SnapshotMetadata(
        index=apply.applied_index,
        term=apply.applied_term,
        conf_state=membership.conf_state_of(region),
    )
    log.info(
        "region %d: snapshot at %d/%d generated: %d keys, %d bytes",
        region_id,
        desc.index,
        desc.term,
        count,
        size,
    )
    return Snapshot(metadata=meta, data=codec.dumps(desc)), path


def descriptor_of(snap: Snapshot) -> SnapshotDescriptor:
    return codec.loads(snap.data, SnapshotDescriptor)


def verify(path: Path, desc: SnapshotDescriptor) -> None:
    """Raise SnapshotFileError unless the file has the size and checksum the
    descriptor announces."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SnapshotFileError(f"{path.name}: {e.strerror}") from e
    if size != desc.size:
        raise SnapshotFileError(f"{path.name}: {size} bytes, expected {desc.size}")
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            crc = zlib.crc32(chunk, crc)
    if crc != desc.checksum:
        raise SnapshotFileError(f"{path.name}: checksum mismatch")


def read_records(path: Path) -> Iterator[tuple[bool, bytes, bytes]]:
    """(is a session row, key, value) for every record of the file."""
    sessions = False
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise SnapshotFileError(f"{path.name}: not a snapshot file")
        while True:
            head = f.read(_LENS.size)
            if not head:
                return
            if len(head) != _LENS.size:
                raise SnapshotFileError(f"{path.name}: truncated record header")
            klen, vlen = _LENS.unpack(head)
            if (klen, vlen) == _SESSIONS_MARK:
                sessions = True
                continue
            body = f.read(klen + vlen)
            if len(body) != klen + vlen:
                raise SnapshotFileError(f"{path.name}: truncated record")
            yield sessions, body[:klen], body[klen:]


def read_span(path: Path, begin: int, end: int) -> Iterator[bytes]:
    """The data records, whole (length header included), in bytes [begin,
    end) of the file: a span whose bounds are record bounds, as a hash tree
    notes them."""
    with open(path, "rb") as f:
        f.seek(begin)
        data = f.read(end - begin)
    if len(data) != end - begin:
        raise SnapshotFileError(f"{path.name}: shorter than {end}")
    pos = 0
    while pos < len(data):
        klen, vlen = _LENS.unpack_from(data, pos)
        stop = pos + _LENS.size + klen + vlen
        if stop > len(data):
            raise SnapshotFileError(f"{path.name}: a record crosses {end}")
        yield data[pos:stop]
        pos = stop


def load_into(txn: KvTxn, path: Path, region_id: int) -> int:
    """Write every record of the file into the transaction (the region's
    data and session rows); returns the count of data pairs."""
    n = 0
    for is_session, k, v in read_records(path):
        if is_session:
            txn.put(keys.SESSION_DB, keys.session_prefix(region_id) + k, v)
        else:
            txn.put(keys.DATA_DB, k, v)
            n += 1
    return n

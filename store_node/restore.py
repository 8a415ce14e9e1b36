"""Loading a backup into a fresh data directory (`shardkv restore`).

Each region copy of a backup is a snapshot file (`store_node.snapshot`) with
its size, CRC-32, key count and data digest (`backup_copies.data_digest`)
in the manifest. `verify_copy` checks all four before anything is written;
`load_copies` writes the data pairs of every copy, clipped to the range the
manifest gives it, into kv/'s data db, then marks the directory as restored
(`identity.RESTORED_BACKUP_KEY`) and syncs. Nothing else is written: no
region, no apply state, no Raft state. The store started on the directory
bootstraps a new cluster (`identity.ensure_identity`: a restored directory
may not join one) whose first region, [b"", +inf) at the initial applied
index (`bootstrap.write_initial_region`), thus holds all of the data as
part of its state machine; the other stores get it in Raft snapshots.
Client sessions are not restored (a backup carries them; they belong to
regions and clients of the old cluster).

A crash while loading leaves a directory without the mark: restore then
refuses it as not empty (the operator empties it and runs again); a crash
after the mark resumes (the same backup's mark: nothing to load again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kvproto.metapb import Region, RegionEpoch, RegionId, key_in_range
from kvproto.raft_serverpb import SnapshotDescriptor
from store_node import keys
from store_node.backup_copies import data_digest
from store_node.bootstrap import read_store_ident
from store_node.engine import Engine, WriteBatch
from store_node.identity import RESTORED_BACKUP_KEY, read_restored
from store_node.snapshot import SnapshotFileError, read_records, verify

log = logging.getLogger(__name__)

# Bytes of pairs per kv/ transaction while loading.
LOAD_BATCH_BYTES = 8 << 20


class RestoreError(Exception):
    """A backup file fails its checks, or the data directory cannot take it."""


@dataclass(frozen=True, slots=True)
class CopyFile:
    """One region copy of a backup, as its manifest describes it."""

    path: Path
    region_id: int
    start_key: bytes  # the range it contributes
    end_key: bytes
    epoch: RegionEpoch
    applied_index: int
    applied_term: int
    size: int
    crc32: int
    keys: int
    data_sha256: bytes


def verify_copy(c: CopyFile) -> None:
    """RestoreError unless the file has the manifest's size, CRC-32, key
    count and data digest (blocking: reads the file twice)."""
    desc = SnapshotDescriptor(
        Region(RegionId(c.region_id), c.start_key, c.end_key, c.epoch, ()),
        c.applied_index,
        c.applied_term,
        c.size,
        c.crc32,
        c.keys,
    )
    try:
        verify(c.path, desc)
        count, digest = data_digest(c.path)
    except SnapshotFileError as e:
        raise RestoreError(str(e)) from None
    if count != c.keys:
        raise RestoreError(f"{c.path.name}: {count} data pairs, the manifest says {c.keys}")
    if digest != c.data_sha256:
        raise RestoreError(f"{c.path.name}: data checksum mismatch")


class DataDirState(Enum):
    EMPTY = "empty"
    # Holds this very backup, loaded by an earlier run (resume).
    RESTORED = "restored"
    OTHER = "other"


def data_dir_state(data_dir: Path, raft_dir: Path | None, backup_id: bytes) -> DataDirState:
    """Whether the directories are empty, hold this backup already, or hold
    something else (another backup, a store's data, anything)."""
    dirs = [data_dir] if raft_dir is None else [data_dir, raft_dir]
    if all(not d.exists() or (d.is_dir() and not any(d.iterdir())) for d in dirs):
        return DataDirState.EMPTY
    if not (data_dir / "kv" / "data.mdb").is_file():
        return DataDirState.OTHER
    engine = Engine(data_dir, raft_dir)
    try:
        if read_restored(engine) == backup_id:
            return DataDirState.RESTORED
        return DataDirState.OTHER
    finally:
        engine.close()


def load_copies(
    engine: Engine,
    copies: Iterable[CopyFile],
    backup_id: bytes,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Write the data pairs of every copy (within its range) into kv/, then
    the restored mark; returns (pairs, bytes). `progress(pairs, bytes)` is
    told after each copy. The data dir must hold nothing yet."""
    if read_store_ident(engine) is not None or read_restored(engine) is not None:
        raise RestoreError(f"{engine.data_dir} already holds a store's data")
    total_keys = total_bytes = 0
    for c in copies:
        batch = WriteBatch()
        pending = 0
        for is_session, k, v in read_records(c.path):
            if is_session or not key_in_range(k, c.start_key, c.end_key):
                continue
            batch.put(keys.DATA_DB, k, v)
            pending += len(k) + len(v)
            total_keys += 1
            total_bytes += len(k) + len(v)
            if pending >= LOAD_BATCH_BYTES:
                engine.write_kv_batch(batch)
                batch, pending = WriteBatch(), 0
        engine.write_kv_batch(batch)
        if progress is not None:
            progress(total_keys, total_bytes)
    # Last, so that a directory with the mark holds all of the data.
    engine.sync_kv()
    mark = WriteBatch()
    mark.put(keys.META_DB, RESTORED_BACKUP_KEY, backup_id)
    engine.write_kv_batch(mark)
    engine.sync_kv()
    log.info("restored %d pairs (%d bytes) into %s", total_keys, total_bytes, engine.data_dir)
    return total_keys, total_bytes

"""Collecting blob files (`store_node.blob_files`) no value lives in any more.

Collection is lazy, as in WiscKey: overwrites and deletes touch
only kv/, and a pass over the sealed blob files finds which records kv/
still points at. A file nothing points at is retired (deleted once that is
durable and no older read runs, `BlobFiles.retire`); a file mostly dead
has its live records copied to the active file, the pointers moved in one
kv/ transaction, and is retired in turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from store_node import keys
from store_node.blob_files import BlobFiles, Pointer, Record, decode_pointer, looks_like_pointer
from store_node.engine import Engine

log = logging.getLogger(__name__)

DATA_DB = keys.DATA_DB


@dataclass(slots=True)
class Liveness:
    file: int
    size: int
    live_bytes: int = 0
    live: list[Record] = field(default_factory=list)


@dataclass(slots=True)
class CollectReport:
    files: int = 0
    live_bytes: int = 0
    retired: list[int] = field(default_factory=list)
    rewritten: list[int] = field(default_factory=list)
    rewritten_bytes: int = 0
    # Files left for the next pass (over this one's budgets).
    more: bool = False


def _pointer_to(txn: Any, data_db: Any, file: int, rec: Record) -> Pointer | None:
    """kv/'s pointer to record `rec` of `file` (a raw LMDB transaction),
    or None if its key holds anything else now."""
    v = txn.get(rec.key, db=data_db)
    if v is None or not looks_like_pointer(v):
        return None
    p = decode_pointer(bytes(v))
    return p if p.file == file and p.offset == rec.offset else None


def liveness(txn: Any, data_db: Any, blobs: BlobFiles, file: int) -> Liveness:
    """Which records of `file` kv/ (a raw LMDB transaction) points at."""
    out = Liveness(file, blobs.size(file))
    for rec in blobs.records(file):
        if _pointer_to(txn, data_db, file, rec) is not None:
            out.live_bytes += rec.size
            out.live.append(rec)
    return out


def collect(
    engine: Engine,
    *,
    discardable_ratio: float,
    max_rewrite_bytes: int = 16 << 20,
    max_files: int = 64,
) -> CollectReport:
    """One collection pass over the sealed blob files (the kv/ writer's
    thread: it may write): the `max_files` looked at longest ago (a header
    read and an LMDB get per record). Files with no live record are
    retired; files whose dead share is at least `discardable_ratio` have
    their live records moved, up to `max_rewrite_bytes` of them per pass."""
    blobs = engine.blobs
    report = CollectReport()
    sealed = blobs.sealed()
    files = sorted(sealed, key=lambda f: blobs.scanned.get(f, -1))[:max_files]
    report.more = len(files) < len(sealed)
    blobs.passes += 1
    for f in files:
        blobs.scanned[f] = blobs.passes
    with engine.read_kv() as txn:
        # No state this read sees is newer than `seen_seq`: once that is
        # durable, no state a power loss returns to points into a file
        # found dead here (sealed files take no new pointers).
        seen_seq = engine.kv_begun_seq
        db = engine.kv_db(DATA_DB)
        found = [liveness(txn, db, blobs, f) for f in files]
    generation = engine.read_generation()
    sparse: list[Liveness] = []
    for lv in found:
        report.files += 1
        report.live_bytes += lv.live_bytes
        blobs.live[lv.file] = lv.live_bytes
        if lv.live_bytes == 0:
            blobs.retire(lv.file, seen_seq, generation)
            report.retired.append(lv.file)
        elif lv.size and (lv.size - lv.live_bytes) / lv.size >= discardable_ratio:
            sparse.append(lv)
    # The writer's thread is the store's: a bounded rewrite per pass, the
    # emptiest files first (most space back per byte copied).
    budget = max_rewrite_bytes
    chosen: list[Liveness] = []
    for lv in sorted(sparse, key=lambda lv: lv.live_bytes):
        if lv.live_bytes > budget and chosen:
            report.more = True
            break
        chosen.append(lv)
        budget -= lv.live_bytes
    if chosen:
        moved = engine.write_kv_raw(lambda txn, dbs: _rewrite(txn, dbs[DATA_DB], blobs, chosen))
        generation = engine.read_generation()
        for lv in chosen:
            blobs.retire(lv.file, engine.kv_begun_seq, generation)
            report.rewritten.append(lv.file)
        report.rewritten_bytes += moved
    # Files not looked at in this pass count as last seen (new: all live).
    blobs.stats.live_bytes = sum(blobs.live.get(f, blobs.size(f)) for f in blobs.sealed())
    blobs.stats.rewritten_bytes += report.rewritten_bytes
    blobs.reap(engine.kv_durable_seq)
    if report.retired or report.rewritten:
        log.info(
            "blob collection: %d files, %d live bytes; %d retired, %d rewritten (%d bytes moved)",
            report.files,
            report.live_bytes,
            len(report.retired),
            len(report.rewritten),
            report.rewritten_bytes,
        )
    return report


def _rewrite(txn: Any, data_db: Any, blobs: BlobFiles, chosen: list[Liveness]) -> int:
    """Copy each still-pointed-at record of `chosen` to the active file and
    move its pointer (inside the kv/ write transaction, synced before it
    commits by the engine)."""
    moved = 0
    for lv in chosen:
        for rec in lv.live:
            p = _pointer_to(txn, data_db, lv.file, rec)
            if p is None:
                continue  # overwritten since the liveness pass
            value = blobs.read(rec.key, p)
            txn.put(rec.key, blobs.append(rec.key, value).encode(), db=data_db)
            moved += len(value)
    return moved

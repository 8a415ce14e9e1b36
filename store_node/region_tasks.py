"""Whole-region writes to `kv/`: installing a snapshot, destroying a peer.

Like `store_node.apply`, these run inside the round's single `kv/` write
transaction and only read their task. The Raft-side half of each (resetting
or deleting the region's log) is written after this transaction is durable,
so that a crash never leaves a log that disagrees with the apply state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kvproto.metapb import Region
from kvproto.raft_serverpb import PeerState
from plumbing.logs import log_fields
from store_node import keys, sessions
from store_node.apply import write_apply_state, write_region_state
from store_node.engine import KvTxn
from store_node.records import ApplyState
from store_node.snapshot import load_into

log = logging.getLogger(__name__)

# [start, end) key ranges; end b"" is +infinity.
Range = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class SnapshotTask:
    """Replace the data of `clear` ranges by the snapshot file's pairs, and
    set the region and apply state to the snapshot point."""

    region: Region
    path: Path
    index: int
    term: int
    clear: tuple[Range, ...]


@dataclass(frozen=True, slots=True)
class DestroyTask:
    """Delete a removed peer's data in `clear` and leave a tombstone."""

    region: Region
    clear: tuple[Range, ...]


def subtract_ranges(target: Range, others: list[Range]) -> list[Range]:
    """Parts of `target` not covered by any of `others`."""
    parts = [target]
    for o_start, o_end in others:
        nxt: list[Range] = []
        for s, e in parts:
            # Left of the other range.
            if s < o_start:
                left_end = o_start if (not e or o_start < e) else e
                if not e or s < left_end:
                    nxt.append((s, left_end))
            # Right of the other range.
            if o_end and (not e or o_end < e):
                right_start = max(s, o_end)
                nxt.append((right_start, e))
        parts = [(s, e) for s, e in nxt if not e or s < e]
    return parts


def install_snapshot(txn: KvTxn, task: SnapshotTask) -> int:
    for start, end in task.clear:
        txn.delete_range(keys.DATA_DB, start, end)
    sessions.delete_region(txn, task.region.id)
    n = load_into(txn, task.path, task.region.id)
    write_region_state(txn, task.region)
    write_apply_state(txn, task.region.id, ApplyState(task.index, task.index, task.term, task.term))
    log.info(
        "region %d: snapshot %d/%d installed (%d keys)",
        task.region.id,
        task.index,
        task.term,
        n,
        extra=log_fields(region=task.region.id),
    )
    return n


def destroy_peer(txn: KvTxn, task: DestroyTask) -> None:
    for start, end in task.clear:
        txn.delete_range(keys.DATA_DB, start, end)
    sessions.delete_region(txn, task.region.id)
    write_region_state(txn, task.region, PeerState.TOMBSTONE)
    txn.delete(keys.APPLY_DB, keys.region_key(task.region.id))

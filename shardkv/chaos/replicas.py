"""The replica comparison of `shardkv chaos`: after the run, with the
stores stopped, every region's copies are read from the stores' data
directories; those at the region's newest epoch and highest applied index
must hold the same data. Needs the server extra (it reads LMDB)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ReplicaState", "read_replicas", "replica_mismatches"]


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """One store's copy of a region, read from its data directory."""

    store: int
    region_id: int
    version: int  # the region epoch's version (splits)
    applied_index: int
    checksum: int  # CRC-32 of its data, keys and values in order


def replica_mismatches(replicas: Sequence[ReplicaState]) -> tuple[list[str], int]:
    """Per region, the copies at its newest epoch version and its highest
    applied index must hold the same data. Returns the regions whose copies
    differ (described) and how many copies were behind (not compared)."""
    by_region: dict[int, list[ReplicaState]] = {}
    for r in replicas:
        by_region.setdefault(r.region_id, []).append(r)
    differ: list[str] = []
    behind = 0
    for region_id, copies in sorted(by_region.items()):
        newest = max((c.version, c.applied_index) for c in copies)
        current = [c for c in copies if (c.version, c.applied_index) == newest]
        behind += len(copies) - len(current)
        if len({c.checksum for c in current}) > 1:
            sums = ", ".join(f"store {c.store}: {c.checksum:08x}" for c in current)
            differ.append(
                f"region {region_id} at applied index {newest[1]}: copies differ ({sums})"
            )
    return differ, behind


def read_replicas(data_dirs: Sequence[tuple[int, Path]]) -> list[ReplicaState]:
    """Every region copy in the (stopped) stores' data directories."""
    from store_node import keys
    from store_node.bootstrap import load_regions
    from store_node.engine import Engine

    out: list[ReplicaState] = []
    for store, data_dir in data_dirs:
        engine = Engine(data_dir)
        try:
            for region, apply_state in load_regions(engine):
                crc = 0
                for k, v in engine.kv_items(keys.DATA_DB, region.start_key, region.end_key):
                    crc = zlib.crc32(v, zlib.crc32(k, crc))
                out.append(
                    ReplicaState(
                        store, region.id, region.epoch.version, apply_state.applied_index, crc
                    )
                )
        finally:
            engine.close()
    return out

"""Region split rules: which keys to split at, and what a split produces.

A split is metadata only: the data of every new region already lies in
`kv/`. The original region keeps the leftmost part `[start, first split
key)` and its id; the new regions take the parts to its right, in key
order, each with one new peer per peer of the original (same stores, same
roles). Every part gets the original's epoch with `version` bumped once per
new region (`kvproto.epoch.bumped`), so the PD and clients order them after
the original.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvproto import epoch
from kvproto.metapb import Peer, PeerRole, Region
from kvproto.raft_cmdpb import BatchSplitRequest
from store_node.engine import Engine


class SplitError(ValueError):
    """A split request that cannot apply to the region as it is."""


def split_regions(region: Region, req: BatchSplitRequest) -> list[Region]:
    """The regions after applying `req` to `region`: the original (shrunk)
    first, then the new ones in key order. Raises SplitError."""
    if not req.requests:
        raise SplitError("a split needs at least one split key")
    if any(p.role in (PeerRole.INCOMING_VOTER, PeerRole.DEMOTING_VOTER) for p in region.peers):
        raise SplitError("region is in a joint configuration")
    split_keys = [r.split_key for r in req.requests]
    prev = region.start_key
    for k in split_keys:
        if not k or k <= prev:
            raise SplitError(f"split key {k!r} is not above {prev!r}")
        if region.end_key and k >= region.end_key:
            raise SplitError(f"split key {k!r} is not below the region end {region.end_key!r}")
        prev = k
    for r in req.requests:
        if len(r.new_peer_ids) != len(region.peers):
            raise SplitError(
                f"{len(r.new_peer_ids)} peer ids for new region {r.new_region_id}, "
                f"region has {len(region.peers)} peers"
            )
    new_epoch = epoch.bumped(region.epoch, epoch.AdminCmdType.BATCH_SPLIT, len(split_keys))
    bounds = [region.start_key, *split_keys, region.end_key]
    out = [Region(region.id, bounds[0], bounds[1], new_epoch, region.peers)]
    for i, r in enumerate(req.requests):
        peers = tuple(
            Peer(pid, p.store_id, p.role)
            for p, pid in zip(region.peers, r.new_peer_ids, strict=True)
        )
        out.append(Region(r.new_region_id, bounds[i + 1], bounds[i + 2], new_epoch, peers))
    return out


@dataclass(frozen=True, slots=True)
class SplitCheck:
    """What a scan of one region found: its exact size and key count, and
    the keys to split it at (empty: no split needed)."""

    region: Region
    size: int
    keys: int
    split_keys: tuple[bytes, ...]


def choose_split_keys(
    pairs: Iterable[tuple[bytes, int]], max_size: int, max_keys: int
) -> tuple[int, int, list[bytes]]:
    """Walk (key, bytes) in key order; if the total exceeds a limit, cut it
    into parts of about half the limit (so fresh parts have room to grow).
    Returns (total bytes, total keys, split keys). A split key is always the
    first key of a part: no key is ever split in two."""
    part_size = max(1, max_size // 2)
    part_keys = max(1, max_keys // 2)
    total_size = total_keys = 0
    size = count = 0
    candidates: list[bytes] = []
    for key, nbytes in pairs:
        if (size >= part_size or count >= part_keys) and count > 0:
            candidates.append(key)
            size = count = 0
        size += nbytes
        count += 1
        total_size += nbytes
        total_keys += 1
    if total_size <= max_size and total_keys <= max_keys:
        return total_size, total_keys, []
    if candidates and (size < part_size // 4 and count < part_keys // 4):
        # Fold a tiny last part into the previous one.
        candidates.pop()
    return total_size, total_keys, candidates


def scan_region(engine: Engine, region: Region, max_size: int, max_keys: int) -> SplitCheck:
    """Measure `region` in kv/ and choose split keys (blocking: run it in a
    worker thread)."""
    with engine.read_kv() as txn:
        pairs = (
            (bytes(k), len(k) + n)
            for k, n in engine.scan_data_sizes(txn, region.start_key, region.end_key)
        )
        size, count, split_keys = choose_split_keys(pairs, max_size, max_keys)
    return SplitCheck(region, size, count, tuple(split_keys))

"""Incremental catch-up: only the sub-ranges that differ travel.

A follower that was down while its leader truncated the log past it still
holds an older copy of the region. Before sending a snapshot, the sender
asks the receiving store which sub-ranges of the snapshot's hash tree
(`store_node.snapshot_digest`) differ in its copy, and sends a delta file:
the pairs of those sub-ranges only, then every session row, in the snapshot
file format, its descriptor marked with a `SnapshotDelta` (the replaced
ranges and the copy's applied point). The parts:

* `exchange`: the sender's side of the comparison, sans-IO (a generator of
  requests fed the answers): the groups first, then the leaves of the
  groups that differ, in requests of at most `DeltaPolicy.max_ranges`
  ranges. The first answer names the copy's applied point (its *base*);
  every later request carries it and the receiver refuses it if its copy
  moved meanwhile.
* `compare`: the receiver's answer, from ONE `kv/` read transaction: the
  region's state (a usable copy is an initialized peer of that region whose
  key range is the snapshot's), its applied point and the hashes.
* `build_delta`: the delta file, copied record by record from the full
  snapshot file (the tree knows each leaf's offsets), so it is exactly the
  data of the snapshot's read transaction.
* `delta_refusal`: the receiving core's check when the delta arrives and
  again when it installs: the peer is still initialized on the same range,
  at the base. The install (`snapshot_control.install`) is the full one
  with the replaced ranges as the ranges to clear: one `kv/` transaction
  deletes them, writes the file's pairs, region and apply state and the
  sessions; the log reset follows it as for a full snapshot.

A full snapshot is the fallback whenever there is no tree, no usable copy,
the exchange fails, the copy moved, or the delta would be more than
`max_fraction` of the full file.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path

from kvproto import codec
from kvproto.metapb import Region
from kvproto.raft_serverpb import (
    DigestRun,
    PeerState,
    RaftMessage,
    RegionLocalState,
    SnapshotDelta,
    SnapshotDescriptor,
    SnapshotDigestRequest,
    SnapshotDigestResponse,
    SnapshotKey,
)
from store_node import keys
from store_node.engine import Engine
from store_node.peer import Peer
from store_node.records import decode_apply_state
from store_node.snapshot import MAGIC, read_span
from store_node.snapshot_digest import (
    SnapshotTree,
    TreeError,
    check_runs,
    differing,
    hash_leaves,
    load_tree,
    split_runs,
    tree_path,
)

log = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class DeltaPolicy:
    """When a delta is worth it, and how the comparison is cut."""

    # A delta larger than this fraction of the full file goes as the full.
    max_fraction: float = 0.5
    # Ranges per digest request (a frame stays far inside the RPC limits).
    max_ranges: int = 8192


class NoDelta(Exception):
    """Why this snapshot goes whole."""


@dataclass(frozen=True, slots=True)
class Differing:
    """The outcome of an exchange: the receiver's copy applied at
    (`base_index`, `base_term`) differs from the snapshot in these leaves."""

    base_index: int
    base_term: int
    leaves: tuple[int, ...]


Exchange = Generator[SnapshotDigestRequest, object, Differing]


def exchange(
    key: SnapshotKey, region: Region, full: Path, tree: SnapshotTree, policy: DeltaPolicy
) -> Exchange:
    """Yield the digest requests, each to be answered (`send`) with the
    receiver's response; returns the differing leaves. Raises NoDelta when
    the receiver refuses or answers something else. Between the levels it
    reads the differing groups' records back from the snapshot file `full`
    to hash their leaves (blocking: a store runs each step in a thread)."""
    base = (0, 0)

    def compare(runs: list[DigestRun]) -> Generator[SnapshotDigestRequest, object, list[int]]:
        nonlocal base
        out: list[int] = []
        offset = 0
        for batch in split_runs(runs, policy.max_ranges):
            resp = yield SnapshotDigestRequest(key, region, base[0], base[1], tuple(batch))
            if not isinstance(resp, SnapshotDigestResponse):
                raise NoDelta(f"unexpected answer {type(resp).__name__}")
            if resp.error:
                raise NoDelta(resp.error)
            if base == (0, 0):
                base = (resp.base_index, resp.base_term)
            elif (resp.base_index, resp.base_term) != base:
                raise NoDelta("the copy moved during the comparison")
            size = sum(len(r.hashes) for r in batch)
            if any(not 0 <= i < size for i in resp.differing):
                raise NoDelta("answer out of range")
            out.extend(offset + i for i in sorted(set(resp.differing)))
            offset += size
        return out

    groups = yield from compare([tree.group_run()])
    runs = []
    for g in groups:
        span = tree.group_span(g)
        begin, end = tree.leaf_span(span[0])[0], tree.leaf_span(span[-1])[1]
        runs.append(tree.leaf_run(g, hash_leaves(tree, read_span(full, begin, end), g)))
    positions = yield from compare(runs)
    leaves = [i for g in groups for i in tree.group_span(g)]
    return Differing(base[0], base[1], tuple(leaves[p] for p in positions))


def check_worth(tree: SnapshotTree, found: Differing, full_size: int, policy: DeltaPolicy) -> int:
    """The size of the delta file of `found`; NoDelta if it is too large a
    share of the full file to be worth it."""
    data = 0
    for i in found.leaves:
        begin, end = tree.leaf_span(i)
        data += end - begin
    size = len(MAGIC) + data + tree.file_size - tree.data_end
    if size > policy.max_fraction * full_size:
        raise NoDelta(f"a delta of {size} bytes is not worth it ({full_size} whole)")
    return size


def with_descriptor(msg: RaftMessage, desc: SnapshotDescriptor) -> RaftMessage:
    """The Raft snapshot message `msg` carrying `desc` instead."""
    snap = msg.message.snapshot
    assert snap is not None
    data = codec.dumps(desc)
    return replace(msg, message=replace(msg.message, snapshot=replace(snap, data=data)))


def prepare(
    full: Path,
    msg: RaftMessage,
    key: SnapshotKey,
    answer: Callable[[SnapshotDigestRequest], object],
    policy: DeltaPolicy,
    out: Path,
) -> RaftMessage:
    """The whole sender's side in one thread, `answer` standing for the
    receiver (the simulation and tests; a store runs the exchange over RPC,
    store_node.snapshot_transfer): writes the delta file `out` and returns
    its Raft message, or raises NoDelta or TreeError."""
    snap = msg.message.snapshot
    assert snap is not None
    desc = codec.loads(snap.data, SnapshotDescriptor)
    tree = load_tree(tree_path(full))
    steps = exchange(key, desc.region, full, tree, policy)
    try:
        req = next(steps)
        while True:
            req = steps.send(answer(req))
    except StopIteration as done:
        found: Differing = done.value
    check_worth(tree, found, desc.size, policy)
    return with_descriptor(msg, build_delta(full, desc, tree, found, out))


def replaced_ranges(tree: SnapshotTree, leaves: tuple[int, ...]) -> tuple[tuple[bytes, bytes], ...]:
    """The key ranges of `leaves` (sorted), adjacent ones merged."""
    out: list[tuple[bytes, bytes]] = []
    prev = -2
    for i in leaves:
        start, end = tree.leaf_starts[i], tree.leaf_end(i)
        if i == prev + 1:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
        prev = i
    return tuple(out)


def step(steps: Exchange, answer: object) -> SnapshotDigestRequest | Differing:
    """The next request of an exchange given the last answer (None to
    start), or its outcome: for a driver running the steps in a thread."""
    try:
        return next(steps) if answer is None else steps.send(answer)
    except StopIteration as done:
        found: Differing = done.value
        return found


def build_delta(
    full: Path, desc: SnapshotDescriptor, tree: SnapshotTree, found: Differing, out: Path
) -> SnapshotDescriptor:
    """Write the delta file of `found` from the full snapshot file `full`
    (blocking); returns its descriptor."""
    if tree.file_size != desc.size:
        raise TreeError(f"{full.name}: the tree is not this file's")
    spans = [tree.leaf_span(i) for i in found.leaves]
    spans.append((tree.data_end, tree.file_size))  # the session section
    crc = zlib.crc32(MAGIC)
    size = len(MAGIC)
    tmp = out.with_suffix(".tmp")
    with open(full, "rb") as src, open(tmp, "wb") as dst:
        dst.write(MAGIC)
        for begin, end in spans:
            src.seek(begin)
            left = end - begin
            while left:
                chunk = src.read(min(left, _COPY_CHUNK))
                if not chunk:
                    raise TreeError(f"{full.name}: shorter than its tree")
                dst.write(chunk)
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            size += end - begin
    os.replace(tmp, out)
    return SnapshotDescriptor(
        region=desc.region,
        index=desc.index,
        term=desc.term,
        size=size,
        checksum=crc,
        keys=sum(tree.leaf_keys[i] for i in found.leaves),
        delta=SnapshotDelta(found.base_index, found.base_term, replaced_ranges(tree, found.leaves)),
    )


def compare(engine: Engine, req: SnapshotDigestRequest) -> SnapshotDigestResponse:
    """The receiver's answer to one digest request, from one kv/ read
    transaction (blocking)."""
    rid = req.key.region_id
    start, end = req.region.start_key, req.region.end_key
    try:
        check_runs(req.runs, start, end)
    except TreeError as e:
        return SnapshotDigestResponse(error=f"bad request: {e}")
    with engine.read_kv() as txn:
        raw_region = txn.get(keys.region_key(rid), db=engine.kv_db(keys.REGION_DB))
        raw_apply = txn.get(keys.region_key(rid), db=engine.kv_db(keys.APPLY_DB))
        if raw_region is None or raw_apply is None:
            return SnapshotDigestResponse(error="no usable copy: no initialized peer here")
        state = codec.loads(bytes(raw_region), RegionLocalState)
        if state.state != PeerState.NORMAL or not state.region.peers:
            return SnapshotDigestResponse(error="no usable copy: no initialized peer here")
        here = (state.region.start_key, state.region.end_key)
        if here != (start, end):
            return SnapshotDigestResponse(error=f"no usable copy: its range is {here!r}")
        apply = decode_apply_state(bytes(raw_apply))
        base = (apply.applied_index, apply.applied_term)
        if req.base_index and base != (req.base_index, req.base_term):
            return SnapshotDigestResponse(error="the copy moved during the comparison")
        diff = differing(txn, engine.kv_db(keys.DATA_DB), req.runs, engine.blobs.resolve)
    return SnapshotDigestResponse(base_index=base[0], base_term=base[1], differing=tuple(diff))


def delta_refusal(peer: Peer | None, to_peer: int, desc: SnapshotDescriptor) -> str | None:
    """Why the delta `desc` cannot go onto this store's copy (None: it can):
    the copy must be the one compared, unchanged since."""
    delta = desc.delta
    assert delta is not None
    if peer is None or not peer.initialized or peer.meta.id != to_peer:
        return "no initialized peer for it here"
    if (peer.region.start_key, peer.region.end_key) != (desc.region.start_key, desc.region.end_key):
        return "the copy's range changed"
    applied = peer.storage.apply_state
    if (applied.applied_index, applied.applied_term) != (delta.base_index, delta.base_term):
        return (
            f"the copy moved since the comparison (applied {applied.applied_index}/"
            f"{applied.applied_term}, compared at {delta.base_index}/{delta.base_term})"
        )
    return None

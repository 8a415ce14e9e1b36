"""Incremental catch-up at the StoreCore level (real LMDB, in-thread
delivery, tests/store_node/harness.py): a follower back with an older copy
gets a delta, one whose copy has another range gets the whole snapshot,
and a delta whose copy moved since the comparison is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kvproto.metapb import StoreId
from kvproto.raft_cmdpb import Put
from kvproto.raft_serverpb import SnapshotKey
from store_node.config import CoreConfig
from store_node.log_gc import LogGcConfig
from store_node.snapshot import descriptor_of
from store_node.snapshot_delta import compare, prepare, with_descriptor
from store_node.snapshot_digest import TreeShape
from tests.store_node.harness import CoreCluster, bootstrapped
from tests.store_node.test_replication_core import checksum

GC = LogGcConfig(max_entries=20, max_follower_lag=50, hard_max_bytes=1 << 30)
CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=2, log_gc=GC)
SHAPE = TreeShape(leaf_keys=4, leaf_bytes=1 << 20, group_bytes=1 << 10)


def put(c: CoreCluster, pairs: list[tuple[bytes, bytes]]) -> None:
    """One put per round, each to the region holding its key now."""
    for i, (k, v) in enumerate(pairs):
        store, rid = next(
            (s, rid)
            for s, core in sorted(c.cores.items())
            for rid, p in core.peers.items()
            if p.is_leader() and p.initialized and p.region.contains(k)
        )
        assert c.cores[store].propose_write(("put", i), c.context(rid), (Put(k, v),), 40) is None
        c.stabilize()
        assert c.replies.pop(("put", i)).value is not None


def keyed(i: int) -> bytes:
    return b"k%05d" % i


def loaded(tmp_path: Path) -> tuple[CoreCluster, int, int]:
    """Three stores holding 400 keys; (the cluster, the leader's store, a follower's)."""
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    c.tree_shape = SHAPE
    put(c, [(keyed(i), b"v" * 30) for i in range(400)])
    c.tick(3)
    leader, _ = c.leader_of(1)  # type: ignore[misc]
    return c, leader, next(s for s in (3, 2) if s != leader)


def test_a_follower_back_with_an_older_copy_catches_up_by_delta(tmp_path: Path) -> None:
    c, leader, down = loaded(tmp_path)
    assert not c.snapshots_delivered and not c.deltas_delivered
    behind = c.cores[down].peers[1].storage.apply_state.applied_index
    c.stop(down)
    # 1% of the keys change, many times over: the leader truncates past it.
    put(c, [(keyed(i * 100), b"w%d" % n) for n in range(20) for i in range(4)])
    put(c, [(keyed(1000), b"new")])
    assert c.cores[leader].peers[1].storage.apply_state.truncated_index > behind
    c.start(down)
    c.tick(20)
    assert c.deltas_delivered == [(leader, down, 1)]
    assert not c.snapshots_delivered
    assert c.cores[down].stats["delta_snapshots_installed"] == 1
    ((delta, full),) = c.delta_sizes
    assert delta * 10 < full
    assert checksum(c, down) == checksum(c, leader)
    # And it follows the log from there.
    put(c, [(keyed(7), b"after")])
    c.tick(3)
    assert len({checksum(c, s) for s in (1, 2, 3)}) == 1


def test_a_copy_of_another_range_gets_the_whole_snapshot(tmp_path: Path) -> None:
    c, leader, down = loaded(tmp_path)
    behind = c.cores[down].peers[1].storage.apply_state.applied_index
    c.stop(down)
    region = c.cores[leader].peers[1].region
    ids = [(c.alloc(), tuple(c.alloc() for _ in region.peers))]
    assert c.cores[leader].propose_split("split", 1, region.epoch, (keyed(200),), ids) is None
    c.stabilize()
    put(c, [(keyed(i), b"w%d" % n) for n in range(50) for i in (5, 300)])
    assert c.cores[leader].peers[1].region.end_key == keyed(200)
    assert c.cores[leader].peers[1].storage.apply_state.truncated_index > behind
    c.start(down)
    c.tick(30)
    # Region 1 here still spans every key: no usable copy, the whole file.
    assert any("its range is" in why for why in c.why_full)
    assert (leader, down, 1) in c.snapshots_delivered
    assert c.cores[down].stats["delta_snapshots_installed"] == 0
    assert checksum(c, down) == checksum(c, leader)


def test_a_delta_for_a_copy_that_moved_is_refused(tmp_path: Path) -> None:
    c, leader, down = loaded(tmp_path)
    c.stop(down)
    put(c, [(keyed(i), b"w%d" % n) for n in range(20) for i in (1, 2, 3)])
    c.start(down)
    # Catch the snapshot the leader sends, to deliver it by hand.
    sends = []
    real = c._send_snapshot
    c._send_snapshot = lambda *a: sends.append(a) or False  # type: ignore[method-assign]
    c.tick(20)
    c._send_snapshot = real  # type: ignore[method-assign]
    (_, to_store, msg, path) = sends[-1]
    assert to_store == down
    desc = descriptor_of(msg.message.snapshot)
    key = SnapshotKey(msg.region_id, desc.term, desc.index, StoreId(leader))
    dest = c.snap_dirs[down].received(key, delta=True)
    follower = c.cores[down]
    delta = prepare(path, msg, key, lambda r: compare(c.engines[down], r), c.delta_policy, dest)
    d = descriptor_of(delta.message.snapshot)  # type: ignore[arg-type]
    assert d.delta is not None
    # As if the copy had applied one more entry after the comparison.
    moved = dataclasses.replace(d.delta, base_index=d.delta.base_index - 1)
    assert not follower.on_snapshot_received(
        with_descriptor(msg, dataclasses.replace(d, delta=moved)), dest
    )
    assert follower.stats["delta_snapshots_refused"] == 1
    assert follower.on_snapshot_received(delta, dest)
    c.tick(5)
    assert follower.stats["delta_snapshots_installed"] == 1
    assert checksum(c, down) == checksum(c, leader)

"""Region splits at the StoreCore level (real LMDB, in-thread delivery):
regions divide by size, every replica agrees on the parts, stale requests
get EpochNotMatch, a lagging replica catches up through the split."""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kvproto.errorpb import EpochNotMatch
from kvproto.kvrpcpb import Context
from kvproto.metapb import RegionId
from kvproto.raft_cmdpb import ChangePeerType, Put
from store_node import keys
from store_node.config import CoreConfig
from store_node.log_gc import LogGcConfig
from store_node.split import choose_split_keys
from tests.factories import learner
from tests.store_node.harness import CoreCluster, bootstrapped

CONFIG = CoreConfig(
    election_ticks=10, heartbeat_ticks=2, log_gc=LogGcConfig(max_entries=20, max_follower_lag=200)
)


def key(i: int) -> bytes:
    return b"key%06d" % i


def put_keys(c: CoreCluster, ids: range) -> None:
    """One put per round, each routed to the region that holds the key now."""
    for i in ids:
        leader_store, region = route(c, key(i))
        ctx = c.context(region)
        assert c.cores[leader_store].propose_write(i, ctx, (Put(key(i), b"v%d" % i),), 20) is None
        c.stabilize()
        assert c.replies.pop(i).value is not None


def route(c: CoreCluster, k: bytes) -> tuple[int, int]:
    for _ in range(30):  # a fresh region may still be electing its leader
        for s, core in c.cores.items():
            for rid, peer in core.peers.items():
                if peer.is_leader() and peer.initialized and peer.region.contains(k):
                    return s, rid
        c.tick()
    raise AssertionError(f"no leader for {k!r}")


def region_map(c: CoreCluster, store: int) -> dict[int, tuple[bytes, bytes, int]]:
    return {
        rid: (p.region.start_key, p.region.end_key, p.region.epoch.version)
        for rid, p in c.cores[store].peers.items()
        if p.initialized
    }


def region_checksum(c: CoreCluster, store: int, start: bytes, end: bytes) -> int:
    crc = 0
    for k, v in c.engines[store].kv_items(keys.DATA_DB, start, end):
        crc = zlib.crc32(k + v, crc)
    return crc


def assert_covers_key_space(ranges: list[tuple[bytes, bytes]]) -> None:
    ranges.sort()
    assert ranges[0][0] == b""
    assert ranges[-1][1] == b""
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start  # no gap, no overlap


def test_regions_split_by_key_count_and_all_replicas_agree(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    c.split_limits = (1 << 30, 40)
    put_keys(c, range(300))
    c.tick(10)
    maps = [region_map(c, s) for s in (1, 2, 3)]
    assert maps[0] == maps[1] == maps[2]
    assert len(maps[0]) >= 6
    assert_covers_key_space([(s, e) for s, e, _ in maps[0].values()])
    for start, end, _ in maps[0].values():
        sums = {region_checksum(c, s, start, end) for s in (1, 2, 3)}
        assert len(sums) == 1
    # Every key readable where it is routed; none lost.
    total = sum(len(c.engines[1].kv_items(keys.DATA_DB, s, e)) for s, e, _ in maps[0].values())
    assert total == 300


def test_a_request_with_the_pre_split_epoch_gets_the_new_regions(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1], CONFIG, ticks=30)
    old = c.context(1)
    c.split_limits = (1 << 30, 20)
    put_keys(c, range(60))
    c.tick(3)
    err = c.cores[1].propose_write("stale", old, (Put(key(1), b"x"),), 10)
    assert isinstance(err, EpochNotMatch)
    assert len(err.current_regions) >= 2
    assert err.current_regions[0].id == 1
    assert all(r.epoch.version > old.region_epoch.version for r in err.current_regions)


def test_a_replica_down_during_splits_catches_up(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    leader_store, _ = c.leader_of(1)
    down = next(s for s in (3, 2) if s != leader_store)
    c.stop(down)
    c.split_limits = (1 << 30, 30)
    put_keys(c, range(400))
    c.start(down)
    c.tick(60)
    up = next(s for s in (1, 2, 3) if s != down)
    assert region_map(c, down) == region_map(c, up)
    for start, end, _ in region_map(c, up).values():
        assert region_checksum(c, down, start, end) == region_checksum(c, up, start, end)


def test_regions_truncate_their_logs_independently(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1], CONFIG, ticks=30)
    c.split_limits = (1 << 30, 100)
    put_keys(c, range(120))
    c.split_limits = None  # no more splits
    regions = sorted(region_map(c, 1).items(), key=lambda kv: kv[1][0])
    hot, cold = regions[-1][0], regions[0][0]
    hot_start = regions[-1][1][0]
    for i in range(200):
        k = hot_start + b"%05d" % i
        ctx = Context(RegionId(hot), c.cores[1].peers[hot].region.epoch, c.cores[1].peers[hot].meta)
        assert c.cores[1].propose_write(("h", i), ctx, (Put(k, b"x"),), 10) is None
        c.stabilize()
    t_hot = c.cores[1].peers[hot].storage.apply_state.truncated_index
    t_cold = c.cores[1].peers[cold].storage.apply_state.truncated_index
    assert t_hot > t_cold + 100


@given(
    sizes=st.lists(st.integers(1, 50), max_size=200),
    max_size=st.integers(20, 400),
    max_keys=st.integers(2, 40),
)
def test_split_keys_are_existing_keys_in_order_and_parts_respect_limits(
    sizes: list[int], max_size: int, max_keys: int
) -> None:
    pairs = [(b"%05d" % i, n) for i, n in enumerate(sizes)]
    total, count, split_keys = choose_split_keys(iter(pairs), max_size, max_keys)
    assert total == sum(sizes) and count == len(sizes)
    if total <= max_size and count <= max_keys:
        assert split_keys == []
        return
    all_keys = [k for k, _ in pairs]
    assert all(k in all_keys for k in split_keys)
    assert split_keys == sorted(set(split_keys))
    assert all(k != all_keys[0] for k in split_keys)


def test_the_periodic_scan_measures_only_regions_written_since_last_measured(
    tmp_path: Path,
) -> None:
    # Every leader's region every minute was ten thousand scans a minute
    # for idle regions, whose sizes cannot have changed.
    c = bootstrapped(tmp_path, (1, 2, 3), CONFIG)
    leader_store, rid = route(c, key(1))
    core = c.cores[leader_store]
    assert core.splits.schedule_all(core.peers.values()) == [rid]  # never measured
    (region,) = core.splits.take_due(core.peers)
    core.on_split_checked(rid, 0, 0, (), region.epoch.version)
    assert core.splits.schedule_all(core.peers.values()) == []  # idle since
    put_keys(c, range(1, 2))
    assert core.splits.schedule_all(core.peers.values()) == [rid]


def test_a_learner_added_while_its_region_splits_gets_a_snapshot_of_the_new_range(
    tmp_path: Path,
) -> None:
    # A learner is added on store 2; the snapshot made for it holds the whole
    # range; the region splits before it arrives. The split-off region's own
    # learner on store 2 gets its snapshot first, so the parent's old one
    # overlaps it there and is refused. It was sent again and refused for
    # ever (found restoring a backup: the restored region splits at once);
    # a snapshot from before a split is stale and made again (TiKV's
    # validate_snap).
    c = bootstrapped(tmp_path, [1, 2], CONFIG, region_on=[1])
    put_keys(c, range(20))
    held = {1}
    send = c._send_snapshot

    def send_unless_held(from_store, to_store, msg, path) -> bool:  # type: ignore[no-untyped-def]
        return msg.region_id not in held and send(from_store, to_store, msg, path)

    c._send_snapshot = send_unless_held  # type: ignore[method-assign]
    c.change_peer(ChangePeerType.ADD_LEARNER, learner(12, 2))
    assert c.cores[1].peers[1].storage.generated is not None  # made, not delivered
    region = c.cores[1].peers[1].region
    ids = [(c.alloc(), tuple(c.alloc() for _ in region.peers))]
    assert c.cores[1].propose_split("split", 1, region.epoch, (key(10),), ids) is None
    c.stabilize()
    c.tick(10)
    new_id = ids[0][0]
    assert c.cores[2].peers[new_id].initialized  # its snapshot came first
    held.clear()
    c.tick(20)
    assert c.cores[2].peers[1].initialized
    assert region_map(c, 2) == region_map(c, 1)
    for s in (1, 2):
        assert region_checksum(c, s, b"", key(10)) == region_checksum(c, 1, b"", key(10))

"""Replicas across stores at the StoreCore level (real LMDB, in-thread
delivery): conf changes create peers that catch up by snapshot, removed
peers are destroyed, logs are truncated per region and stay bounded."""

from __future__ import annotations

import zlib
from pathlib import Path

from kvproto import codec
from kvproto.metapb import PeerRole
from kvproto.raft_cmdpb import ChangePeer, ChangePeerRequest, ChangePeerType, Put
from kvproto.raft_serverpb import PeerState, RegionLocalState
from store_node import keys
from store_node.config import CoreConfig
from store_node.log_gc import LogGcConfig
from tests.factories import learner, peer
from tests.store_node.harness import CoreCluster, bootstrapped

GC = LogGcConfig(max_entries=20, max_follower_lag=50, hard_max_bytes=1 << 30)
CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=2, log_gc=GC)


def put_many(c: CoreCluster, prefix: bytes, n: int, per_round: int = 1) -> None:
    for i in range(0, n, per_round):
        store, _ = c.leader_of(1)
        ctx = c.context(1)
        for j in range(i, min(n, i + per_round)):
            err = c.cores[store].propose_write(
                (prefix, j), ctx, (Put(prefix + b"%06d" % j, b"v" * 20),), 30
            )
            assert err is None
        c.stabilize()
    for j in range(n):
        assert c.replies.pop((prefix, j)).value is not None


def checksum(c: CoreCluster, store: int) -> int:
    crc = 0
    for k, v in c.engines[store].kv_items(keys.DATA_DB):
        crc = zlib.crc32(k + b"=" + v, crc)
    return crc


def test_a_peer_added_on_a_new_store_catches_up_by_snapshot(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2], CONFIG, region_on=[1], ticks=30)
    put_many(c, b"a", 300)
    leader_peer = c.cores[1].peers[1]
    assert leader_peer.storage.apply_state.truncated_index > 100  # log truncated
    new = learner(22, 2)
    c.change_peer(ChangePeerType.ADD_LEARNER, new)
    c.tick(10)
    assert (1, 2, 1) in c.snapshots_delivered
    assert c.cores[2].peers[1].initialized
    c.change_peer(ChangePeerType.ADD_VOTER, peer(22, 2))
    put_many(c, b"b", 30)
    c.tick(5)
    assert checksum(c, 1) == checksum(c, 2)
    region = c.cores[2].peers[1].region
    assert {(p.id, p.role) for p in region.peers} == {(11, PeerRole.VOTER), (22, PeerRole.VOTER)}
    assert region.epoch.conf_ver == 3


def test_a_removed_peer_is_destroyed_with_its_data(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    put_many(c, b"k", 30)
    leader_store, _ = c.leader_of(1)
    victim = next(s for s in (3, 2) if s != leader_store)
    c.change_peer(ChangePeerType.REMOVE, peer(10 + victim, victim))
    c.tick(5)
    assert 1 not in c.cores[victim].peers
    assert c.engines[victim].kv_items(keys.DATA_DB) == []
    raw = c.engines[victim].kv_get(keys.REGION_DB, keys.region_key(1))
    assert raw is not None
    assert codec.loads(raw, RegionLocalState).state == PeerState.TOMBSTONE
    assert c.engines[victim].raft_items(keys.LOG_DB) == []
    # The survivors still serve.
    put_many(c, b"m", 5)
    # Restarted, the destroyed peer stays gone.
    c.stop(victim)
    c.start(victim)
    c.tick(30)
    assert 1 not in c.cores[victim].peers


def test_a_follower_down_past_the_lag_allowance_catches_up_by_snapshot(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    leader_store, _ = c.leader_of(1)
    down = next(s for s in (3, 2) if s != leader_store)
    c.stop(down)
    put_many(c, b"x", 400)
    c.tick(3)
    leader = c.cores[leader_store].peers[1]
    assert leader.storage.apply_state.truncated_index > 300
    c.start(down)
    c.tick(20)
    assert any(d[1] == down for d in c.snapshots_delivered)
    put_many(c, b"y", 10)
    c.tick(5)
    sums = {checksum(c, s) for s in (1, 2, 3)}
    assert len(sums) == 1


def test_each_log_stays_bounded_while_writes_go_on(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    worst = 0
    for round_no in range(40):
        put_many(c, b"w%03d" % round_no, 20, per_round=5)
        c.tick(1)
        for s in (1, 2, 3):
            worst = max(worst, c.cores[s].peers[1].storage.log_entries())
    assert worst <= GC.max_entries + GC.max_follower_lag
    assert sum(c.cores[s].stats["log_truncations_by_entries"] for s in (1, 2, 3)) > 10


def test_a_stale_peer_back_after_removal_is_told_to_destroy_itself(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3, 4], CONFIG, region_on=[1, 2, 3])
    leader_store, _ = c.leader_of(1)
    stale = next(s for s in (3, 2) if s != leader_store)
    c.stop(stale)
    c.change_peer(ChangePeerType.ADD_LEARNER, learner(44, 4))
    c.change_peer(ChangePeerType.ADD_VOTER, peer(44, 4))
    c.change_peer(ChangePeerType.REMOVE, peer(10 + stale, stale))
    c.start(stale)
    # Its election attempts reach the members, which answer with a tombstone.
    c.tick(60)
    assert 1 not in c.cores[stale].peers
    assert c.cores[stale].stats["peers_destroyed"] == 1


def test_the_leader_reports_a_silent_follower_as_down(tmp_path: Path) -> None:
    from store_node.pd_worker import region_heartbeat_request

    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    leader_store, _ = c.leader_of(1)
    leader = c.cores[leader_store].peers[1]
    req = region_heartbeat_request(
        leader, leader.last_heard, c.cores[leader_store].ticks, 0.1, down_after_ticks=20
    )
    assert req.down_peers == ()
    silent = next(s for s in (3, 2) if s != leader_store)
    c.stop(silent)
    c.tick(25)
    req = region_heartbeat_request(
        leader, leader.last_heard, c.cores[leader_store].ticks, 0.1, down_after_ticks=20
    )
    assert [d.peer.store_id for d in req.down_peers] == [silent]
    assert req.down_peers[0].down_seconds >= 2


def test_a_learner_reported_pending_is_reported_again_once_it_caught_up(
    tmp_path: Path,
) -> None:
    from store_node.pd_worker import region_heartbeat_request

    c = bootstrapped(tmp_path, [1, 2], CONFIG, region_on=[1], ticks=30)
    put_many(c, b"a", 300)
    leader = c.cores[1]
    region = leader.peers[1].region
    change = ChangePeerRequest((ChangePeer(ChangePeerType.ADD_LEARNER, learner(22, 2)),))
    assert leader.change_peer("cc", 1, region.epoch, change) is None
    c.stabilize()
    # The heartbeat the epoch change asked for shows the learner pending
    # (it needs a snapshot: the log is truncated).
    assert 1 in leader.heartbeat_due
    leader.take_heartbeat_due()
    req = region_heartbeat_request(
        leader.peers[1], leader.peers[1].last_heard, leader.ticks, 0.1, down_after_ticks=20
    )
    assert [p.id for p in req.pending_peers] == [22]
    c.tick(10)
    assert c.cores[2].peers[1].initialized
    # Caught up: the PD must hear of it now (the operator's AddLearner step
    # is done only then), not at the next periodic heartbeat.
    assert 1 in leader.heartbeat_due
    req = region_heartbeat_request(
        leader.peers[1], leader.peers[1].last_heard, leader.ticks, 0.1, down_after_ticks=20
    )
    assert req.pending_peers == ()

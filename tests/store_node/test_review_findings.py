"""Regression tests for the store bugs found by review and by the fault test
of issue 11, each reproduced at the StoreCore level (real LMDB, in-thread
delivery). Every test here failed before its fix."""

from __future__ import annotations

from pathlib import Path

from kvproto import codec
from kvproto.errorpb import NotLeader, StaleCommand, UndeterminedResult
from kvproto.metapb import RegionEpoch, RegionId
from kvproto.raft_cmdpb import ChangePeerType, Put
from kvproto.raft_serverpb import PeerState, RaftMessage, RegionLocalState
from raft.types import Message, MessageType
from store_node import keys
from store_node.apply import region_state_bytes
from store_node.config import CoreConfig
from store_node.engine import Engine, WriteBatch
from store_node.log_gc import LogGcConfig
from store_node.peer import ReadPermit
from store_node.records import decode_hard_state
from tests import factories
from tests.store_node.harness import CoreCluster, bootstrapped

GC = LogGcConfig(max_entries=20, max_follower_lag=50, hard_max_bytes=1 << 30)
CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=2, log_gc=GC)


def _put(c: CoreCluster, key: bytes, value: bytes = b"v") -> None:
    store, _ = c.leader_of(1)
    token = ("put", key, value)
    assert c.cores[store].propose_write(token, c.context(1), (Put(key, value),), 10) is None
    c.stabilize()
    assert token in c.replies


def test_a_peer_removed_then_added_again_starts_from_a_clean_log(tmp_path: Path) -> None:
    # Finding 2: the destroy's raft/ deletions were deferred (no fsync), so the
    # new peer read the old peer's hard state and log and the loop died with
    # "log hole at 1".
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG, sync=True)
    for i in range(10):
        _put(c, b"k%02d" % i)
    leader_store, _ = c.leader_of(1)
    victim = next(s for s in (3, 2) if s != leader_store)
    c.change_peer(ChangePeerType.REMOVE, factories.peer(10 + victim, victim))
    c.tick(5)
    assert 1 not in c.cores[victim].peers
    new = factories.learner(100 + victim, victim)
    c.change_peer(ChangePeerType.ADD_LEARNER, new)
    c.tick(20)
    peer = c.cores[victim].peers[1]
    assert peer.meta.id == new.id and peer.initialized
    _put(c, b"after")
    c.tick(3)
    assert c.engines[victim].kv_get(keys.DATA_DB, b"after") == b"v"


def test_stale_raft_state_of_a_tombstoned_region_is_cleaned_at_start(tmp_path: Path) -> None:
    # Finding 2, after a SIGKILL right after a destroy: the kv/ tombstone is
    # durable but the raft/ deletions are not. A restart must drop them, or
    # every later re-add of the region here reads them.
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG, sync=True)
    for i in range(5):
        _put(c, b"k%02d" % i)
    leader_store, _ = c.leader_of(1)
    victim = next(s for s in (3, 2) if s != leader_store)
    engine = c.engines[victim]
    # What a crash between the kv/ tombstone and the raft/ deletions leaves:
    stale_log = engine.raft_items(keys.LOG_DB)
    stale_state = engine.raft_items(keys.STATE_DB)
    assert stale_log and stale_state
    c.change_peer(ChangePeerType.REMOVE, factories.peer(10 + victim, victim))
    c.tick(5)
    assert 1 not in c.cores[victim].peers
    c.crash(victim)
    e = Engine(tmp_path / f"s{victim}", sync=True)
    b = WriteBatch()
    for k, v in stale_log + stale_state:
        db = keys.LOG_DB if len(k) == 16 else keys.STATE_DB
        b.put(db, k, v)
    e.write_raft(b)
    e.close()
    c.start(victim)
    assert c.engines[victim].raft_items(keys.LOG_DB) == []
    # Its term and vote stay (a new peer here never votes twice in a term),
    # its commit index goes with the log it pointed into.
    ((_, raw),) = c.engines[victim].raft_items(keys.STATE_DB)
    assert decode_hard_state(raw).commit == 0
    new = factories.learner(100 + victim, victim)
    c.change_peer(ChangePeerType.ADD_LEARNER, new)
    c.tick(20)
    assert c.cores[victim].peers[1].initialized


def _vote(region_epoch: RegionEpoch, to_peer: int, candidate: int, term: int) -> RaftMessage:
    return RaftMessage(
        region_id=RegionId(1),
        from_peer=factories.peer(candidate, candidate % 10),
        to_peer=factories.peer(to_peer, 3),
        region_epoch=region_epoch,
        message=Message(
            type=MessageType.VOTE, to=to_peer, from_=candidate, term=term, log_term=9, index=99
        ),
    )


def test_destroying_an_uninitialized_peer_keeps_a_tombstone(tmp_path: Path) -> None:
    # Finding 4: destroying an uninitialized peer deleted the region's record
    # (an older peer's tombstone) and its hard state; a delayed message then
    # created the same peer again with an empty hard state, and it voted a
    # second time in a term it had voted in.
    c = CoreCluster(tmp_path, [3], CONFIG, sync=True)
    core = c.cores[3]
    epoch = RegionEpoch(conf_ver=5, version=1)
    # Peer 50 is created by a vote request of candidate 11 and votes for it.
    core.step_raft(_vote(epoch, 50, 11, term=7))
    c.stabilize()
    assert core.peers[1].meta.id == 50 and not core.peers[1].initialized
    assert core.peers[1].storage.hard_state.vote == 11
    # A message for a newer peer 60 of the region replaces peer 50.
    core.step_raft(_vote(epoch, 60, 12, term=8))
    c.stabilize()
    assert 1 not in core.peers
    raw = c.engines[3].kv_get(keys.REGION_DB, keys.region_key(1))
    assert raw is not None
    assert codec.loads(raw, RegionLocalState).state == PeerState.TOMBSTONE
    # A delayed vote request of another candidate for peer 50, same term:
    # no peer 50 again, so no second vote in term 7; also after a restart.
    for restart in (False, True):
        if restart:
            c.crash(3)
            c.start(3)
            core = c.cores[3]
        core.step_raft(_vote(epoch, 50, 21, term=7))
        c.stabilize()
        assert 1 not in core.peers, f"peer 50 created again (restart={restart})"


def test_a_split_applied_with_a_log_truncation_still_skips_tombstoned_regions(
    tmp_path: Path,
) -> None:
    # Finding 5: when a log truncation landed in the same round as an apply
    # task, the task was rebuilt positionally and lost `skip_regions`: a split
    # applied then re-created a region this store holds a tombstone for.
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, log_gc=LogGcConfig(max_entries=0))
    c = bootstrapped(tmp_path, [1], config, ticks=20)
    gone = factories.region(1000, b"m", conf_ver=3, version=2, peers=(factories.peer(1001, 1),))
    c.stop(1)
    e = Engine(tmp_path / "s1")
    b = WriteBatch()
    b.put(keys.REGION_DB, keys.region_key(1000), region_state_bytes(gone, PeerState.TOMBSTONE))
    e.write_kv_batch(b)
    e.close()
    c.start(1)
    c.tick(20)
    core = c.cores[1]
    assert 1000 in core.tombstones
    # An applied write schedules a truncation for the next round, in which
    # the split (proposed meanwhile) is applied.
    assert core.propose_write("w", c.context(1), (Put(b"a", b"v"),), 2) is None
    c.run_round(1)
    region = core.peers[1].region
    assert core.propose_split("s", 1, region.epoch, (b"m",), [(1000, (1001,))]) is None
    c.stabilize()
    assert core.stats["log_truncations_by_entries"] >= 1
    assert core.peers[1].region.end_key == b"m"  # the split applied
    assert 1000 not in core.peers
    raw = c.engines[1].kv_get(keys.REGION_DB, keys.region_key(1000))
    assert raw is not None
    assert codec.loads(raw, RegionLocalState).state == PeerState.TOMBSTONE


def test_a_received_snapshot_that_raft_refuses_leaves_no_file(tmp_path: Path) -> None:
    # Finding 9: a snapshot file Raft refused (here: one below the follower's
    # commit index, as a duplicate delivery is) stayed until a restart.
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    leader_store, _ = c.leader_of(1)
    lagging = next(s for s in (3, 2) if s != leader_store)
    c.stop(lagging)
    for i in range(120):
        _put(c, b"k%03d" % i)
    sent: list[tuple[int, int, RaftMessage, Path]] = []
    real_send = c._send_snapshot

    def send(from_store: int, to_store: int, msg: RaftMessage, path: Path) -> bool:
        sent.append((from_store, to_store, msg, path))
        return real_send(from_store, to_store, msg, path)

    c._send_snapshot = send  # type: ignore[method-assign]
    c.start(lagging)
    c.tick(20)
    assert c.cores[lagging].peers[1].initialized
    from_store, to_store, msg, path = sent[-1]
    # The same snapshot delivered again, now below the follower's commit.
    assert real_send(from_store, to_store, msg, path)
    c.tick(2)
    assert list(c.snap_dirs[lagging].path.glob("rcv_*")) == []


def test_reads_forwarded_by_followers_never_merge_with_the_leaders(tmp_path: Path) -> None:
    # Finding 6: read contexts were per-peer counters while the leader keys
    # its pending ReadIndex requests by context alone: a follower's forwarded
    # read (leadership moved between admission and the round) and the
    # leader's own read of the same number merged, and one never got an answer.
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    _put(c, b"k")
    leader_store, _ = c.leader_of(1)
    follower = next(s for s in (1, 2, 3) if s != leader_store)
    # Reads admitted while each peer led (the follower's before it lost the
    # lead) and flushed in the next round: queued as admission leaves them.
    for store in (leader_store, follower):
        c.cores[store].peers[1].queued_reads.append(("read", store))
        c.cores[store]._touch(1)
    # Hold the leader's heartbeat round open until the forwarded read is in.
    c.drop = lambda m: m.message.type == MessageType.HEARTBEAT_RESPONSE
    c.stabilize()
    c.drop = None
    c.tick(3)
    for store in (leader_store, follower):
        reply = c.replies.get(("read", store))
        assert reply is not None, f"the read queued on store {store} was never answered"
        assert isinstance(reply.value, ReadPermit)


def test_a_read_with_no_leader_to_forward_to_is_answered_at_once(tmp_path: Path) -> None:
    # Finding 6 (second half): a read flushed by a peer that lost the lead to
    # nobody known yet was dropped by Raft and waited in `reading` until the
    # next role change; now Raft refuses it and the store answers NotLeader.
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    leader_store, _ = c.leader_of(1)
    follower = next(s for s in (1, 2, 3) if s != leader_store)
    # Cut off, the follower campaigns and cannot win: it knows no leader.
    c.isolate(follower)
    c.tick(3 * CONFIG.election_ticks)
    peer = c.cores[follower].peers[1]
    assert peer.node.leader_id == 0
    peer.queued_reads.append(("read", 1))
    c.cores[follower]._touch(1)
    c.run_round(follower)
    reply = c.replies.get(("read", 1))
    assert reply is not None and isinstance(reply.value, NotLeader)


def test_a_forwarded_read_whose_answer_is_lost_is_answered_after_a_timeout(
    tmp_path: Path,
) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    leader_store, _ = c.leader_of(1)
    follower = next(s for s in (1, 2, 3) if s != leader_store)
    c.cores[follower].peers[1].queued_reads.append(("read", 2))
    c.cores[follower]._touch(1)
    c.drop = lambda m: m.message.type == MessageType.READ_INDEX
    c.stabilize()
    c.tick(2 * CONFIG.election_ticks - 1)
    assert ("read", 2) not in c.replies
    c.tick(2)
    reply = c.replies.get(("read", 2))
    assert reply is not None and isinstance(reply.value, NotLeader)
    assert reply.value.leader is not None and reply.value.leader.store_id == leader_store


def test_a_write_applied_through_a_snapshot_is_not_reported_stale(tmp_path: Path) -> None:
    # Finding 1: a leader's proposal that another leader committed reached
    # the old leader only through a snapshot; the store then answered
    # StaleCommand ("did not run") for a write that was applied.
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    old, _ = c.leader_of(1)
    # Everything sent to the old leader is lost: it replicates the write
    # but never hears that it committed, and steps down (CheckQuorum).
    c.drop = lambda m: m.to_peer.store_id == old
    token = ("put", b"w")
    assert c.cores[old].propose_write(token, c.context(1), (Put(b"w", b"1"),), 10) is None
    c.stabilize()
    for _ in range(20):
        c.tick(CONFIG.election_ticks)
        found = c.leader_of(1)
        if found is not None and found[0] != old:
            break
    else:
        raise AssertionError("no new leader")
    for i in range(80):  # the new leader truncates past what the old one has
        _put(c, b"k%03d" % i)
    c.drop = None
    c.tick(20)
    assert c.engines[old].kv_get(keys.DATA_DB, b"w") == b"1"  # applied, by a snapshot
    _put(c, b"later")  # an entry applied after the snapshot decides nothing more
    c.tick(2)
    reply = c.replies.get(token)
    assert reply is not None
    assert not isinstance(reply.value, StaleCommand), "an applied write was reported stale"
    assert isinstance(reply.value, UndeterminedResult)

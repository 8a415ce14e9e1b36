"""StoreCore rounds with real LMDB and in-thread message delivery: writes go
through Raft and land in kv/ with the applied index; reads wait for ReadIndex
and apply; proposals and requests are checked against the region."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kvproto.errorpb import EpochNotMatch, KeyNotInRegion, NotLeader, StoreNotMatch
from kvproto.kvrpcpb import Context
from kvproto.metapb import Peer as PeerMeta
from kvproto.metapb import RegionEpoch, RegionId, StoreId
from kvproto.raft_cmdpb import CompareAndSet, Delete, DeleteRange, Put, WriteResult
from kvproto.raft_serverpb import RaftMessage
from raft.types import Message, MessageType
from store_node import keys
from store_node.peer import ReadPermit, WriteDone
from tests.factories import peer
from tests.store_node.harness import CoreCluster, bootstrapped


@pytest.fixture
def single(tmp_path: Path) -> CoreCluster:
    c = bootstrapped(tmp_path, [1], ticks=30)
    assert c.leader_of(1) is not None
    return c


def write(c: CoreCluster, token: str, *ops) -> object:  # type: ignore[no-untyped-def]
    err = c.cores[c.leader_of(1)[0]].propose_write(token, c.context(1), tuple(ops), 10)
    assert err is None
    c.stabilize()
    return c.replies.pop(token).value


def test_single_store_write_lands_with_applied_index(single: CoreCluster) -> None:
    assert write(single, "w1", Put(b"a", b"1"), Put(b"b", b"2")) == WriteDone(
        (WriteResult(), WriteResult())
    )
    e = single.engines[1]
    assert e.kv_get(keys.DATA_DB, b"a") == b"1"
    peer = single.cores[1].peers[1]
    assert peer.storage.apply_state.applied_index == peer.node.commit_index


def test_compare_and_set_sees_earlier_ops_of_the_same_round(single: CoreCluster) -> None:
    core = single.cores[1]
    ctx = single.context(1)
    assert core.propose_write("p", ctx, (Put(b"k", b"v1"),), 4) is None
    assert core.propose_write("c1", ctx, (CompareAndSet(b"k", b"v1", b"v2"),), 4) is None
    assert core.propose_write("c2", ctx, (CompareAndSet(b"k", b"v1", b"v3"),), 4) is None
    single.stabilize()
    assert single.replies["c1"].value == WriteDone((WriteResult(True, b"v1"),))
    assert single.replies["c2"].value == WriteDone((WriteResult(False, b"v2"),))
    # Both were batched into one entry with the put.
    assert write(single, "d", Delete(b"k"), DeleteRange(b"a", b"z")) is not None
    assert single.engines[1].kv_get(keys.DATA_DB, b"k") is None


def test_read_waits_for_read_index_then_is_permitted(single: CoreCluster) -> None:
    write(single, "w", Put(b"x", b"1"))
    core = single.cores[1]
    assert core.read("r", single.context(1), [b"x"]) is None
    assert "r" not in single.replies
    single.stabilize()
    assert isinstance(single.replies["r"].value, ReadPermit)


def test_requests_are_checked_against_region_store_and_epoch(single: CoreCluster) -> None:
    core = single.cores[1]
    ctx = single.context(1)
    wrong_store = Context(ctx.region_id, ctx.region_epoch, PeerMeta(ctx.peer.id, StoreId(9)))
    assert isinstance(core.propose_write("a", wrong_store, (Put(b"k", b"v"),), 2), StoreNotMatch)
    stale = Context(ctx.region_id, RegionEpoch(1, 0), ctx.peer)
    assert isinstance(core.read("b", stale, [b"k"]), EpochNotMatch)


def test_three_replicas_replicate_and_only_the_leader_serves(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3])
    leader_store, meta = c.leader_of(1)
    follower = next(s for s in (1, 2, 3) if s != leader_store)
    fctx = Context(RegionId(1), RegionEpoch(1, 1), peer(10 + follower, follower))
    err = c.cores[follower].propose_write("x", fctx, (Put(b"a", b"1"),), 2)
    assert isinstance(err, NotLeader) and err.leader == meta
    assert write(c, "w", Put(b"a", b"1")) is not None
    c.tick(5)
    for s in (1, 2, 3):
        assert c.engines[s].kv_get(keys.DATA_DB, b"a") == b"1"


def test_restart_replays_log_from_durable_applied_index(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1], ticks=30)
    for i in range(20):
        write(c, f"w{i}", Put(b"k%02d" % i, b"v%d" % i))
    applied = c.cores[1].peers[1].storage.apply_state.applied_index
    c.stop(1)
    c.start(1)
    peer = c.cores[1].peers[1]
    assert peer.storage.apply_state.applied_index == applied
    c.tick(30)
    assert c.leader_of(1) is not None
    write(c, "after", Put(b"z", b"z"))
    assert len(c.engines[1].kv_items(keys.DATA_DB)) == 21


def test_key_outside_region_is_refused(single: CoreCluster) -> None:
    # The only region covers everything; fake a narrower one in the cache.
    core = single.cores[1]
    peer = core.peers[1]
    peer.region = peer.region.with_range(b"a", b"m")
    err = core.propose_write("k", single.context(1), (Put(b"z", b"1"),), 2)
    assert isinstance(err, KeyNotInRegion)


def test_messages_for_another_store_are_counted_and_logged_once_per_store(
    single: CoreCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """After a store replaced one whose data was lost, at its address, every
    leader with a peer on the old store sends there until that peer goes:
    one warning per store addressed, not one per message."""
    core = single.cores[1]

    def to_store(store_id: int) -> RaftMessage:
        return RaftMessage(
            RegionId(1),
            peer(12, 2),
            peer(11, store_id),
            RegionEpoch(1, 1),
            Message(MessageType.HEARTBEAT, to=11, from_=12, term=1),
        )

    with caplog.at_level(logging.WARNING, logger="store_node.peer_life"):
        for store_id in (9, 9, 9, 8):
            core.step_raft(to_store(store_id))
    assert core.stats["raft_messages_misaddressed"] == 4
    assert [r.getMessage() for r in caplog.records] == [
        f"store 1: messages for store {s} arrive here and are dropped (was it replaced by "
        "this one?); further ones are counted, not logged"
        for s in (9, 8)
    ]
    assert not core.has_work()

"""Hibernating regions (store_node.hibernate), on StoreCores in one thread:
an idle region sleeps and stops costing ticks and messages; anything that
happens to it wakes it; a silent or restarted store wakes the sleepers that
depend on it; a sleeping leader keeps its followers' health from their
stores' liveness and its lease ends on time.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from kvproto.kvrpcpb import Consistency, Context
from kvproto.metapb import RegionId
from kvproto.raft_cmdpb import Put
from kvproto.raft_serverpb import RaftMessage
from raft.types import MessageType, Role
from store_node.config import CoreConfig
from store_node.pd_worker import periodic_heartbeats_due, region_heartbeat_request
from store_node.peer import Flow, Peer, ReadPermit, WriteDone
from tests.store_node.harness import CoreCluster, bootstrapped

CONFIG = CoreConfig(
    election_ticks=10,
    heartbeat_ticks=2,
    hibernate_after_ticks=20,
    liveness_ticks=10,
    lease_seconds=0.7,
)
STORES = (1, 2, 3)


def asleep(c: CoreCluster, region_id: int = 1) -> dict[int, bool]:
    return {s: core.peers[region_id].asleep for s, core in sorted(c.cores.items())}


def raft_messages(c: CoreCluster, ticks: int) -> int:
    """Raft messages delivered while the cluster ticks `ticks` times."""
    seen = 0

    def count(m: RaftMessage) -> bool:
        nonlocal seen
        seen += 1
        return False

    c.drop = count
    c.tick(ticks)
    c.drop = None
    return seen


def write(c: CoreCluster, token: str, key: bytes) -> bool:
    """Whether a put through the leader applied."""
    store = c.leader_of(1)
    assert store is not None
    err = c.cores[store[0]].propose_write(token, c.context(1), (Put(key, b"v"),), 4)
    assert err is None, err
    c.stabilize()
    done = c.replies[token].value
    return isinstance(done, WriteDone) and done.error is None


@pytest.fixture
def c(tmp_path: Path) -> CoreCluster:
    c = bootstrapped(tmp_path, STORES, CONFIG)
    c.tick(30)
    return c


def test_an_idle_region_sleeps_and_then_costs_no_raft_messages(c: CoreCluster) -> None:
    assert asleep(c) == {1: True, 2: True, 3: True}
    found = c.leader_of(1)
    assert found is not None
    term = c.cores[found[0]].peers[1].node.term
    # Awake, a leader sends 2 heartbeats every 2 ticks and hears 2 answers.
    assert raft_messages(c, 100) == 0
    assert asleep(c) == {1: True, 2: True, 3: True}
    assert c.leader_of(1) == found
    assert c.cores[found[0]].peers[1].node.term == term


def test_a_region_with_hibernation_off_keeps_heartbeating(tmp_path: Path) -> None:
    off = CoreConfig(election_ticks=10, heartbeat_ticks=2, hibernate_after_ticks=0)
    c = bootstrapped(tmp_path, STORES, off)
    c.tick(30)
    assert asleep(c) == {1: False, 2: False, 3: False}
    assert raft_messages(c, 10) >= 20


def test_a_write_wakes_the_region_and_it_sleeps_again_once_idle(c: CoreCluster) -> None:
    assert write(c, "w1", b"a")
    assert asleep(c) == {1: False, 2: False, 3: False}
    c.tick(19)
    assert not any(asleep(c).values())
    c.tick(10)
    assert asleep(c) == {1: True, 2: True, 3: True}
    assert write(c, "w2", b"b")


def test_followers_elect_a_leader_when_the_sleeping_leaders_store_goes_silent(
    c: CoreCluster,
) -> None:
    found = c.leader_of(1)
    assert found is not None
    old = found[0]
    c.stop(old)
    # Silent for liveness_ticks: the followers wake, then wait out an
    # election timeout (their timers stood still while they slept).
    c.tick(9)
    assert all(asleep(c).values())
    c.tick(40)
    new = c.leader_of(1)
    assert new is not None and new[0] != old
    assert write(c, "after", b"k")


def test_a_cut_off_sleeping_leader_wakes_steps_down_and_is_replaced(c: CoreCluster) -> None:
    found = c.leader_of(1)
    assert found is not None
    old = found[0]
    others = [s for s in STORES if s != old]
    c.cut |= {(old, s) for s in others} | {(s, old) for s in others}
    c.tick(50)
    # Its followers' stores went silent: it woke, and CheckQuorum deposed it.
    assert not c.cores[old].peers[1].asleep
    assert not c.cores[old].peers[1].is_leader()
    new = c.leader_of(1)
    assert new is not None and new[0] != old
    c.cut.clear()
    c.tick(30)
    assert write(c, "after", b"k")


def test_a_restarted_leader_store_wakes_its_sleeping_followers(c: CoreCluster) -> None:
    found = c.leader_of(1)
    assert found is not None
    old = found[0]
    c.crash(old)
    c.start(old)
    c.tick(40)
    assert c.leader_of(1) is not None
    assert write(c, "after", b"k")


def test_a_sleeping_leader_does_not_report_sleeping_followers_down(c: CoreCluster) -> None:
    found = c.leader_of(1)
    assert found is not None
    core = c.cores[found[0]]
    c.tick(100)  # ten election timeouts without a Raft message
    peer = core.peers[1]
    assert peer.asleep
    req = region_heartbeat_request(peer, core.heard_ticks(peer), core.ticks, 0.1, 20)
    assert req.down_peers == ()


def test_a_sleeping_leader_wakes_and_reports_a_follower_whose_store_went_silent(
    c: CoreCluster,
) -> None:
    found = c.leader_of(1)
    assert found is not None
    leader = found[0]
    gone = next(s for s in STORES if s != leader)
    c.stop(gone)
    c.tick(60)
    core = c.cores[leader]
    peer = core.peers[1]
    assert not peer.asleep  # it cannot sleep without every member's ack
    req = region_heartbeat_request(peer, core.heard_ticks(peer), core.ticks, 0.1, 20)
    assert [p.peer.store_id for p in req.down_peers] == [gone]


def test_a_follower_missing_entries_keeps_the_region_awake(c: CoreCluster) -> None:
    def lagging(m: RaftMessage) -> bool:
        return m.to_peer.store_id == 3 and m.message.type == MessageType.APPEND

    assert write(c, "w", b"a")
    c.drop = lagging
    assert write(c, "w2", b"b")  # 2 of 3 commit it
    c.tick(60)
    found = c.leader_of(1)
    assert found is not None
    assert not c.cores[found[0]].peers[1].asleep
    c.drop = None
    c.tick(60)
    assert asleep(c) == {1: True, 2: True, 3: True}


def test_a_lease_read_is_answered_by_a_sleeping_leader_only_within_its_lease(
    c: CoreCluster,
) -> None:
    found = c.leader_of(1)
    assert found is not None
    store = found[0]
    core = c.cores[store]
    peer = core.peers[1]
    assert peer.asleep
    c.now += 5.0  # long after any round that could hold a lease up
    assert core.read("r", c.context(1), [b"a"], now=c.now) is None
    assert not peer.asleep
    c.stabilize()
    c.tick(3)
    assert isinstance(c.replies["r"].value, ReadPermit)


def test_a_stale_read_on_a_sleeping_follower_wakes_its_leader_too(c: CoreCluster) -> None:
    found = c.leader_of(1)
    assert found is not None
    leader = found[0]
    follower = next(s for s in STORES if s != leader)
    term = c.cores[leader].peers[1].node.term
    assert all(asleep(c).values())
    f = c.cores[follower].peers[1]
    ctx = Context(RegionId(1), f.region.epoch, f.meta)
    # The first confirms the follower's freshness with the leader (a
    # ReadIndex round, which wakes the region); then it sleeps again.
    assert c.cores[follower].replica_read("r0", ctx, [b"k"], Consistency.STALE, 3600.0) is None
    c.stabilize()
    c.tick(30)
    assert all(asleep(c).values())
    assert isinstance(c.replies["r0"].value, ReadPermit)
    # Served from the follower's own state: nothing else reaches the leader.
    assert c.cores[follower].replica_read("r", ctx, [b"k"], Consistency.STALE, 3600.0) is None
    c.stabilize()
    assert isinstance(c.replies["r"].value, ReadPermit)
    # The woken follower told its leader: heartbeats resume before the
    # follower's election timer runs out, so it never leaves its leader.
    assert not c.cores[leader].peers[1].asleep
    for _ in range(3 * CONFIG.election_ticks):
        c.tick()
        assert (f.node.role, f.node.leader_id) == (Role.FOLLOWER, found[1].id)
    assert c.cores[leader].peers[1].node.term == term


def test_the_metrics_count_the_sleeping_regions_and_the_naps(c: CoreCluster) -> None:
    from store_node.metrics import _peer_gauges

    core = c.cores[1]
    gauges = {m.name: m.samples[0].value for m in _peer_gauges(core)}
    assert gauges["shardkv_store_regions_asleep"] == 1
    assert core.stats["hibernations"] >= 1
    assert write(c, "w", b"a")
    gauges = {m.name: m.samples[0].value for m in _peer_gauges(core)}
    assert gauges["shardkv_store_regions_asleep"] == 0
    assert core.stats["wakeups"] >= 1


def test_a_store_with_hibernation_off_keeps_its_regions_awake(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, STORES, CONFIG, ticks=0)
    c.cores[3].hibernation.after_ticks = 0  # as `--hibernate-regions false` there
    c.tick(70)
    found = c.leader_of(1)
    assert found is not None
    # Store 3 never sleeps nor acks, so the leader stays awake and keeps
    # heartbeating (another follower may doze between its heartbeats).
    assert not c.cores[3].peers[1].asleep
    assert not c.cores[found[0]].peers[1].asleep
    assert raft_messages(c, 10) >= 10


def test_a_sleeping_leader_reports_to_the_pd_at_the_slower_interval(c: CoreCluster) -> None:
    """Ten thousand sleeping leaders heartbeating every 10 s cost their
    store ~10% of a core in heartbeat RPCs alone (benchmarks/regions.py);
    asleep, a region has nothing new to say, so it reports at the slower
    interval, and awake again at every one."""
    found = c.leader_of(1)
    assert found is not None
    core = c.cores[found[0]]
    peer = core.peers[1]
    assert peer.asleep
    region_heartbeat_request(peer, core.heard_ticks(peer), core.ticks, 0.1, 20)
    reported = core.ticks
    assert periodic_heartbeats_due([peer], reported + 599, 600) == []
    assert periodic_heartbeats_due([peer], reported + 600, 600) == [1]
    assert write(c, "w", b"k")
    assert not peer.asleep
    region_heartbeat_request(peer, core.heard_ticks(peer), core.ticks, 0.1, 20)
    assert periodic_heartbeats_due([peer], core.ticks, 600) == [1]


def test_sleeping_leaders_due_together_are_reported_over_several_passes(
    c: CoreCluster,
) -> None:
    """Regions that fell asleep together fall due together: each pass takes
    at most its share of the sleeping leaders, the longest unreported first
    (a burst of 10,000 heartbeats made the store's liveness pings late and
    woke every region it led)."""
    found = c.leader_of(1)
    assert found is not None
    core = c.cores[found[0]]
    peer = core.peers[1]
    assert peer.asleep
    region_heartbeat_request(peer, core.heard_ticks(peer), core.ticks, 0.1, 20)
    now = core.ticks + 1000
    assert periodic_heartbeats_due([peer], now, 600, share=1 / 6) == [1]  # ceil(1/6) = 1
    others = [copy_asleep(peer, rid, since) for rid, since in ((7, 50), (8, 10), (9, 30))]
    # Four sleeping leaders, a share of a half: the two reported longest ago.
    assert periodic_heartbeats_due([*others, peer], now, 600, share=0.5) == [8, 9]


def copy_asleep(peer: Peer, region_id: int, since_tick: int) -> Peer:
    """A stand-in sleeping leader of another region, last reported at
    `since_tick` (only what periodic_heartbeats_due reads)."""
    other = copy.copy(peer)
    other.region = dataclasses.replace(peer.region, id=RegionId(region_id))
    other.flow = Flow(since_tick=since_tick)
    return other

"""A region's client traffic as its leader reports it to the PD: each region
heartbeat carries the bytes and keys written (applied) and read (served at
the leader) since the previous heartbeat of the region, and the interval in
seconds; then the counts start again from zero, as they do at a leader
change."""

from __future__ import annotations

from pathlib import Path

from kvproto import pdpb
from kvproto.metapb import PeerId
from kvproto.raft_cmdpb import CompareAndSet, Delete, DeleteRange, Put, WriteOp
from store_node import keys
from store_node.pd_worker import region_heartbeat_request
from tests.store_node.harness import CoreCluster, bootstrapped

TICK = 0.1


def leader_store(c: CoreCluster) -> int:
    found = c.leader_of(1)
    assert found is not None
    return found[0]


def write(c: CoreCluster, token: str, *ops: WriteOp) -> None:
    err = c.cores[leader_store(c)].propose_write(token, c.context(1), ops, 10)
    assert err is None
    c.stabilize()
    assert c.replies.pop(token).value is not None


def heartbeat(c: CoreCluster, store: int) -> pdpb.RegionHeartbeatRequest:
    core = c.cores[store]
    return region_heartbeat_request(
        core.peers[1], core.peers[1].last_heard, core.ticks, TICK, down_after_ticks=20
    )


def flow(req: pdpb.RegionHeartbeatRequest) -> tuple[int, int, int, int]:
    return (req.written_bytes, req.written_keys, req.read_bytes, req.read_keys)


def test_a_heartbeat_reports_the_traffic_since_the_previous_one(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3])
    store = leader_store(c)
    heartbeat(c, store)  # the counts start here
    c.tick(3)
    write(c, "w1", Put(b"key1", b"value1"), Put(b"k2", b"v"))  # 10 + 3 bytes, 2 keys
    write(c, "w2", Delete(b"key1"))  # a delete writes its key: 4 bytes
    c.cores[store].count_read(1, 7, 2)  # what the KV service counts at a read
    c.tick(2)

    req = heartbeat(c, store)
    assert flow(req) == (17, 3, 7, 2)
    assert req.interval_seconds == 5 * TICK
    # The next heartbeat starts from zero.
    c.tick(4)
    req = heartbeat(c, store)
    assert flow(req) == (0, 0, 0, 0)
    assert req.interval_seconds == 4 * TICK


def test_only_what_was_written_counts(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1])
    write(c, "put", Put(b"a", b"1"))
    heartbeat(c, 1)
    c.tick()
    write(c, "cas-fails", CompareAndSet(b"a", b"other", b"2"))
    write(c, "range", DeleteRange(b"a", b"z"))  # its key count is unknown: nothing
    write(c, "cas-puts", CompareAndSet(b"b", None, b"22"))  # 1 + 2 bytes
    write(c, "cas-deletes", CompareAndSet(b"b", b"22", None))  # its key: 1 byte
    assert flow(heartbeat(c, 1)) == (4, 2, 0, 0)


def test_followers_count_nothing_and_a_new_leader_starts_from_zero(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3])
    old = leader_store(c)
    target = next(s for s in (1, 2, 3) if s != old)
    heartbeat(c, old)
    c.tick()
    write(c, "w1", Put(b"a", b"1"))
    c.tick()  # the commit index reaches the followers
    assert c.engines[target].kv_get(keys.DATA_DB, b"a") == b"1"
    c.cores[target].count_read(1, 100, 1)  # not served by a leader
    follower_flow = c.cores[target].peers[1].flow
    assert (follower_flow.written_bytes, follower_flow.read_bytes) == (0, 0)
    # Committed at the leader, not yet applied by the follower: it applies
    # it once leader of a later term, as its predecessor's traffic.
    write(c, "w2", Put(b"b", b"12345"))
    assert c.engines[target].kv_get(keys.DATA_DB, b"b") is None
    c.cores[old].transfer_leader(1, PeerId(10 + target))
    c.stabilize()
    c.tick()
    assert leader_store(c) == target
    assert c.engines[target].kv_get(keys.DATA_DB, b"b") == b"12345"

    assert flow(heartbeat(c, target)) == (0, 0, 0, 0)
    c.tick()
    write(c, "after", Put(b"c", b"1"))
    assert flow(heartbeat(c, target)) == (2, 1, 0, 0)
    # The old leader's counts went with its leadership.
    assert flow(heartbeat(c, old)) == (0, 0, 0, 0)


def test_a_heartbeat_in_the_same_tick_leaves_the_counts_for_the_next(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1])
    heartbeat(c, 1)
    write(c, "w", Put(b"a", b"1"))
    # No time has passed: no rate can be made of it.
    req = heartbeat(c, 1)
    assert flow(req) == (0, 0, 0, 0) and req.interval_seconds == 0.0
    c.tick()
    req = heartbeat(c, 1)
    assert flow(req) == (2, 1, 0, 0) and req.interval_seconds == TICK

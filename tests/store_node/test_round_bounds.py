"""What one round of a store does for one region, bounded in bytes
(`CoreConfig.max_round_bytes`), so that a region busy with large values
leaves the rounds to the others: its queued writes are proposed up to the
bound (one at least; the rest in the next rounds), and its committed
entries applied up to it (one at least). StoreCores with real LMDB, in one
thread (tests/store_node/harness.py)."""

from __future__ import annotations

from pathlib import Path

from kvproto.raft_cmdpb import Put
from store_node import keys
from store_node.config import CoreConfig
from store_node.peer import WriteDone
from tests.store_node.harness import bootstrapped

# Each write is 601 bytes: two do not fit in a round.
BOUND = CoreConfig(election_ticks=10, heartbeat_ticks=2, max_round_bytes=1000)


def value(i: int) -> bytes:
    return bytes([i]) * 600


def test_a_round_proposes_one_large_write_and_leaves_the_rest_queued(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1], BOUND, ticks=30)
    core = c.cores[1]
    for i in range(3):
        ops = (Put(b"k%d" % i, value(i)),)
        assert core.propose_write(f"w{i}", c.context(1), ops, 601) is None
    proposed = []
    for _ in range(3):
        before = core.stats["proposed_writes"]
        assert c.run_round(1)
        proposed.append(core.stats["proposed_writes"] - before)
    # Before: all three in the first round (three entries of one round).
    assert proposed == [1, 1, 1]
    c.stabilize()
    for i in range(3):
        assert isinstance(c.replies[f"w{i}"].value, WriteDone)
        assert c.engines[1].kv_get(keys.DATA_DB, b"k%d" % i) == value(i)


def test_a_follower_applies_a_backlog_of_large_entries_one_round_at_a_time(
    tmp_path: Path,
) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], BOUND)
    found = c.leader_of(1)
    assert found is not None
    leader = found[0]
    behind = next(s for s in (1, 2, 3) if s != leader)
    c.isolate(behind)
    for i in range(5):
        ops = (Put(b"k%d" % i, value(i)),)
        assert c.cores[leader].propose_write(f"w{i}", c.context(1), ops, 601) is None
        c.stabilize()
        assert isinstance(c.replies[f"w{i}"].value, WriteDone)
    peer = c.cores[behind].peers[1]
    start = peer.storage.apply_state.applied_index
    c.drop = None
    c.cut.clear()
    steps = []
    for _ in range(200):
        for core in c.cores.values():
            core.tick()
        for s in sorted(c.cores):
            applied = peer.storage.apply_state.applied_index
            c.run_round(s)
            if s == behind:
                steps.append(peer.storage.apply_state.applied_index - applied)
        if peer.storage.apply_state.applied_index >= start + 5:
            break
    assert peer.storage.apply_state.applied_index >= start + 5
    # Before: the five entries, committed at once, applied in one round.
    assert max(steps) == 1
    for i in range(5):
        assert c.engines[behind].kv_get(keys.DATA_DB, b"k%d" % i) == value(i)

"""What one round of a store does for one region, bounded in bytes
(`CoreConfig.max_round_bytes`), so that a region busy with large values
leaves the rounds to the others: its queued writes are proposed up to the
bound (one at least; the rest in the next rounds), and its committed
entries applied up to it (one at least). StoreCores with real LMDB, in one
thread (tests/store_node/harness.py). And the term of a large entry is read
from its record's header."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvproto.raft_cmdpb import Put
from raft.types import Entry
from store_node import keys
from store_node.config import CoreConfig
from store_node.peer import WriteDone
from store_node.records import CorruptRecordError, encode_entry, entry_term
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


def test_a_large_entrys_term_is_read_from_its_header() -> None:
    """`PeerStorage.term` of an entry the cache does not hold (never a large
    one) reads the stored record's header, not the whole entry decoded."""
    raw = encode_entry(Entry(term=7, index=9, data=b"x" * (16 << 20)))
    assert entry_term(raw, 9) == 7
    with pytest.raises(CorruptRecordError):
        entry_term(raw, 10)
    with pytest.raises(CorruptRecordError):
        entry_term(raw[:5], 9)


def test_the_term_of_a_large_entry_off_the_cache_is_its_own(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1], BOUND, ticks=30)
    core = c.cores[1]
    ops = (Put(b"k", b"x" * (5 << 20)),)
    assert core.propose_write("w", c.context(1), ops, 5 << 20) is None
    assert core.propose_write("v", c.context(1), (Put(b"j", b"y"),), 2) is None
    c.stabilize()
    storage = core.peers[1].storage
    last = storage.last_index()
    assert storage.cache.term(last - 1) is None  # 5 MiB: not cached
    assert storage.term(last - 1) == storage.term(last) == core.peers[1].node.term

"""The log compaction policy (store_node.log_gc): each trigger (entries,
bytes, the interval in store ticks) compacts a region's log, the interval
timer's batch, the exact byte count of a log (store_node.peer_storage
LogSizes), and the settings in ticks. StoreCores with real LMDB in one
thread (tests/store_node/harness.py): time is the store's ticks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvproto.raft_cmdpb import Put
from plumbing.config_file import ConfigError, load
from store_node import keys
from store_node.config import CoreConfig, StoreConfig
from store_node.log_gc import INTERVAL_BATCH, LogGc, LogGcConfig, Trigger
from store_node.peer_storage import LogSizes
from store_node.records import ApplyState
from tests.store_node.harness import CoreCluster, bootstrapped


def gc_cluster(tmp_path: Path, **gc: int) -> CoreCluster:
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, log_gc=LogGcConfig(**gc))
    return bootstrapped(tmp_path, [1], config, ticks=20)


def write(c: CoreCluster, key: bytes, value: bytes = b"v") -> None:
    """One client write: one log entry, applied."""
    assert c.cores[1].propose_write(key, c.context(1), (Put(key, value),), len(value)) is None
    c.stabilize()
    assert c.replies.pop(key).value is not None


def stored_log(c: CoreCluster, region_id: int = 1) -> list[tuple[bytes, bytes]]:
    """Region 1's log rows in raft/ (key, stored entry)."""
    return c.engines[1].raft_items(
        keys.LOG_DB, keys.raft_log_prefix(region_id), keys.raft_log_prefix(region_id + 1)
    )


def counts(c: CoreCluster) -> dict[Trigger, int]:
    return {t: c.cores[1].stats[t.stat] for t in Trigger}


def test_a_log_with_more_than_max_entries_is_compacted(tmp_path: Path) -> None:
    c = gc_cluster(tmp_path, max_entries=10)
    storage = c.cores[1].peers[1].storage
    longest = 0
    for i in range(40):
        write(c, b"k%02d" % i)
        longest = max(longest, storage.log_entries())
    assert longest <= 10
    assert counts(c)[Trigger.ENTRIES] >= 3
    assert counts(c)[Trigger.BYTES] == counts(c)[Trigger.INTERVAL] == 0
    # What is gone from the log is gone from raft/ too.
    truncated = storage.apply_state.truncated_index
    assert truncated > 30
    indexes = [keys.raft_log_index(k) for k, _ in stored_log(c)]
    assert indexes == list(range(truncated + 1, storage.last_index() + 1))


def test_a_log_with_more_than_max_bytes_is_compacted(tmp_path: Path) -> None:
    c = gc_cluster(tmp_path, max_entries=10_000, max_bytes=8 << 10, hard_max_bytes=1 << 20)
    storage = c.cores[1].peers[1].storage
    largest = 0
    for i in range(30):
        write(c, b"k%02d" % i, b"x" * 1000)
        largest = max(largest, storage.log_bytes)
        # The count is exact: what raft/ holds for the region.
        assert storage.log_bytes == sum(len(v) for _, v in stored_log(c))
    assert largest <= 8 << 10
    assert counts(c)[Trigger.BYTES] >= 2
    assert counts(c)[Trigger.ENTRIES] == counts(c)[Trigger.INTERVAL] == 0


def test_a_quiet_log_is_compacted_once_its_interval_is_up(tmp_path: Path) -> None:
    interval = 50
    c = gc_cluster(tmp_path, max_entries=10_000, interval_ticks=interval)
    core = c.cores[1]
    storage = core.peers[1].storage
    c.tick(interval)  # tick 70: the peer started at tick 0, compacted at tick 50
    assert core.ticks == 70
    assert counts(c)[Trigger.INTERVAL] == 1
    assert storage.log_entries() == 0
    for i in range(3):
        write(c, b"k%d" % i)
    c.tick(29)  # tick 99
    assert storage.log_entries() == 3  # not yet
    c.tick(1)
    assert counts(c) == {Trigger.BYTES: 0, Trigger.ENTRIES: 0, Trigger.INTERVAL: 2}
    assert storage.log_entries() == 0
    assert storage.apply_state.truncated_index == storage.apply_state.applied_index
    assert stored_log(c) == []
    # Nothing new: nothing more to compact, however long it stays quiet.
    c.tick(3 * interval)
    assert counts(c)[Trigger.INTERVAL] == 2


def test_a_leader_keeps_what_a_lagging_follower_needs_until_it_lags_too_far(
    tmp_path: Path,
) -> None:
    config = CoreConfig(
        election_ticks=10,
        heartbeat_ticks=2,
        log_gc=LogGcConfig(max_entries=10, max_follower_lag=40),
    )
    c = bootstrapped(tmp_path, [1, 2, 3], config)
    leader, _ = c.leader_of(1)  # type: ignore[misc]
    behind = next(s for s in (1, 2, 3) if s != leader)
    c.isolate(behind)
    storage = c.cores[leader].peers[1].storage
    held = storage.apply_state.truncated_index
    for i in range(30):
        assert c.cores[leader].propose_write(i, c.context(1), (Put(b"k%d" % i, b"v"),), 1) is None
        c.stabilize()
    # 30 entries past the lagging follower's: kept for it.
    assert storage.apply_state.truncated_index == held
    assert storage.log_entries() >= 30
    for i in range(30, 60):
        assert c.cores[leader].propose_write(i, c.context(1), (Put(b"k%d" % i, b"v"),), 1) is None
        c.stabilize()
    # More than max_follower_lag behind: left to a snapshot, the log compacted.
    assert storage.log_entries() <= 10
    assert c.cores[leader].stats[Trigger.ENTRIES.stat] >= 1


def test_without_an_interval_a_short_log_stays(tmp_path: Path) -> None:
    c = gc_cluster(tmp_path, max_entries=10_000)
    for i in range(3):
        write(c, b"k%d" % i)
    c.tick(500)
    assert sum(counts(c).values()) == 0
    assert c.cores[1].peers[1].storage.log_entries() >= 3


# -- the interval timer's batch, with stand-in peers ----------------------------------


@dataclass
class FakeStorage:
    apply_state: ApplyState
    sizes: LogSizes = field(default_factory=lambda: LogSizes(1))
    log_bytes: int = 0

    def log_entries(self) -> int:
        return self.apply_state.applied_index - self.apply_state.truncated_index

    def term(self, index: int) -> int:
        return 1


@dataclass
class FakePeer:
    region_id: int
    storage: FakeStorage
    initialized: bool = True

    def is_leader(self) -> bool:
        return False


def test_the_interval_timer_decides_at_most_a_batch_a_tick() -> None:
    gc = LogGc(LogGcConfig(interval_ticks=10))
    peers = {rid: FakePeer(rid, FakeStorage(ApplyState(9, 5, 1, 1))) for rid in range(1, 101)}
    for rid in peers:
        gc.start(rid, ticks=0)
    gc.on_tick(peers, 9)  # type: ignore[arg-type]
    assert gc.truncations == {}
    gc.on_tick(peers, 10)  # type: ignore[arg-type]
    assert sorted(gc.truncations) == list(range(1, INTERVAL_BATCH + 1))
    assert set(gc.truncations.values()) == {(9, 1, Trigger.INTERVAL)}
    gc.truncations.clear()
    gc.on_tick(peers, 11)  # type: ignore[arg-type]
    assert sorted(gc.truncations) == list(range(INTERVAL_BATCH + 1, 101))


# -- the byte count of a log ----------------------------------------------------------


def test_log_sizes_follow_appends_replacements_and_truncations() -> None:
    sizes = LogSizes(first=6)
    sizes.append(6, [10, 20, 30, 40])  # entries 6..9
    assert (sizes.total, sizes.up_to(7), sizes.up_to(5), sizes.up_to(99)) == (100, 30, 0, 100)
    sizes.append(8, [5])  # a new leader's entry 8 replaces 8 and 9
    assert sizes.total == 35
    sizes.truncate_to(7)
    assert (sizes.first, sizes.total, sizes.up_to(8)) == (8, 5, 5)
    sizes.append(9, [7, 8])
    assert (sizes.total, sizes.up_to(9)) == (20, 12)
    sizes.truncate_to(10)
    assert sizes.total == 0
    sizes.reset(50)
    sizes.append(50, [1])
    assert (sizes.first, sizes.total) == (50, 1)


def test_a_restarted_store_counts_the_bytes_of_the_log_it_finds(tmp_path: Path) -> None:
    c = gc_cluster(tmp_path, max_entries=10_000)
    for i in range(5):
        write(c, b"k%d" % i, b"x" * (100 * i))
    before = c.cores[1].peers[1].storage.log_bytes
    c.stop(1)
    c.start(1)
    after = c.cores[1].peers[1].storage
    assert after.log_bytes == before == sum(len(v) for _, v in stored_log(c))


# -- settings -------------------------------------------------------------------------


def test_the_settings_become_ticks_and_bytes() -> None:
    base = {"data_dir": "d", "tick_interval": "100ms"}
    cfg = load(
        StoreConfig,
        overrides={
            **base,
            "log_gc_interval": "150ms",
            "log_gc_max_entries": "500",
            "log_gc_max_bytes": "4MiB",
            "log_gc_max_follower_lag": "2000",
            "log_gc_hard_max_bytes": "32MiB",
        },
    )
    assert cfg.log_gc_config() == LogGcConfig(
        max_entries=500,
        max_bytes=4 << 20,
        interval_ticks=2,
        max_follower_lag=2000,
        hard_max_bytes=32 << 20,
    )
    default = load(StoreConfig, overrides=base).log_gc_config()
    assert default.interval_ticks == 6000  # 10 minutes
    assert load(StoreConfig, overrides={**base, "log_gc_interval": "0"}).log_gc_config() == (
        LogGcConfig(interval_ticks=0)
    )
    with pytest.raises(ConfigError, match="log_gc_max_bytes must not be above"):
        load(StoreConfig, overrides={**base, "log_gc_max_bytes": "1GiB"})

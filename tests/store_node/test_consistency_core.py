"""Replica consistency checks on StoreCores in one thread (real LMDB,
in-thread delivery, `tests.store_node.harness`): every replica hashes its
copy at the check's entry and compares it with the leader's; a copy changed
behind Raft's back is named; periodic checks, one at a time per store."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kvproto import pdpb
from kvproto.kvrpcpb import SessionRef
from kvproto.raft_cmdpb import Put
from plumbing.config_file import ConfigError, load
from store_node import keys
from store_node.config import CoreConfig, StoreConfig
from store_node.consistency import interval_ticks
from store_node.engine import Engine
from store_node.pd_worker import execute_order, has_core_order
from store_node.region_hash import region_digest
from tests.store_node.harness import CoreCluster, bootstrapped
from tests.store_node.test_split_core import route

CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=2)
STORES = (1, 2, 3)


def leader(c: CoreCluster, region_id: int = 1) -> int:
    found = c.leader_of(region_id)
    assert found is not None
    return found[0]


def put(c: CoreCluster, token: object, key: bytes, value: bytes, session: bytes = b"") -> None:
    """Queue a put at the leader of the key's region for the next round."""
    ref = None if not session else SessionRef(session, 1, 1, False, 1)
    store, region_id = route(c, key)
    ctx = c.context(region_id)
    err = c.cores[store].propose_write(token, ctx, (Put(key, value),), 8, ref)
    assert err is None, err


def write(c: CoreCluster, n: int, prefix: bytes = b"k") -> None:
    for i in range(n):
        put(c, (prefix, i), prefix + b"%04d" % i, b"v%d" % i)
        c.stabilize()


def check(c: CoreCluster, region_id: int = 1) -> None:
    """A check of the region, run to the end."""
    assert c.cores[leader(c, region_id)].check_consistency(region_id, 7) is None
    c.stabilize()
    c.tick(4)


def digests(c: CoreCluster, region_id: int = 1) -> dict[int, bytes | None]:
    return {s: core.consistency.checks[region_id].digest for s, core in sorted(c.cores.items())}


def stat(c: CoreCluster, name: str) -> dict[int, int]:
    return {s: core.stats[name] for s, core in sorted(c.cores.items())}


def pinned_digest(c: CoreCluster, store: int, region_id: int = 1) -> bytes:
    """The digest of a store's copy of the region as it is now."""
    region = c.cores[store].peers[region_id].region
    return c.engines[store].pin_kv(lambda txn: region_digest(txn, region)).run()


def test_replicas_hash_alike_after_writes(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, STORES, CONFIG)
    write(c, 30)
    check(c)
    found = digests(c)
    assert None not in found.values()
    assert len(set(found.values())) == 1
    assert stat(c, "consistency_checks_matched") == {1: 1, 2: 1, 3: 1}
    assert stat(c, "consistency_mismatches") == {1: 0, 2: 0, 3: 0}
    reports = [r for core in c.cores.values() for r in core.consistency.take_reports()]
    assert sorted(r.store_id for r in reports) == [1, 2, 3]
    assert {(r.check_id, r.index, r.hash, r.region.id) for r in reports} == {
        (7, reports[0].index, found[1], 1)
    }


def test_the_copy_is_hashed_at_the_check_entry_not_after_the_round(tmp_path: Path) -> None:
    # The check entry and writes after it reach every replica in one append
    # and apply in one round: the copy must be read between them.
    c = bootstrapped(tmp_path, STORES, CONFIG)
    write(c, 5)
    before = pinned_digest(c, leader(c))
    assert c.cores[leader(c)].check_consistency(1, 0) is None
    put(c, "after", b"k9999", b"later")
    put(c, "after2", b"k0001", b"changed")
    c.stabilize()
    c.tick(4)
    assert digests(c) == {1: before, 2: before, 3: before}
    assert pinned_digest(c, 1) != before  # the writes after it applied
    assert c.engines[2].kv_get(keys.DATA_DB, b"k9999") == b"later"
    assert stat(c, "consistency_checks_matched") == {1: 1, 2: 1, 3: 1}


def test_a_copy_changed_behind_raft_is_reported_by_that_replica(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = bootstrapped(tmp_path, STORES, CONFIG)
    write(c, 20)
    bad = next(s for s in (3, 2) if s != leader(c))
    c.stop(bad)
    engine = Engine(tmp_path / f"s{bad}")
    engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"k0003", b"rotten"))
    engine.close()
    c.start(bad)
    c.tick(30)
    with caplog.at_level(logging.ERROR, logger="store_node.consistency"):
        check(c)
    found = digests(c)
    good = leader(c)
    assert found[bad] != found[good]
    assert stat(c, "consistency_mismatches")[bad] == 1
    assert sum(stat(c, "consistency_mismatches").values()) == 1
    assert stat(c, "consistency_checks_matched")[good] == 1
    index = c.cores[bad].consistency.checks[1].index
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0]
    assert f"region 1: replicas differ at applied index {index}" in message
    assert f"store {bad} has {found[bad].hex()}" in message  # type: ignore[union-attr]
    assert f"store {good} has {found[good].hex()}" in message  # type: ignore[union-attr]


def test_session_rows_count_and_other_regions_data_does_not(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, STORES, CONFIG)
    put(c, "s", b"k1", b"v", session=b"s" * 16)
    c.stabilize()
    check(c)
    assert len(set(digests(c).values())) == 1
    follower = next(s for s in STORES if s != leader(c))
    engine = c.engines[follower]
    rows = engine.kv_items(keys.SESSION_DB)
    assert rows  # the session's record and answer
    key, value = rows[-1]
    engine.write_kv(lambda txn: txn.put(keys.SESSION_DB, key, value + b"x"))
    check(c)
    assert stat(c, "consistency_mismatches")[follower] == 1


def test_the_leaders_digest_may_arrive_before_a_replicas_own(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, STORES, CONFIG)
    write(c, 5)
    c.hold_hashes = True
    assert c.cores[leader(c)].check_consistency(1, 0) is None
    c.stabilize()
    c.tick(4)  # followers learn the commit with the next heartbeat
    first = leader(c)
    mine = [h for h in c.held_hashes if h[0] == first]
    c.held_hashes = [h for h in c.held_hashes if h[0] != first]
    assert len(mine) == 1 and len(c.held_hashes) == 2
    c.cores[first].on_hash_computed(mine[0][1].region.id, mine[0][1].index, mine[0][1].pinned.run())
    c.stabilize()
    c.tick(4)  # the leader's VerifyHash applied everywhere
    followers = [s for s in STORES if s != first]
    assert all(c.cores[s].consistency.checks[1].leader_digest is not None for s in followers)
    assert stat(c, "consistency_checks_matched") == {s: int(s == first) for s in STORES}
    c.finish_hashes()
    assert stat(c, "consistency_checks_matched") == {1: 1, 2: 1, 3: 1}


def test_checks_are_off_unless_configured(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, STORES, CONFIG)
    c.tick(300)
    assert sum(stat(c, "consistency_checks_proposed").values()) == 0


def test_periodic_checks_cover_every_region_one_at_a_time(tmp_path: Path) -> None:
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, consistency_check_ticks=40)
    c = bootstrapped(tmp_path, STORES, config)
    c.split_limits = (1 << 30, 10)
    write(c, 40)
    c.tick(5)
    regions = sorted(c.cores[1].peers)
    assert len(regions) >= 3
    c.hold_hashes = True
    c.tick(120)
    # Each store waits for its leader's digest before the next check.
    held = {(s, job.region.id) for s, job in c.held_hashes}
    led = {rid: leader(c, rid) for rid in regions}
    proposed = stat(c, "consistency_checks_proposed")
    assert all(n <= 1 for n in proposed.values()), proposed
    c.hold_hashes = False
    c.finish_hashes()
    c.tick(400)
    assert held
    for rid in regions:
        found = {core.consistency.checks[rid].digest for core in c.cores.values()}
        assert len(found) == 1 and None not in found, rid
    proposed = stat(c, "consistency_checks_proposed")
    assert sum(proposed.values()) >= len(regions)
    for s, n in proposed.items():
        assert n >= sum(1 for rid, ls in led.items() if ls == s)
    assert sum(stat(c, "consistency_mismatches").values()) == 0


def test_a_sleeping_region_is_woken_for_its_periodic_check_and_sleeps_again(
    tmp_path: Path,
) -> None:
    config = CoreConfig(
        election_ticks=10, heartbeat_ticks=2, hibernate_after_ticks=20, consistency_check_ticks=300
    )
    c = bootstrapped(tmp_path, STORES, config)
    write(c, 3)

    def all_asleep() -> bool:
        return all(core.peers[1].asleep for core in c.cores.values())

    def proposed() -> int:
        return sum(stat(c, "consistency_checks_proposed").values())

    for _ in range(200):
        c.tick()
        if all_asleep():
            break
    assert all_asleep()
    before, ticks = proposed(), 0
    while proposed() == before:
        assert all_asleep()
        c.tick()
        ticks += 1
        assert ticks <= 300
    assert not all_asleep()  # the check woke the region
    c.tick(100)
    assert all_asleep()
    assert sum(stat(c, "consistency_checks_matched").values()) == 3 * proposed()


def test_the_store_setting_is_a_duration_in_ticks_and_off_by_default() -> None:
    base = {"data_dir": "d", "tick_interval": "100ms"}
    assert load(StoreConfig, overrides=base).consistency_check_interval == 0.0
    cfg = load(StoreConfig, overrides={**base, "consistency_check_interval": "24h"})
    assert cfg.consistency_check_interval == 86400.0
    assert interval_ticks(cfg.consistency_check_interval, cfg.tick_interval) == 864_000
    assert interval_ticks(0.0, 0.1) == 0
    assert interval_ticks(0.01, 0.1) == 1  # on, however short
    with pytest.raises(ConfigError, match="consistency_check_interval"):
        load(StoreConfig, overrides={**base, "consistency_check_interval": "-1s"})


def test_a_pd_order_starts_a_check_with_the_pds_id(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, STORES, CONFIG)
    write(c, 3)
    first = leader(c)
    header = pdpb.ResponseHeader()
    for store in STORES:  # only the leader acts on it
        order = pdpb.RegionHeartbeatResponse(header, region_id=1, consistency_check=41)
        assert has_core_order(order)
        execute_order(c.cores[store], 1, order)
    c.stabilize()
    c.tick(4)
    assert stat(c, "consistency_checks_proposed") == {s: int(s == first) for s in STORES}
    reports = [r for core in c.cores.values() for r in core.consistency.take_reports()]
    assert sorted((r.store_id, r.check_id) for r in reports) == [(1, 41), (2, 41), (3, 41)]
    assert not has_core_order(pdpb.RegionHeartbeatResponse(header, region_id=1))

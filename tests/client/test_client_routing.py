"""The async client against a fake PD and fake stores (tests/client/fakes):
routing each call to the leader of its key's region, the region and store
caches, and how a call finds its way again when a leader moves, a region
is not where the cache says, or a store dies, comes back or is unknown.

Every test takes `autojump_clock` and the fixture `h`; rules: conftest.py.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kvproto import kvrpcpb as kv
from kvproto.errorpb import (
    KeyNotInRegion,
    NotLeader,
    RegionNotFound,
    StoreNotMatch,
)
from kvproto.metapb import RegionId, StoreId
from tests.client.fakes import MAX_KEY_SIZE, Harness, on

# -- plain routing -------------------------------------------------------------


@pytest.mark.cluster([b"g", b"p"])
async def test_put_get_delete_go_to_the_leader_of_the_keys_region(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.cluster.move_leader(h.cluster.region_of(b"h").id, 2)
    await h.kv.put(b"a", b"1")
    await h.kv.put(b"h", b"2")
    assert await h.kv.get(b"a") == b"1"
    assert await h.kv.get(b"h") == b"2"
    assert await h.kv.get(b"zz") is None
    await h.kv.delete(b"a")
    assert await h.kv.get(b"a") is None
    assert [(s.store_id, s.kind) for s in h.cluster.seen if s.keys == (b"h",)] == [
        (2, "Put"),
        (2, "Get"),
    ]
    assert all(s.answer == "ok" for s in h.cluster.seen)


@pytest.mark.cluster([b"m"])
async def test_a_cache_miss_asks_the_pd_once_per_region(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    for k in [b"a", b"b", b"c", b"x", b"y"]:
        await h.kv.put(k, k)
    assert h.cluster.pd_calls["get_region"] == 2
    assert h.cluster.pd_calls["get_store"] == 1  # store 1 leads both


@pytest.mark.cluster([b"m"])
async def test_one_connection_per_store_is_shared_by_concurrent_calls(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.store(1).latency = 0.01
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(h.kv.put, b"k%d" % i, b"v")
    assert h.net.connects[h.store(1).address] == 1
    assert h.store(1).max_in_flight > 1  # pipelined on that connection


@pytest.mark.cluster([b"m"])
async def test_contains_put_if_absent_get_and_put_compare_and_set(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    kvc = h.kv
    assert not await kvc.contains(b"k")
    assert await kvc.put_if_absent(b"k", b"1") is None
    assert await kvc.contains(b"k")
    assert await kvc.put_if_absent(b"k", b"2") == b"1"
    assert await kvc.get_and_put(b"k", b"3") == b"1"
    assert await kvc.get_and_put(b"new", b"x") is None
    assert await kvc.compare_and_set(b"k", b"nope", b"4") == (False, b"3")
    assert await kvc.compare_and_set(b"k", b"3", b"4") == (True, b"3")
    assert await kvc.compare_and_set(b"k", b"4", None) == (True, b"4")
    assert not await kvc.contains(b"k")
    assert await kvc.compare_and_set(b"k", None, b"5") == (True, None)
    # contains never transfers the value
    assert any(s.kind == "Scan" for s in h.cluster.seen)
    # and works for a key of the largest size (no bound past it)
    big = b"k" * MAX_KEY_SIZE
    assert not await kvc.contains(big)
    await kvc.put(big, b"v")
    assert await kvc.contains(big)


# -- leaders and regions that moved --------------------------------------------


async def test_not_leader_with_a_hint_follows_it_at_once(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.cluster.move_leader(1, 3)
    start = trio.current_time()
    assert await h.kv.get(b"k") == b"1"
    assert trio.current_time() == start
    assert [(s.store_id, s.answer) for s in h.cluster.seen[1:]] == [
        (1, "NotLeader"),
        (3, "ok"),
    ]
    assert h.kv.cache.get(1).leader.store_id == 3  # type: ignore[union-attr]


async def test_not_leader_without_a_hint_tries_the_next_peer_after_a_backoff(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.cluster.move_leader(1, 2)
    h.store(1).add_rule(on(kv.RawGetRequest), NotLeader(RegionId(1), None))
    start = trio.current_time()
    assert await h.kv.get(b"k") == b"1"
    assert trio.current_time() > start
    assert [(s.store_id, s.answer) for s in h.cluster.seen[1:]] == [
        (1, "NotLeader"),
        (2, "ok"),
    ]


@pytest.mark.cluster(store_ids=[1, 2, 3, 4])
async def test_a_leader_hint_outside_the_cached_region_reloads_it(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.cluster.set_peers(1, [1, 2, 3])
    await h.kv.put(b"k", b"1")
    h.cluster.set_peers(1, [1, 2, 4])
    h.cluster.move_leader(1, 4)
    before = h.cluster.pd_calls["get_region"]
    assert await h.kv.get(b"k") == b"1"
    assert h.cluster.pd_calls["get_region"] == before + 1
    assert h.cluster.seen[-1].store_id == 4


async def test_region_not_found_reloads_the_region_from_the_pd(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.store(1).add_rule(on(kv.RawGetRequest), RegionNotFound(RegionId(1)))
    h.cluster.move_leader(1, 2)
    before = h.cluster.pd_calls["get_region"]
    assert await h.kv.get(b"k") == b"1"
    assert h.cluster.pd_calls["get_region"] == before + 1


async def test_key_not_in_region_reloads_the_region_from_the_pd(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.store(1).add_rule(on(kv.RawGetRequest), KeyNotInRegion(b"k", RegionId(1), b"", b"a"))
    before = h.cluster.pd_calls["get_region"]
    assert await h.kv.get(b"k") == b"1"
    assert h.cluster.pd_calls["get_region"] == before + 1


# -- stores that changed, died or are unknown ----------------------------------


async def test_store_not_match_forgets_the_store_address(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.store(1).add_rule(on(kv.RawGetRequest), StoreNotMatch(StoreId(1), StoreId(5)))
    before = h.cluster.pd_calls["get_store"]
    assert await h.kv.get(b"k") == b"1"
    assert h.cluster.pd_calls["get_store"] == before + 1


async def test_a_dead_store_is_left_for_the_leader_the_pd_names(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.net.kill(h.store(1).address)
    h.cluster.move_leader(1, 2)
    assert await h.kv.get(b"k") == b"1"
    assert h.cluster.seen[-1].store_id == 2


async def test_a_dead_store_the_pd_still_names_is_skipped_for_another_peer(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.cluster.freeze_pd()  # the PD still says store 1 leads
    h.net.kill(h.store(1).address)
    h.cluster.move_leader(1, 3)
    assert await h.kv.get(b"k") == b"1"
    assert [(s.store_id, s.answer) for s in h.cluster.seen[1:]] == [
        (2, "NotLeader"),
        (3, "ok"),
    ]


async def test_a_store_that_comes_back_is_used_again(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.net.kill(h.store(1).address)
    for st in (2, 3):
        h.store(st).add_rule(on(kv.RawGetRequest), NotLeader(RegionId(1), None), 1000)

    async def revive() -> None:
        await trio.sleep(1.5)
        h.net.revive(h.store(1).address)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(revive)
        assert await h.kv.get(b"k", timeout=5) == b"1"
    assert h.cluster.seen[-1].store_id == 1


async def test_a_store_the_pd_does_not_know_is_skipped(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.pd.unknown_stores.add(1)
    h.cluster.freeze_pd()  # it still names store 1 as the leader
    h.cluster.move_leader(1, 2)
    await h.kv.put(b"k", b"1")
    assert [(s.store_id, s.answer) for s in h.cluster.seen] == [(2, "ok")]

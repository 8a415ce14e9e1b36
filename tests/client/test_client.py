"""The async client against a fake PD and fake stores (tests/client/fakes.py).

Rules (see conftest.py): in-memory network, `autojump_clock` for every
test (they all involve deadlines or backoff; pytest-trio only uses a clock
the test function itself requests), no sleeps to wait for a condition.
Every test takes the fixture `h` (the cluster its `cluster` mark
describes, and a client of it), which bounds it with `trio.fail_after`.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from client import (
    ClientClosed,
    ClientConfig,
    ClusterMismatch,
    DeadlineExceeded,
    InvalidArgument,
    PdUnavailable,
    StoreError,
    UndeterminedError,
)
from kvproto import kvrpcpb as kv
from kvproto import pdpb
from kvproto.errorpb import (
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    RegionNotFound,
    ServerIsBusy,
    StaleCommand,
    StoreNotMatch,
)
from kvproto.metapb import RegionId, StoreId
from tests.client.fakes import MAX_KEY_SIZE, PD_ADDRESS, Cut, Harness, Hold, on


async def fill(h: Harness, keys: list[bytes]) -> None:
    for k in keys:
        h.cluster.data[k] = b"v-" + k


# -- plain routing ------------------------------------------------------------


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


# -- batches --------------------------------------------------------------------


@pytest.mark.cluster([b"g", b"p"])
async def test_batch_calls_are_split_by_region_and_sent_concurrently(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    for r in list(h.cluster.regions):
        h.cluster.move_leader(r, 1 + r % 3)
    for st in h.stores.values():
        st.latency = 1.0
    keys = [b"a", b"b", b"h", b"i", b"q", b"z"]
    await h.kv.batch_put([(k, b"v" + k) for k in keys])
    start = trio.current_time()
    got = await h.kv.batch_get([*reversed(keys), b"missing", b"a"])
    # three regions on three stores, each a second away: concurrent
    assert trio.current_time() - start == pytest.approx(1.0)
    assert list(got) == keys
    assert got == {k: b"v" + k for k in keys}
    batch_gets = [s for s in h.cluster.seen if s.kind == "BatchGet"]
    assert sorted(len(s.keys) for s in batch_gets) == [2, 2, 3]
    await h.kv.batch_delete([b"a", b"h", b"q"])
    assert list(await h.kv.batch_get(keys)) == [b"b", b"i", b"z"]


@pytest.mark.cluster([b"c", b"f", b"k", b"p"])
async def test_a_batch_on_a_cold_cache_loads_its_regions_in_one_pd_call(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.batch_put([(bytes([c]), b"v") for c in b"abcdefghijklmnopq"])
    assert h.cluster.pd_calls["scan_regions"] == 1
    assert h.cluster.pd_calls["get_region"] == 0
    assert len(h.kv.cache) == 5
    h.kv.cache.clear()
    await h.kv.delete_range(b"b", b"q")
    assert h.cluster.pd_calls["scan_regions"] == 2
    assert list(h.cluster.data) == [b"a", b"q"]


@pytest.mark.cluster(config=ClientConfig(batch_max_keys=2))
async def test_batch_requests_are_chunked(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.batch_put({b"k%d" % i: b"v" for i in range(5)})
    assert sorted(len(s.keys) for s in h.cluster.seen if s.kind == "BatchPut") == [1, 2, 2]


@pytest.mark.cluster([b"g"])
async def test_batch_get_straddling_a_fresh_split_re_splits_only_that_group(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    keys = [b"a", b"b", b"h", b"q", b"z"]
    await fill(h, keys)
    await h.kv.batch_get(keys)  # warm the cache
    h.cluster.seen.clear()
    h.cluster.split_at(b"p")
    got = await h.kv.batch_get(keys)
    assert list(got) == keys
    by_region: dict[int, list[str]] = {}
    for s in h.cluster.seen:
        by_region.setdefault(s.region_id, []).append(s.answer)
    left = h.cluster.region_of(b"a").id
    assert by_region[left] == ["ok"]  # the untouched group went once
    assert by_region[h.cluster.region_of(b"h").id] == ["EpochNotMatch", "ok"]
    assert by_region[h.cluster.region_of(b"q").id] == ["ok"]


async def test_epoch_not_match_with_the_split_regions_needs_no_pd(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.cluster.epoch_error_with_siblings = True
    await fill(h, [b"a", b"x"])
    await h.kv.get(b"a")
    pd_before = h.cluster.pd_calls["get_region"]
    h.cluster.split_at(b"m")
    start = trio.current_time()
    assert await h.kv.batch_get([b"a", b"x"]) == {b"a": b"v-a", b"x": b"v-x"}
    assert trio.current_time() == start  # no backoff
    assert h.cluster.pd_calls["get_region"] == pd_before
    assert [e.region.id for e in h.kv.cache] == [1, h.cluster.region_of(b"x").id]


# -- scans and ranges -------------------------------------------------------------


@pytest.mark.cluster([b"c", b"f", b"k"])
async def test_scan_crosses_regions_forward_and_reverse(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    keys = [bytes([c]) for c in b"abcdefghijklmn"]
    await fill(h, keys)
    kvc = h.kv
    assert [k for k, _ in await kvc.scan(b"")] == keys
    assert [k for k, _ in await kvc.scan(b"b", b"l")] == keys[1:11]
    assert [k for k, _ in await kvc.scan(b"", reverse=True)] == keys[::-1]
    assert [k for k, _ in await kvc.scan(b"b", b"l", reverse=True)] == keys[1:11][::-1]
    assert [k for k, _ in await kvc.scan(b"b", limit=4)] == keys[1:5]
    assert [k for k, _ in await kvc.scan(b"", b"k", limit=4, reverse=True)] == [
        b"j",
        b"i",
        b"h",
        b"g",
    ]
    assert await kvc.scan(b"a", b"c", keys_only=True) == [(b"a", b""), (b"b", b"")]
    assert await kvc.scan(b"e", b"e") == []
    # every request stayed inside its region
    for s in h.cluster.seen:
        assert s.answer == "ok", s


@pytest.mark.cluster([b"c", b"f", b"k"])
async def test_scan_iter_pages_region_by_region(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    keys = [bytes([c]) for c in b"abcdefghijklmn"]
    await fill(h, keys)
    got = [k async for k, _ in h.kv.scan_iter(b"", page_size=2)]
    assert got == keys
    got = [k async for k, _ in h.kv.scan_iter(b"", page_size=3, reverse=True)]
    assert got == keys[::-1]
    got = [k async for k, _ in h.kv.scan_iter(b"b", b"m", page_size=2, limit=5)]
    assert got == keys[1:6]
    assert max(len(s.keys) for s in h.cluster.seen) <= 3


@pytest.mark.cluster([b"m"])
async def test_scan_straddling_a_fresh_split_returns_every_key_once_in_order(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    keys = [b"%03d" % i for i in range(0, 200, 3)] + [b"x%02d" % i for i in range(40)]
    await fill(h, sorted(keys))
    for reverse in (False, True):
        seen: list[bytes] = []
        splits = iter([b"050", b"100", b"x10", b"x30", b"150", b"x20"])
        async for k, _ in h.kv.scan_iter(b"", page_size=7, reverse=reverse):
            seen.append(k)
            if len(seen) % 7 == 1:
                key = next(splits, None)
                if key is not None and h.cluster.region_of(key).start_key != key:
                    h.cluster.split_at(key)
        assert seen == sorted(keys, reverse=reverse)
    assert any(s.answer == "EpochNotMatch" for s in h.cluster.seen)


@pytest.mark.cluster([b"g", b"p"])
async def test_reverse_scan_from_a_region_boundary_finds_the_previous_region(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await fill(h, [b"a", b"f", b"h", b"q"])
    got = await h.kv.scan(b"", b"p", reverse=True)
    assert [k for k, _ in got] == [b"h", b"f", b"a"]
    assert h.cluster.pd_calls["scan_regions"] == 1
    got = await h.kv.scan(b"", reverse=True, limit=1)
    assert got == [(b"q", b"v-q")]


@pytest.mark.cluster([b"c", b"f", b"k"])
async def test_delete_range_sends_clipped_parts_per_region(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    keys = [bytes([c]) for c in b"abcdefghijklmn"]
    await fill(h, keys)
    await h.kv.delete_range(b"b", b"l")
    assert list(h.cluster.data) == [b"a", b"l", b"m", b"n"]
    parts = sorted(s.range for s in h.cluster.seen if s.kind == "DeleteRange")
    assert parts == [(b"b", b"c"), (b"c", b"f"), (b"f", b"k"), (b"k", b"l")]
    await h.kv.delete_range(b"", b"")
    assert not h.cluster.data


@pytest.mark.cluster([b"f"])
async def test_delete_range_straddling_a_fresh_split_deletes_everything(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    keys = [bytes([c]) for c in b"abcdefghijklmn"]
    await fill(h, keys)
    await h.kv.get(b"z")  # cache both regions
    await h.kv.get(b"a")
    h.cluster.split_at(b"j")
    await h.kv.delete_range(b"b", b"m")
    assert list(h.cluster.data) == [b"a", b"m", b"n"]


# -- region errors ----------------------------------------------------------------


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


async def test_an_election_everywhere_ends_in_deadline_exceeded_naming_key_and_cause(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.cluster.move_leader(1, None)
    start = trio.current_time()
    with pytest.raises(DeadlineExceeded) as info:
        await h.kv.get(b"k", timeout=2.0)
    assert trio.current_time() - start <= 2.0
    msg = str(info.value)
    assert "get b'k'" in msg and "deadline of 2 s" in msg
    assert "not leader (leader unknown)" in msg
    # backed off rather than spinning
    assert 5 < len(h.cluster.seen) < 100
    assert {s.store_id for s in h.cluster.seen} == {1, 2, 3}


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


async def test_server_is_busy_backs_off_at_least_its_hint(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.store(1).add_rule(on(kv.RawPutRequest), ServerIsBusy("queue full", 300), times=2)
    start = trio.current_time()
    await h.kv.put(b"k", b"2")
    assert trio.current_time() - start >= 0.6
    assert h.cluster.data[b"k"] == b"2"


async def test_stale_command_is_retried_even_for_compare_and_set(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), StaleCommand())
    assert await h.kv.compare_and_set(b"k", None, b"1") == (True, None)
    assert [s.answer for s in h.cluster.seen] == ["StaleCommand", "ok"]


@pytest.mark.parametrize(
    "error",
    [
        NotLeader(RegionId(1), None),
        EpochNotMatch(()),
        KeyNotInRegion(b"k", RegionId(1), b"", b"a"),
        ServerIsBusy("busy", 10),
        StaleCommand(),
        StoreNotMatch(StoreId(9), StoreId(1)),
    ],
)
async def test_errors_that_prove_nothing_was_applied_retry_conditional_writes(
    error: object, autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.cluster.data[b"k"] = b"0"
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), error)  # type: ignore[arg-type]
    assert await h.kv.compare_and_set(b"k", b"0", b"1") == (True, b"0")
    assert h.cluster.data[b"k"] == b"1"


@pytest.mark.cluster(config=ClientConfig(exactly_once=False))
async def test_without_a_session_region_not_found_makes_a_conditional_write_undetermined(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # A store answers RegionNotFound to the proposals in flight of a peer it
    # destroys, which may have committed elsewhere: no proof of non-execution.
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), RegionNotFound(RegionId(1)))
    with pytest.raises(UndeterminedError, match="compare_and_set b'k'"):
        await h.kv.compare_and_set(b"k", None, b"1")
    # while a put is retried
    h.store(1).add_rule(on(kv.RawPutRequest), RegionNotFound(RegionId(1)))
    await h.kv.put(b"k", b"2")
    assert h.cluster.data[b"k"] == b"2"


async def test_store_not_match_forgets_the_store_address(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.store(1).add_rule(on(kv.RawGetRequest), StoreNotMatch(StoreId(1), StoreId(5)))
    before = h.cluster.pd_calls["get_store"]
    assert await h.kv.get(b"k") == b"1"
    assert h.cluster.pd_calls["get_store"] == before + 1


async def test_an_invalid_request_is_not_retried(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    with pytest.raises(InvalidArgument, match="key_too_large"):
        await h.kv.put(b"x" * 100, b"v")
    assert len(h.cluster.seen) == 1
    with pytest.raises(InvalidArgument, match="empty key"):
        await h.kv.get(b"")
    with pytest.raises(InvalidArgument, match="end key is below start key"):
        await h.kv.scan(b"b", b"a")
    with pytest.raises(InvalidArgument, match="limit must be positive"):
        await h.kv.scan(b"a", limit=0)
    with pytest.raises(TypeError, match="key must be bytes"):
        await h.kv.get("k")  # type: ignore[arg-type]
    assert len(h.cluster.seen) == 1


# -- connection errors and unknown outcomes -------------------------------------------


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


async def test_compare_and_set_after_a_lost_connection_is_retried_in_its_session(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # The first attempt applied and its answer was lost with the connection;
    # the retry carries the same request number and gets that answer, where
    # applying it again would answer (False, b"1").
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), Cut(apply=True))
    assert await h.kv.compare_and_set(b"k", None, b"1") == (True, None)
    answers = [s.answer for s in h.cluster.seen]
    assert answers[0] == "Cut" and answers[-1] == "ok", answers
    assert len(h.cluster.session_answers) == 1
    assert h.cluster.data[b"k"] == b"1"


async def test_put_after_a_lost_connection_is_not_applied_again_after_a_later_delete(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # The retried-put bug of issue 11: put applied, answer lost; meanwhile
    # another client deletes the key; the retry must not bring the value back.
    h.store(1).add_rule(on(kv.RawPutRequest), Cut(apply=True))
    h.store(1).latency = 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.kv.put, b"k", b"1")
        await trio.sleep(0.001)  # the put applied, its connection is cut
        assert h.cluster.data.get(b"k") == b"1"
        h.cluster.data.pop(b"k")  # another client's delete
    assert b"k" not in h.cluster.data


@pytest.mark.cluster(config=ClientConfig(exactly_once=False))
async def test_without_a_session_compare_and_set_after_a_lost_connection_is_undetermined(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), Cut(apply=True))
    with pytest.raises(UndeterminedError) as info:
        await h.kv.compare_and_set(b"k", None, b"1")
    assert "compare_and_set b'k'" in str(info.value)
    assert "connection lost" in str(info.value)
    assert h.cluster.kinds_seen() == ["CompareAndSet"]  # never retried
    assert h.cluster.data[b"k"] == b"1"  # and it did apply


@pytest.mark.parametrize("call", ["put_if_absent", "get_and_put"])
async def test_conditional_writes_after_a_timeout_are_undetermined(
    call: str, autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), Hold(), times=100)
    start = trio.current_time()
    with pytest.raises(UndeterminedError, match=f"{call} b'k'"):
        await getattr(h.kv, call)(b"k", b"1", timeout=3)
    assert trio.current_time() - start == pytest.approx(3)
    assert "CompareAndSet" in h.cluster.kinds_seen()


async def test_a_put_after_a_lost_connection_is_retried(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawPutRequest), Cut(apply=True))
    await h.kv.put(b"k", b"1")
    assert h.cluster.data[b"k"] == b"1"
    # Store 1 got it twice: once cut, once answered (other peers
    # were asked in between, and named store 1 as the leader).
    assert [s.answer for s in h.cluster.seen if s.store_id == 1] == ["ok", "Cut", "ok"]


async def test_a_put_that_never_gets_an_answer_is_undetermined_not_just_late(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawPutRequest), Hold())
    with pytest.raises(UndeterminedError, match=r"put b'k'.*deadline of 2 s"):
        await h.kv.put(b"k", b"1", timeout=2)


async def test_a_write_that_may_have_applied_stays_undetermined_at_the_deadline(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawPutRequest), Cut(apply=False))
    h.cluster.move_leader(1, None)  # then nobody leads until the deadline
    with pytest.raises(UndeterminedError, match="put b'k'"):
        await h.kv.put(b"k", b"1", timeout=2)


async def test_a_read_that_never_gets_an_answer_exceeds_the_deadline(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawGetRequest), Hold())
    start = trio.current_time()
    with pytest.raises(DeadlineExceeded, match=r"get b'k'.*no answer within"):
        await h.kv.get(b"k", timeout=1.5)
    assert trio.current_time() - start == pytest.approx(1.5)


@pytest.mark.cluster(config=ClientConfig(timeout=4.0))
async def test_the_default_deadline_comes_from_the_config(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawGetRequest), Hold(), times=100)
    start = trio.current_time()
    with pytest.raises(DeadlineExceeded, match="deadline of 4 s"):
        await h.kv.get(b"k")
    assert trio.current_time() - start == pytest.approx(4.0)


@pytest.mark.cluster(config=ClientConfig(timeout=10.0, attempt_timeout=1.5))
async def test_an_attempt_that_gets_no_answer_moves_on_before_the_deadline(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # A stopped store (or a leader cut off from its followers) never
    # answers: after attempt_timeout the call tries the other peers, and
    # the write, in its session, is applied once.
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), Hold())
    start = trio.current_time()
    assert await h.kv.compare_and_set(b"k", None, b"1") == (True, None)
    assert 1.5 <= trio.current_time() - start < 3.0
    assert h.cluster.data[b"k"] == b"1"


async def test_a_cancel_scope_bounds_a_call_too(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawGetRequest), Hold())
    start = trio.current_time()
    with trio.move_on_after(0.5) as scope:
        await h.kv.get(b"k")
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(0.5)
    assert await h.kv.get(b"k") == b"0"  # the client is fine afterwards


async def test_an_unreachable_pd_raises_pd_unavailable(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.net.kill(PD_ADDRESS)
    with pytest.raises(PdUnavailable, match=r"get b'k'.*PD"):
        await h.kv.get(b"k", timeout=2)
    assert isinstance(PdUnavailable("w", 1, 1, "c"), DeadlineExceeded)


async def test_pd_errors_are_retried_but_another_cluster_is_not(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.pd.errors = [pdpb.PdError(pdpb.PdErrorCode.NOT_BOOTSTRAPPED, "not yet")] * 3
    start = trio.current_time()
    await h.kv.put(b"k", b"1")
    assert trio.current_time() > start
    h.kv.cache.clear()
    h.pd.errors = [pdpb.PdError(pdpb.PdErrorCode.CLUSTER_MISMATCH, "cluster 8")]
    with pytest.raises(ClusterMismatch, match="get b'k'"):
        await h.kv.get(b"k")


async def test_a_store_the_pd_does_not_know_is_skipped(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.pd.unknown_stores.add(1)
    h.cluster.freeze_pd()  # it still names store 1 as the leader
    h.cluster.move_leader(1, 2)
    await h.kv.put(b"k", b"1")
    assert [(s.store_id, s.answer) for s in h.cluster.seen] == [(2, "ok")]


async def test_a_store_internal_error_fails_a_read_and_undetermines_a_write(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).script.clear()

    async def boom(req: object, ctx: object) -> object:
        raise RuntimeError("disk on fire")

    h.store(1).handle = boom  # type: ignore[method-assign,assignment]
    h.net.servers[h.store(1).address] = h.store(1).server()
    h.net.cut(h.store(1).address)
    with pytest.raises(StoreError, match="disk on fire"):
        await h.kv.get(b"k")
    with pytest.raises(UndeterminedError, match="disk on fire"):
        await h.kv.put(b"k", b"1")


async def test_a_closed_client_refuses_calls(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.kv.close()
    with pytest.raises(ClientClosed):
        await h.kv.get(b"k")


@pytest.mark.parametrize("call", ["batch_put", "delete_range"])
@pytest.mark.cluster([b"m"], config=ClientConfig(timeout=3.0))
async def test_a_multi_region_write_that_fails_after_writing_part_is_undetermined(
    call: str, autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # Found by the simulation: one region's part applied, the other's region
    # had no leader until the deadline, and the call raised DeadlineExceeded,
    # which promises that nothing was written.
    await h.kv.batch_put({b"a": b"0", b"z": b"0"})
    no_leader = NotLeader(h.cluster.region_of(b"z").id, None)
    for s in h.cluster.store_ids:
        h.store(s).add_rule(
            on((kv.RawBatchPutRequest, kv.RawDeleteRangeRequest), key=b"z"),
            no_leader,
            times=10_000,
        )
    with pytest.raises(UndeterminedError, match="part of the call was written"):
        if call == "batch_put":
            await h.kv.batch_put({b"a": b"1", b"z": b"1"})
        else:
            await h.kv.delete_range(b"a", b"")
    assert h.cluster.data.get(b"a") == (b"1" if call == "batch_put" else None)
    assert h.cluster.data[b"z"] == b"0"

"""The async client against a fake PD and fake stores (tests/client/fakes):
batch calls, scans and delete_range, split by region and sent
concurrently, and what they do when a region splits under them.

Every test takes `autojump_clock` and the fixture `h`; rules: conftest.py.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from client import (
    ClientConfig,
)
from tests.client.fakes import Harness

# -- batches -------------------------------------------------------------------


async def fill(h: Harness, keys: list[bytes]) -> None:
    for k in keys:
        h.cluster.data[k] = b"v-" + k


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


# -- scans and ranges ----------------------------------------------------------


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
    parts = sorted(s.range for s in h.cluster.seen if s.kind == "DeleteRange" and s.range)
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

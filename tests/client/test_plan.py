"""Splitting by region and walking scans: pure, with a property test that a
scan returns every key once, in order, while regions split between pages."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.plan import MAX_SCAN_PAGE, ScanCursor, clip, end_in_region, holds_keys_before
from kvproto.metapb import Region
from plumbing.batches import chunks
from tests.factories import region


def test_clip_cuts_a_range_to_the_region() -> None:
    assert clip(region(1, b"c", b"f", stores=()), b"a", b"z") == (b"c", b"f")
    assert clip(region(1, b"c", b"f", stores=()), b"d", b"e") == (b"d", b"e")
    assert clip(region(1, b"c", b"", stores=()), b"d", b"") == (b"d", b"")
    assert clip(region(1, b"c", b"f", stores=()), b"", b"") == (b"c", b"f")
    assert clip(region(1, b"", b"", stores=()), b"d", b"e") == (b"d", b"e")


def test_end_in_region_finds_the_run_of_keys_inside() -> None:
    keys = [b"a", b"b", b"f", b"g", b"z"]
    assert end_in_region(keys, 0, region(1, b"", b"f", stores=())) == 2
    assert end_in_region(keys, 2, region(1, b"f", b"h", stores=())) == 4
    assert end_in_region(keys, 4, region(1, b"h", b"", stores=())) == 5


def test_holds_keys_before() -> None:
    assert holds_keys_before(region(1, b"c", b"f", stores=()), b"f")
    assert holds_keys_before(region(1, b"c", b"f", stores=()), b"d")
    assert not holds_keys_before(region(1, b"c", b"f", stores=()), b"c")
    assert not holds_keys_before(region(1, b"c", b"f", stores=()), b"")
    assert holds_keys_before(region(1, b"c", b"", stores=()), b"")
    assert holds_keys_before(region(1, b"c", b"", stores=()), b"x")


def test_chunks_bound_count_and_bytes_but_take_at_least_one() -> None:
    assert chunks([1, 2, 3, 4, 5], 2, 100, lambda x: 1) == [[1, 2], [3, 4], [5]]
    assert chunks([5, 5, 5], 10, 9, lambda x: x) == [[5], [5], [5]]
    assert chunks([50], 10, 9, lambda x: x) == [[50]]
    assert chunks([], 10, 9, lambda x: x) == []


def test_a_cursor_never_asks_beyond_the_store_cap_or_the_limit() -> None:
    assert ScanCursor(b"", b"", page_size=10**9).page_limit() == MAX_SCAN_PAGE
    assert ScanCursor(b"", b"", page_size=50, remaining=7).page_limit() == 7
    assert ScanCursor(b"b", b"a").done
    assert ScanCursor(b"a", b"a").done
    with pytest.raises(ValueError, match="page size must be positive"):
        ScanCursor(b"", b"", page_size=0)


class Truth:
    """Regions (split at random between pages) over a sorted list of keys."""

    def __init__(self, bounds: list[bytes], keys: list[bytes]) -> None:
        self.bounds = sorted(set(bounds) - {b""})
        self.keys = sorted(set(keys))

    def regions(self) -> list[Region]:
        edges = [b"", *self.bounds, b""]
        return [region(i + 1, edges[i], edges[i + 1], stores=()) for i in range(len(edges) - 1)]

    def holding(self, key: bytes) -> Region:
        return next(r for r in self.regions() if r.contains(key))

    def before(self, end: bytes) -> Region:
        return next(r for r in self.regions() if holds_keys_before(r, end))

    def scan(self, lo: bytes, hi: bytes, limit: int, reverse: bool) -> list[tuple[bytes, bytes]]:
        ks = [k for k in self.keys if lo <= k and (not hi or k < hi)]
        if reverse:
            ks.reverse()
        return [(k, b"") for k in ks[:limit]]

    def split(self, key: bytes) -> None:
        if key:
            self.bounds = sorted({*self.bounds, key})


keys_st = st.lists(st.binary(min_size=1, max_size=3), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    bounds=keys_st,
    keys=keys_st,
    splits=keys_st,
    start=st.binary(max_size=2),
    end=st.binary(max_size=2),
    page=st.integers(1, 6),
    limit=st.one_of(st.none(), st.integers(1, 50)),
    reverse=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_a_scan_returns_every_key_once_in_order_across_splits(
    bounds: list[bytes],
    keys: list[bytes],
    splits: list[bytes],
    start: bytes,
    end: bytes,
    page: int,
    limit: int | None,
    reverse: bool,
    seed: int,
) -> None:
    truth = Truth(bounds, keys)
    rng = random.Random(seed)
    expected = [k for k in truth.keys if start <= k and (not end or k < end)]
    if reverse:
        expected.reverse()
    if end and end <= start:
        expected = []
    if limit is not None:
        expected = expected[:limit]
    cursor = ScanCursor(start, end, reverse, True, page, limit)
    got: list[bytes] = []
    pending = list(splits)
    for _ in range(10_000):
        if cursor.done:
            break
        r = truth.before(cursor.end) if reverse else truth.holding(cursor.start)
        lo, hi = cursor.page_range(r)
        assert r.contains(lo) and (not r.end_key or (hi and hi <= r.end_key))
        asked = cursor.page_limit()
        pairs = truth.scan(lo, hi, asked, reverse)
        cursor.advance(r, pairs, asked)
        got.extend(k for k, _ in pairs)
        if pending and rng.random() < 0.5:
            truth.split(pending.pop())
    assert cursor.done
    assert got == expected

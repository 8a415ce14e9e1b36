"""RegionTree: unit tests, and a property test against a list model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvproto.metapb import Region, RegionId, ranges_overlap
from placement_driver.region_tree import RegionTree
from tests.factories import region


def test_find_uses_half_open_ranges_and_open_ends() -> None:
    tree = RegionTree()
    tree.put(region(1, b"", b"b"))
    tree.put(region(2, b"b", b"d"))
    tree.put(region(3, b"f", b""))
    assert tree.find(b"") == region(1, b"", b"b")
    assert tree.find(b"a\xff") == region(1, b"", b"b")
    assert tree.find(b"b") == region(2, b"b", b"d")
    assert tree.find(b"d") is None  # a gap
    assert tree.find(b"e") is None
    assert tree.find(b"f") == region(3, b"f", b"")
    assert tree.find(b"\xff" * 10) == region(3, b"f", b"")


def test_put_replaces_the_same_id_and_removes_overlaps() -> None:
    tree = RegionTree()
    tree.put(region(1, b"", b"m"))
    tree.put(region(2, b"m", b""))
    # Region 1 grows over region 2 (a merge, as the PD would see it).
    removed = tree.put(region(1, b"", b"", version=3))
    assert removed == [region(2, b"m", b"")]
    assert list(tree) == [region(1, b"", b"", version=3)]
    assert tree.get(RegionId(2)) is None
    tree.check_invariants()


def test_put_of_a_narrower_range_leaves_a_gap() -> None:
    tree = RegionTree()
    tree.put(region(1))
    # The left half of a split arrives before the right half.
    assert tree.put(region(1, b"", b"k", version=2)) == []
    assert tree.find(b"k") is None
    assert len(tree) == 1


def test_scan_returns_overlapping_regions_in_order_up_to_the_limit() -> None:
    tree = RegionTree()
    for i, (start, end) in enumerate([(b"", b"c"), (b"c", b"f"), (b"f", b"k"), (b"k", b"")]):
        tree.put(region(i + 1, start, end))
    ids = [r.id for r in tree.scan(b"d", b"g")]
    assert ids == [2, 3]
    assert [r.id for r in tree.scan(b"c", b"f")] == [2]
    assert [r.id for r in tree.scan(b"", b"")] == [1, 2, 3, 4]
    assert [r.id for r in tree.scan(b"a", b"", limit=2)] == [1, 2]
    assert [r.id for r in tree.scan(b"z")] == [4]


def test_put_refuses_an_empty_range() -> None:
    with pytest.raises(ValueError, match="empty range"):
        RegionTree().put(region(1, b"b", b"b"))


# -- property test against a list model --------------------------------------------

KEYS = [b"", b"a", b"b", b"c", b"d", b"e"]


@st.composite
def regions(draw: st.DrawFn) -> Region:
    start = draw(st.sampled_from(KEYS))
    end = draw(st.sampled_from([k for k in KEYS if k > start] + [b""]))
    return region(draw(st.integers(1, 6)), start, end, version=draw(st.integers(1, 3)))


class ListModel:
    """Deliberately simple: a list scanned in full."""

    def __init__(self) -> None:
        self.regions: list[Region] = []

    def put(self, new: Region) -> list[Region]:
        removed = [r for r in self.regions if r.id != new.id and r.overlaps(new)]
        self.regions = [r for r in self.regions if r.id != new.id and not r.overlaps(new)]
        self.regions.append(new)
        return sorted(removed, key=lambda r: r.start_key)

    def find(self, key: bytes) -> Region | None:
        found = [r for r in self.regions if r.contains(key)]
        assert len(found) <= 1
        return found[0] if found else None

    def scan(self, start: bytes, end: bytes) -> list[Region]:
        hits = [r for r in self.regions if ranges_overlap(r.start_key, r.end_key, start, end)]
        return sorted(hits, key=lambda r: r.start_key)


@settings(max_examples=300, deadline=None)
@given(
    puts=st.lists(regions(), max_size=25),
    probes=st.lists(st.sampled_from([*KEYS, b"a0", b"\xff"]), min_size=1, max_size=5),
)
def test_tree_matches_the_list_model(puts: list[Region], probes: list[bytes]) -> None:
    tree, model = RegionTree(), ListModel()
    for r in puts:
        assert tree.put(r) == model.put(r)
        tree.check_invariants()
        assert sorted(tree, key=lambda r: r.start_key) == sorted(
            model.regions, key=lambda r: r.start_key
        )
    for key in probes:
        assert tree.find(key) == model.find(key)
        for end in [b"", *KEYS[1:]]:
            if end and end <= key:
                continue
            assert list(tree.scan(key, end)) == model.scan(key, end)

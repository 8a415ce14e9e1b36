"""The region cache: unit tests, and a hypothesis property test against a
deliberately simple model (a list of non-overlapping ranges, scanned
linearly). Pure: no trio, no clock."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from client.cache import CachedRegion, RegionCache
from kvproto import epoch
from kvproto.metapb import Region, StoreId, ranges_overlap
from tests.factories import learner, peer, peers, region


def ids(cache: RegionCache) -> list[int]:
    return [e.region.id for e in cache]


# -- unit tests -----------------------------------------------------------------


def test_lookup_finds_the_region_holding_a_key_by_bisect() -> None:
    c = RegionCache()
    assert c.lookup(b"a") is None
    for r in [region(1, b"", b"g"), region(2, b"g", b"p"), region(3, b"p", b"")]:
        assert c.insert(r)
    assert c.lookup(b"")
    assert c.lookup(b"a").region.id == 1  # type: ignore[union-attr]
    assert c.lookup(b"g").region.id == 2  # type: ignore[union-attr]
    assert c.lookup(b"o\xff").region.id == 2  # type: ignore[union-attr]
    assert c.lookup(b"zzz").region.id == 3  # type: ignore[union-attr]
    c.invalidate(2)
    assert c.lookup(b"h") is None
    assert c.lookup(b"p").region.id == 3  # type: ignore[union-attr]


def test_lookup_before_finds_where_a_reverse_scan_starts() -> None:
    c = RegionCache()
    c.insert(region(1, b"", b"g"))
    c.insert(region(3, b"p", b""))
    assert c.lookup_before(b"g").region.id == 1  # type: ignore[union-attr]
    assert c.lookup_before(b"c").region.id == 1  # type: ignore[union-attr]
    assert c.lookup_before(b"h") is None  # [g, p) is not cached
    assert c.lookup_before(b"p") is None
    assert c.lookup_before(b"q").region.id == 3  # type: ignore[union-attr]
    assert c.lookup_before(b"").region.id == 3  # type: ignore[union-attr]
    c.invalidate(3)
    assert c.lookup_before(b"") is None


def test_a_newer_region_replaces_every_region_it_overlaps() -> None:
    c = RegionCache()
    c.insert(region(1, b"", b"c", version=3))
    c.insert(region(2, b"c", b"f", version=3))
    c.insert(region(3, b"f", b"", version=3))
    assert c.insert(region(4, b"b", b"g", version=4))  # a merge, say
    assert ids(c) == [4]
    c.check_invariants()


def test_a_stale_region_is_refused() -> None:
    c = RegionCache()
    c.insert(region(1, b"", b"m", version=2))
    c.insert(region(2, b"m", b"", version=2))
    # The PD still reports the region before the split.
    assert not c.insert(region(1, b"", b"", version=1))
    assert ids(c) == [1, 2]
    # Same region, older membership.
    c.insert(region(1, b"", b"m", version=2, conf_ver=5))
    assert not c.insert(region(1, b"", b"m", version=2, conf_ver=4))
    assert c.get(1).region.epoch.conf_ver == 5  # type: ignore[union-attr]
    # An empty range holds nothing.
    assert not c.insert(region(9, b"k", b"k"))


def test_a_failed_route_never_drops_a_newer_copy_of_its_region() -> None:
    c = RegionCache()
    old, new = region(1, b"", b"m", version=1), region(1, b"", b"m", version=2)
    c.insert(new)
    assert not c.invalidate_region(old)
    assert ids(c) == [1]
    assert c.invalidate_region(new)
    assert ids(c) == []


def test_refreshing_a_region_keeps_its_leader_hint_while_membership_holds() -> None:
    c = RegionCache()
    r = region(1, b"", b"")
    c.insert(r, r.peers[1])
    c.insert(r)
    assert c.get(1).leader == r.peers[1]  # type: ignore[union-attr]
    r2 = region(1, b"", b"", conf_ver=2)
    c.insert(r2)
    assert c.get(1).leader is None  # type: ignore[union-attr]


def test_epoch_not_match_regions_are_taken_with_the_responder_as_leader() -> None:
    c = RegionCache()
    c.insert(region(1, b"", b"", version=1), peers(1)[0])
    left, right = region(1, b"", b"m", version=2), region(7, b"m", b"", version=2)
    assert c.update_from_epoch_not_match([right, left], StoreId(2))
    assert ids(c) == [1, 7]
    assert c.get(1).leader == left.peers[1]  # type: ignore[union-attr]
    assert c.get(7).leader == right.peers[1]  # type: ignore[union-attr]
    # The same answer again (or an older one) changes nothing.
    assert not c.update_from_epoch_not_match([left, right], StoreId(2))
    assert not c.update_from_epoch_not_match([region(1, b"", b"", version=1)], StoreId(1))
    assert ids(c) == [1, 7]


def test_leader_hints_and_peer_choice() -> None:
    c = RegionCache()
    r = region(1, b"", b"")
    c.insert(r)
    assert not c.update_leader(1, peer(99, 9))
    assert c.update_leader(1, r.peers[2])
    entry = c.get(1)
    assert entry is not None
    assert entry.choose_peer() == r.peers[2]
    assert entry.choose_peer({StoreId(3)}) == r.peers[0]
    assert entry.choose_peer({StoreId(1), StoreId(3)}) == r.peers[1]
    assert entry.choose_peer({StoreId(1), StoreId(2), StoreId(3)}) is None
    assert entry.next_peer_after(r.peers[2]) == r.peers[0]
    assert c.invalidate_store(StoreId(3)) == 1
    assert entry.leader is None


def test_learners_are_never_chosen() -> None:
    r = region(1, peers=(learner(11, 1), peer(12, 2)))
    entry = CachedRegion(r)
    assert entry.choose_peer() == r.peers[1]
    assert entry.next_peer_after(r.peers[1]) == r.peers[1]


# -- the property test ------------------------------------------------------------

KEYS = [b"", b"a", b"b", b"c", b"d", b"e", b"f"]


@dataclass(frozen=True)
class Insert:
    region: Region


@dataclass(frozen=True)
class Invalidate:
    region_id: int


@st.composite
def regions(draw: st.DrawFn) -> Region:
    start = draw(st.sampled_from(KEYS))
    end = draw(st.sampled_from([b"", *[k for k in KEYS if k > start]]))
    return region(
        draw(st.integers(1, 6)),
        start,
        end,
        version=draw(st.integers(1, 4)),
        conf_ver=draw(st.integers(1, 3)),
    )


ops = st.lists(
    st.one_of(
        regions().map(Insert),
        st.integers(1, 6).map(Invalidate),
    ),
    max_size=40,
)


class Model:
    """Non-overlapping regions in a plain list; every query is a scan."""

    def __init__(self) -> None:
        self.regions: list[Region] = []

    def insert(self, new: Region) -> bool:
        if new.end_key and new.end_key <= new.start_key:
            return False
        hit = [
            r
            for r in self.regions
            if r.id == new.id or ranges_overlap(r.start_key, r.end_key, new.start_key, new.end_key)
        ]
        for r in hit:
            if r.id == new.id and epoch.is_stale(new.epoch, r.epoch):
                return False
            if r.id != new.id and new.epoch.version < r.epoch.version:
                return False
        self.regions = [r for r in self.regions if r not in hit] + [new]
        return True

    def invalidate(self, region_id: int) -> None:
        self.regions = [r for r in self.regions if r.id != region_id]

    def lookup(self, key: bytes) -> Region | None:
        found = [r for r in self.regions if r.contains(key)]
        assert len(found) <= 1
        return found[0] if found else None

    def lookup_before(self, end: bytes) -> Region | None:
        for r in self.regions:
            if end and r.start_key < end and (not r.end_key or end <= r.end_key):
                return r
            if not end and not r.end_key:
                return r
        return None


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_cache_behaves_like_a_list_of_non_overlapping_ranges(
    steps: list[Insert | Invalidate],
) -> None:
    cache, model = RegionCache(), Model()
    for step in steps:
        if isinstance(step, Insert):
            assert cache.insert(step.region) == model.insert(step.region)
        else:
            cache.invalidate(step.region_id)
            model.invalidate(step.region_id)
        cache.check_invariants()
        assert [e.region for e in cache] == sorted(model.regions, key=lambda r: r.start_key)
        for key in [*KEYS, b"a\x00", b"zz"]:
            got = cache.lookup(key)
            assert (got.region if got else None) == model.lookup(key)
            got = cache.lookup_before(key)
            assert (got.region if got else None) == model.lookup_before(key)
        for r in model.regions:
            assert cache.get(r.id) is not None

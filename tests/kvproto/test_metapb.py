"""Key ranges and region/store helpers, checked against a simple model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvproto.metapb import (
    Peer,
    PeerId,
    PeerRole,
    Region,
    RegionEpoch,
    StoreId,
    key_in_range,
    ranges_overlap,
)
from tests import factories

# A small key universe makes overlaps and boundaries common. Every range
# bound is drawn from it, so it holds every key that can witness an overlap
# (the larger start key does, if any key does).
UNIVERSE = sorted(
    {bytes(k) for n in range(4) for k in __import__("itertools").product(b"ab", repeat=n)}
)
keys = st.sampled_from(UNIVERSE)

INF = None  # the model's +infinity


def model_end(end: bytes) -> bytes | None:
    return INF if end == b"" else end


def model_in(key: bytes, start: bytes, end: bytes) -> bool:
    # The model spells the rule out: start is inclusive, end exclusive, an
    # empty end is +infinity.
    upper = model_end(end)
    return start <= key and (upper is INF or key < upper)


@given(keys, keys, keys)
def test_key_in_range_matches_the_model(key: bytes, start: bytes, end: bytes) -> None:
    assert key_in_range(key, start, end) == model_in(key, start, end)


@given(keys, keys, keys, keys)
def test_ranges_overlap_iff_some_key_is_in_both(
    a_start: bytes, a_end: bytes, b_start: bytes, b_end: bytes
) -> None:
    witness = any(model_in(k, a_start, a_end) and model_in(k, b_start, b_end) for k in UNIVERSE)
    assert ranges_overlap(a_start, a_end, b_start, b_end) == witness
    assert ranges_overlap(b_start, b_end, a_start, a_end) == witness


def test_empty_keys_are_the_ends_of_the_key_space() -> None:
    assert key_in_range(b"", b"", b"")
    assert key_in_range(b"\xff" * 100, b"", b"")
    assert not key_in_range(b"", b"a", b"")
    assert not key_in_range(b"b", b"a", b"b")
    assert ranges_overlap(b"", b"", b"x", b"y")
    assert not ranges_overlap(b"", b"m", b"m", b"")
    assert not ranges_overlap(b"k", b"k", b"", b"")  # an empty range


def _region() -> Region:
    """Voter 11 on store 1, learner 12 on store 2."""
    return factories.region(1, b"b", b"m", conf_ver=2, version=3, stores=(1,), learners=(2,))


def test_region_finds_its_peers_by_store_and_id() -> None:
    region = _region()
    assert region.contains(b"b") and region.contains(b"lzz") and not region.contains(b"m")
    assert region.peer_on_store(StoreId(2)) == Peer(PeerId(12), StoreId(2), PeerRole.LEARNER)
    assert region.peer_on_store(StoreId(9)) is None
    assert region.find_peer(PeerId(11)) == Peer(PeerId(11), StoreId(1))
    assert region.find_peer(PeerId(99)) is None
    learner = region.find_peer(PeerId(12))
    assert learner is not None and learner.is_learner


def test_region_with_helpers_return_changed_copies() -> None:
    region = _region()
    promoted = region.with_peer(Peer(PeerId(12), StoreId(2), PeerRole.VOTER))
    assert [p.role for p in promoted.peers] == [PeerRole.VOTER, PeerRole.VOTER]
    added = region.with_peer(Peer(PeerId(13), StoreId(3)))
    assert [p.id for p in added.peers] == [11, 12, 13]
    assert [p.id for p in region.without_peer(PeerId(11)).peers] == [12]
    assert region.with_epoch(RegionEpoch(9, 9)).epoch == RegionEpoch(9, 9)
    assert region.with_range(b"", b"").contains(b"zzz")
    assert region.overlaps(region.with_range(b"l", b"z"))
    assert not region.overlaps(region.with_range(b"m", b""))
    assert region == _region()  # unchanged


def test_store_labels() -> None:
    store = factories.store(1, labels=(("zone", "z1"), ("host", "h1")))
    assert store.label("zone") == "z1"
    assert store.label("rack") is None

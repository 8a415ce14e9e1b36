"""The PD's region tree: regions by start key, without overlaps.

Pure data structure: no I/O, no clock. It does not judge which of two
reports is newer (that is `regions.Regions`'s job, with the rules of
`kvproto.epoch`); `put` simply makes the given region the truth for its
range and id, removing whatever it overlaps.

Invariants (checked by `check_invariants`, property-tested against a list
model):

* no two regions overlap, and every region is non-empty
  (``start_key < end_key`` or ``end_key == b""``);
* `_by_start` and `_by_id` hold exactly the same regions.

Gaps are allowed: a range nobody has reported yet (or whose report was
replaced by a split's left half before the right half reported) has no
region.
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict

from kvproto.metapb import Region, RegionId, ranges_overlap

__all__ = ["RegionTree"]


class RegionTree:
    def __init__(self) -> None:
        # start_key -> region; lookups by bisect.
        self._by_start: SortedDict[bytes, Region] = SortedDict()
        self._by_id: dict[RegionId, Region] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Region]:
        """Every region in key order."""
        return iter(self._by_start.values())

    def get(self, region_id: RegionId) -> Region | None:
        return self._by_id.get(region_id)

    def find(self, key: bytes) -> Region | None:
        """The region whose range contains `key`, if any."""
        i = self._by_start.bisect_right(key) - 1
        if i < 0:
            return None
        region: Region = self._by_start.values()[i]
        return region if region.contains(key) else None

    def overlapping(self, start_key: bytes, end_key: bytes) -> list[Region]:
        """The regions overlapping ``[start_key, end_key)`` (empty end:
        +infinity), in key order."""
        return list(self.scan(start_key, end_key))

    def scan(self, start_key: bytes, end_key: bytes = b"", limit: int = 0) -> Iterator[Region]:
        """Regions overlapping ``[start_key, end_key)`` in key order, at most
        `limit` of them (0: no limit)."""
        # Only the region just before `start_key` can begin left of it and
        # still overlap (the tree has no overlaps).
        i = max(self._by_start.bisect_right(start_key) - 1, 0)
        count = 0
        # islice walks from i lazily; values()[i:] built the whole tail (half
        # the tree per region heartbeat on average).
        by_start = self._by_start
        for key in by_start.islice(i):
            region = by_start[key]
            if end_key and region.start_key >= end_key:
                return
            if not ranges_overlap(region.start_key, region.end_key, start_key, end_key):
                continue
            yield region
            count += 1
            if count == limit:
                return

    def put(self, region: Region) -> list[Region]:
        """Make `region` the one region of its id and of its range: it
        replaces the entry of its id and removes every other region it
        overlaps. Returns those other regions, in key order."""
        if region.end_key and region.start_key >= region.end_key:
            raise ValueError(f"region {region.id} has an empty range")
        old = self._by_id.get(region.id)
        if old is not None:
            self._drop(old)
        removed = self.overlapping(region.start_key, region.end_key)
        for r in removed:
            self._drop(r)
        self._by_start[region.start_key] = region
        self._by_id[region.id] = region
        return removed

    def _drop(self, region: Region) -> None:
        del self._by_id[region.id]
        del self._by_start[region.start_key]

    def check_invariants(self) -> None:
        """Raise AssertionError if an invariant is broken (tests call it)."""
        assert len(self._by_start) == len(self._by_id)
        previous: Region | None = None
        for start, region in self._by_start.items():
            assert start == region.start_key
            assert self._by_id.get(region.id) is region
            assert not region.end_key or region.start_key < region.end_key
            if previous is not None:
                assert previous.end_key and previous.end_key <= region.start_key, (
                    f"regions {previous.id} and {region.id} overlap"
                )
            previous = region

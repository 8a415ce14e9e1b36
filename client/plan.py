"""Splitting requests by region, and walking scans region by region.

Pure: no I/O, no trio, no clock. Ranges are half-open ``[start, end)``; an
empty `end` is +infinity.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from kvproto.metapb import Region

__all__ = [
    "MAX_SCAN_PAGE",
    "Pair",
    "ScanCursor",
    "clip",
    "end_in_region",
    "holds_keys_before",
    "own_numbers",
    "range_is_empty",
]

T = TypeVar("T")

# A key and its value (b"" in a keys-only scan).
Pair = tuple[bytes, bytes]

# The most pairs a store returns in one scan response
# (store_node.kv_service.MAX_SCAN_LIMIT); a page never asks for more, so a
# short page means the region's part of the range is exhausted, unless the
# answer says `more` (cut at the store's byte bound).
MAX_SCAN_PAGE: Final = 10_000


def range_is_empty(start: bytes, end: bytes) -> bool:
    return bool(end) and end <= start


def clip(region: Region, start: bytes, end: bytes) -> tuple[bytes, bytes]:
    """The part of ``[start, end)`` inside `region` (the store refuses a
    range that is not inside the region it names). The caller makes sure
    they overlap."""
    lo = max(start, region.start_key)
    if not region.end_key:
        hi = end
    elif not end:
        hi = region.end_key
    else:
        hi = min(end, region.end_key)
    return lo, hi


def holds_keys_before(region: Region, end: bytes) -> bool:
    """Whether `region` holds the keys just below `end` (b"": +inf), i.e.
    ``start_key < end <= end_key``: where a reverse scan stopping before
    `end` starts."""
    if not end:
        return not region.end_key
    return region.start_key < end and (not region.end_key or end <= region.end_key)


def end_in_region(keys: Sequence[bytes], i: int, region: Region) -> int:
    """For sorted `keys` with ``keys[i]`` in `region`: the end j of the run
    ``keys[i:j]`` inside the region."""
    if not region.end_key:
        return len(keys)
    return bisect.bisect_left(keys, region.end_key, lo=i)


def own_numbers(regions: Sequence[int]) -> list[bool]:
    """For a write call's groups, in order (the region of each): whether a
    group takes a session number of its own. Every chunk of a region after
    its first does: under the call's number the region would answer it from
    the first chunk's record as a retry, and apply nothing of it. Groups in
    distinct regions share the call's number (each region keeps its own
    records)."""
    seen: set[int] = set()
    out = []
    for region in regions:
        out.append(region in seen)
        seen.add(region)
    return out


@dataclass(slots=True)
class ScanCursor:
    """Where a scan of ``[start, end)`` stands, region by region.

    Forward, the part still to read is ``[start, end)`` and grows from the
    left; reverse, it is ``[start, end)`` too and shrinks from the right.
    Each page asks the region holding the next key (`locate_key`, or for
    reverse scans the region holding the keys just below `end`) for at most
    `page_limit()` pairs of the clipped range, then `advance` moves past
    what was read. A page shorter than asked means the region's part is
    exhausted, so the cursor moves on to the next region: the store never
    returns fewer than asked unless nothing more is there (see
    MAX_SCAN_PAGE), or says so (`RawScanResponse.more`: it stopped at its
    byte bound). Every key is returned once, in order, whatever splits
    happen between pages.
    """

    start: bytes
    end: bytes
    reverse: bool = False
    keys_only: bool = False
    page_size: int = MAX_SCAN_PAGE
    # Pairs still wanted; None: no limit.
    remaining: int | None = None
    done: bool = False

    def __post_init__(self) -> None:
        if self.page_size <= 0:
            raise ValueError(f"page size must be positive, got {self.page_size}")
        if range_is_empty(self.start, self.end) or self.remaining == 0:
            self.done = True

    def page_limit(self) -> int:
        n = min(self.page_size, MAX_SCAN_PAGE)
        return n if self.remaining is None else min(n, self.remaining)

    def page_range(self, region: Region) -> tuple[bytes, bytes]:
        """The range to ask `region` for."""
        return clip(region, self.start, self.end)

    def advance(
        self, region: Region, pairs: Sequence[Pair], asked: int, *, more: bool = False
    ) -> None:
        """Move past a page of `pairs` read from `region` (asked for `asked`;
        `more`: the store cut the page short at its byte bound)."""
        if self.remaining is not None:
            self.remaining -= len(pairs)
            if self.remaining <= 0:
                self.done = True
                return
        if len(pairs) >= asked or (more and pairs):
            # Maybe more in this region: continue right after the last key.
            last = pairs[-1][0]
            if self.reverse:
                self.end = last
            else:
                self.start = last + b"\x00"
        elif self.reverse:
            if region.start_key <= self.start:
                self.done = True
                return
            self.end = region.start_key
        else:
            if not region.end_key or (self.end and region.end_key >= self.end):
                self.done = True
                return
            self.start = region.end_key
        if range_is_empty(self.start, self.end):
            self.done = True

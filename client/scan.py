"""Scans, a page at a time, region by region.

A `client.plan.ScanCursor` says where a scan stands; `next_page` asks the
region holding its next key (for a reverse scan: the keys just below its
end) for the next page of the clipped range, read in the scan's
`ReadMode`, and moves the cursor past it. `ScanIterator` is the async
iterator of `Client.scan_iter`.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Protocol

from client.attempts import Attempts
from client.plan import Pair, ScanCursor
from client.reads import STRONG_READ, ReadMode, ReadResult
from client.sender import RequestSender
from kvproto import kvrpcpb as kv

__all__ = ["ScanIterator", "ScanPages", "next_filled_page", "next_page"]


async def next_page(
    sender: RequestSender, att: Attempts, cursor: ScanCursor, mode: ReadMode = STRONG_READ
) -> ReadResult[list[Pair]]:
    """Read the next page of a scan (maybe empty: a region without keys
    in the range) and advance the cursor past it."""
    while True:
        if cursor.reverse:
            entry = await sender.regions.locate_before(att, cursor.end, cursor.start)
        else:
            entry = await sender.regions.locate(att, cursor.start)
        lo, hi = cursor.page_range(entry.region)
        limit = cursor.page_limit()
        resp = await sender.call(
            att,
            entry,
            partial(
                kv.RawScanRequest,
                start_key=lo,
                end_key=hi,
                limit=limit,
                reverse=cursor.reverse,
                keys_only=cursor.keys_only,
                consistency=mode.wire,
                max_staleness_ms=mode.max_staleness_ms,
            ),
            kv.RawScanResponse,
        )
        if resp is None:
            continue
        pairs = list(resp.pairs)
        cursor.advance(entry.region, pairs, limit, more=resp.more)
        return ReadResult(pairs, resp.staleness_ms / 1000)


async def next_filled_page(
    sender: RequestSender, att: Attempts, cursor: ScanCursor, mode: ReadMode = STRONG_READ
) -> ReadResult[list[Pair]]:
    """The next non-empty page (empty once the cursor is done), with the
    largest staleness of the pages read for it."""
    staleness = 0.0
    while not cursor.done:
        page = await next_page(sender, att, cursor, mode)
        staleness = max(staleness, page.staleness)
        if page.value:
            return ReadResult(page.value, staleness)
    return ReadResult([], staleness)


class ScanPages(Protocol):
    """Where a ScanIterator gets its pages (`client.Client` has it)."""

    async def next_scan_page(
        self,
        cursor: ScanCursor,
        what: str,
        *,
        mode: ReadMode = STRONG_READ,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ReadResult[list[Pair]]: ...


class ScanIterator:
    """The async iterator of `Client.scan_iter`: pairs in order, fetched a
    page at a time, each read in `mode`."""

    def __init__(
        self,
        client: ScanPages,
        cursor: ScanCursor,
        what: str,
        timeout: float | None,
        mode: ReadMode = STRONG_READ,
    ) -> None:
        self._client = client
        self._cursor = cursor
        self._what = what
        self._timeout = timeout
        self._mode = mode
        self._buffer: deque[Pair] = deque()
        self._staleness = 0.0

    @property
    def staleness(self) -> float:
        """How stale the pairs returned so far may be (seconds; the
        stalest page's, see `client.reads.ReadResult`): 0 unless the scan
        reads "stale"."""
        return self._staleness

    def __aiter__(self) -> ScanIterator:
        return self

    async def __anext__(self) -> Pair:
        if not self._buffer:
            page = await self.next_page()
            if not page:
                raise StopAsyncIteration
            self._buffer.extend(page)
        return self._buffer.popleft()

    async def next_page(self) -> list[Pair]:
        """The pairs not yet returned of the current page, else the next
        page; empty once the scan is done."""
        if self._buffer:
            rest = list(self._buffer)
            self._buffer.clear()
            return rest
        page = await self._client.next_scan_page(
            self._cursor, self._what, mode=self._mode, timeout=self._timeout
        )
        self._staleness = max(self._staleness, page.staleness)
        return page.value

"""Batch and range calls, fanned out per region.

A batch call's sorted items are grouped by the region of their keys and
cut into chunks of at most `batch_max_keys` keys or `batch_max_bytes`
bytes (`plumbing.batches.chunks`); the groups are sent concurrently, and a
region error re-splits only the group that got it. A range is cut at region
boundaries the same way (delete_range). The first error of a group cancels
the others and is raised as itself. A write's groups carry the call's
session number, but a region's second and later chunks a number each of
their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

import trio

from client.attempts import Attempts
from client.cache import CachedRegion
from client.checks import describe_group
from client.errors import ClientError, describe_range
from client.plan import Pair, clip, end_in_region, own_numbers
from client.retry import Answer
from client.sender import RequestSender
from kvproto import kvrpcpb as kv
from plumbing.batches import chunks

__all__ = [
    "delete_range",
    "fan_out",
    "for_each_region",
    "own_key",
    "pair_key",
    "pair_size",
    "split_keys",
    "split_range",
]

T = TypeVar("T")
A = TypeVar("A", bound=Answer)

# A group's request, made anew for each attempt: (the group's retry state,
# its items, the region and peer) -> request.
GroupRequest = Callable[[Attempts, Sequence[T], kv.Context], object]


def own_key(k: bytes) -> bytes:
    """The key of a key item (batch_get, batch_delete)."""
    return k


def pair_key(p: Pair) -> bytes:
    return p[0]


def pair_size(p: Pair) -> int:
    return len(p[0]) + len(p[1])


def _ignore(_: object) -> None:
    pass


# -- batches of keys ------------------------------------------------------------


async def for_each_region(
    sender: RequestSender,
    att: Attempts,
    items: Sequence[T],
    key_of: Callable[[T], bytes],
    size_of: Callable[[T], int],
    request_for: GroupRequest[T],
    ans: type[A],
    take: Callable[[A], None] = _ignore,
    rest: Callable[[A, Sequence[T]], Sequence[T]] | None = None,
) -> None:
    """Send a request for every region group of sorted `items`,
    concurrently, each until answered; `take` gets every answer. A group
    whose routing was wrong is split again, and only it is retried. With
    `rest`, an answer may cover a group in part: `rest(answer, group)` is
    what it left, asked for next (a batch get cut at the store's byte
    bound)."""

    async def group_task(att: Attempts, entry: CachedRegion, group: Sequence[T]) -> None:
        while True:
            resp = await sender.call(att, entry, partial(request_for, att, group), ans)
            if resp is not None:
                take(resp)
                if rest is None:
                    return
                group = rest(resp, group)
                if not group:
                    return
                continue
            groups = await split_keys(sender, att, group, key_of, size_of)
            if len(groups) > 1:
                await fan_out_groups(att, groups)
                return
            entry, group = groups[0]

    async def numbered_task(att: Attempts, entry: CachedRegion, group: Sequence[T]) -> None:
        att.begin_request(att.session)
        try:
            await group_task(att, entry, group)
        finally:
            att.end_request()

    async def fan_out_groups(
        att: Attempts, groups: list[tuple[CachedRegion, Sequence[T]]], first: bool = False
    ) -> None:
        if len(groups) == 1:
            await group_task(att, *groups[0])
            return
        op = att.what.split(" ", 1)[0]
        jobs = []
        # (A re-split group, within the limits, gives at most one group per
        # region: numbers of their own at the first split only.)
        owns = own_numbers([e.region.id for e, _ in groups])
        for (e, g), apart in zip(groups, owns, strict=True):
            child = att.child(describe_group(op, g, key_of))
            own = apart and first and child.session is not None
            jobs.append(partial(numbered_task if own else group_task, child, e, g))
        await fan_out(jobs)

    await fan_out_groups(att, await split_keys(sender, att, items, key_of, size_of), first=True)


async def split_keys(
    sender: RequestSender,
    att: Attempts,
    items: Sequence[T],
    key_of: Callable[[T], bytes],
    size_of: Callable[[T], int],
) -> list[tuple[CachedRegion, Sequence[T]]]:
    """Sorted `items` grouped by the region of their keys, in chunks."""
    keys = [key_of(i) for i in items]
    config = sender.config
    groups: list[tuple[CachedRegion, Sequence[T]]] = []
    i = 0
    while i < len(items):
        entry = await sender.regions.locate(att, keys[i], keys[-1] + b"\x00")
        j = end_in_region(keys, i, entry.region)
        for chunk in chunks(items[i:j], config.batch_max_keys, config.batch_max_bytes, size_of):
            groups.append((entry, chunk))
        i = j
    return groups


async def fan_out(jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run the jobs concurrently; the first ClientError (in job order)
    cancels the others and is raised as itself."""
    if len(jobs) == 1:
        await jobs[0]()
        return
    failures: list[tuple[int, ClientError]] = []

    async def guard(i: int, job: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        try:
            await job()
        except ClientError as e:
            failures.append((i, e))
            scope.cancel()

    async with trio.open_nursery() as nursery:
        for i, job in enumerate(jobs):
            nursery.start_soon(guard, i, job, nursery.cancel_scope)
    if failures:
        raise min(failures, key=lambda f: f[0])[1]


# -- ranges ---------------------------------------------------------------------


async def split_range(
    sender: RequestSender, att: Attempts, start: bytes, end: bytes
) -> list[tuple[CachedRegion, bytes, bytes]]:
    """``[start, end)`` cut at region boundaries: (region, part) in order."""
    parts: list[tuple[CachedRegion, bytes, bytes]] = []
    cur = start
    while True:
        entry = await sender.regions.locate(att, cur, end)
        lo, hi = clip(entry.region, cur, end)
        parts.append((entry, lo, hi))
        r_end = entry.region.end_key
        if not r_end or (end and r_end >= end):
            return parts
        cur = r_end


async def delete_range(sender: RequestSender, att: Attempts, start: bytes, end: bytes) -> None:
    """Delete ``[start, end)`` region by region, the parts concurrently (in
    the session request `att` already began)."""
    parts = await split_range(sender, att, start, end)
    await fan_out([partial(_delete_part, sender, att.child(att.what), *part) for part in parts])


async def _delete_part(
    sender: RequestSender, att: Attempts, entry: CachedRegion, lo: bytes, hi: bytes
) -> None:
    while True:
        resp = await sender.call(
            att, entry, partial(_delete_range_request, att, lo, hi), kv.RawWriteResponse
        )
        if resp is not None:
            return
        parts = await split_range(sender, att, lo, hi)
        if len(parts) > 1:
            what = f"delete_range {describe_range(lo, hi)}"
            await fan_out([partial(_delete_part, sender, att.child(what), *part) for part in parts])
            return
        entry, lo, hi = parts[0]


def _delete_range_request(
    att: Attempts, start: bytes, end: bytes, ctx: kv.Context
) -> kv.RawDeleteRangeRequest:
    return kv.RawDeleteRangeRequest(ctx, start, end, att.session_ref())

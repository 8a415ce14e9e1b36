"""Cutting a sequence into bounded batches (a client's batch calls, the
Raft transport's frames)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunks(
    items: Sequence[T], max_count: int, max_bytes: int, size: Callable[[T], int]
) -> list[Sequence[T]]:
    """Consecutive runs of `items`, each at most `max_count` long and
    `max_bytes` big (but at least one item)."""
    out: list[Sequence[T]] = []
    lo = 0
    nbytes = 0
    for i, item in enumerate(items):
        n = size(item)
        if i > lo and (i - lo >= max_count or nbytes + n > max_bytes):
            out.append(items[lo:i])
            lo, nbytes = i, 0
        nbytes += n
    if lo < len(items):
        out.append(items[lo:])
    return out

"""Cluster-unique ids, persisted in blocks ahead of use.

Rule (TiKV PD's allocator): ids are handed out from a block ``[next, end)``
whose upper bound `end` was made durable BEFORE the first id of the block
was handed out. After a restart allocation resumes at the persisted `end`:
ids only ever jump forward, so no id is handed out twice, even if the PD
crashed in the middle of a block (the rest of that block is skipped).

Pure: the bound is written through the `IdBoundWriter` seam, synchronously;
if it raises, nothing was handed out and the allocator is unchanged.
"""

from __future__ import annotations

from typing import Final, Protocol

__all__ = ["DEFAULT_ID_ALLOC_STEP", "IdAllocator", "IdBoundWriter"]

DEFAULT_ID_ALLOC_STEP: Final = 1000


class IdBoundWriter(Protocol):
    def save_id_bound(self, bound: int) -> None:
        """Durably record that no id below `bound` may be handed out again
        (returns once it is on disk)."""
        ...


class IdAllocator:
    """Hands out ids ``1, 2, 3, ...`` (0 means "no id" on the wire).

    Invariant: 1 <= next_id <= end, and `end` is durable.
    """

    def __init__(self, writer: IdBoundWriter, persisted_end: int, step: int) -> None:
        if step < 1:
            raise ValueError(f"id alloc step must be >= 1, got {step}")
        self._writer = writer
        self._step = step
        self._end = max(persisted_end, 1)
        # Resume at the persisted bound: the ids below it may have been
        # handed out before a restart.
        self._next = self._end

    @property
    def next_id(self) -> int:
        """The smallest id that may still be handed out; every id below it
        was handed out, skipped, or reserved by `skip_past`."""
        return self._next

    @property
    def end(self) -> int:
        """The durable upper bound (exclusive) of the current block."""
        return self._end

    def alloc(self, count: int = 1) -> range:
        """`count` fresh ids, consecutive and ascending. Persists a new
        bound first if the current block has too few ids left."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._ensure(self._next + count)
        ids = range(self._next, self._next + count)
        self._next += count
        return ids

    def skip_past(self, used_id: int) -> None:
        """Make sure `used_id` (an id chosen outside the allocator, e.g. by
        a bootstrap request) is never handed out."""
        if used_id >= self._next:
            self._ensure(used_id + 1)
            self._next = used_id + 1

    def _ensure(self, needed_end: int) -> None:
        if needed_end <= self._end:
            return
        # A block holds at least `step` ids, and at least the ids asked for.
        bound = max(needed_end, self._next + self._step)
        self._writer.save_id_bound(bound)  # durable before any id of the block is used
        self._end = bound

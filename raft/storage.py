"""The stable-storage seam of the Raft core, and an in-memory implementation.

The core only ever *reads* stable storage; the application writes to it while
handling a `Ready` (append entries, set hard state, apply snapshot, compact)
and then calls `RaftNode.advance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raft.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from raft.types import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
)


class LogStorage(Protocol):
    """Read access to the durable log.

    Indexes form the half-open range `[first_index(), last_index() + 1)` of
    stored entries; `term(first_index() - 1)` (the compaction point) stays
    answerable. Reads outside that raise `CompactedError` (too low) or
    `UnavailableError` (too high).
    """

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in `[lo, hi)`, stopping early once `max_bytes` of payload is
        reached, but always returning at least one entry when `lo < hi`."""
        ...

    def term(self, index: int) -> int: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot; may raise
        `SnapshotTemporarilyUnavailableError` while one is being built."""
        ...


def entry_size(e: Entry) -> int:
    """The byte size used for batching limits: payload plus a fixed overhead."""
    return len(e.data) + 16


def limit_size(ents: Sequence[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of `ents` within `max_bytes` (at least one entry)."""
    if max_bytes is None or not ents:
        return list(ents)
    total = entry_size(ents[0])
    n = 1
    while n < len(ents):
        total += entry_size(ents[n])
        if total > max_bytes:
            break
        n += 1
    return list(ents[:n])


class MemoryStorage:
    """`LogStorage` held in memory: for tests, the simulator and benchmarks.

    Invariant: `self._ents[0]` is a dummy entry carrying the index and term of
    the compaction point (the snapshot); real entries follow contiguously.
    """

    def __init__(self) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    # -- LogStorage --------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (first is {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last is {self.last_index()}")
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"term of compacted index {index}")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"term of index {index} beyond {self.last_index()}")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes (the application's side) ------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries, replacing any stored suffix they conflict with."""
        if not entries:
            return
        first = self.first_index()
        last = entries[0].index + len(entries) - 1
        if last < first:
            return  # all already compacted
        if first > entries[0].index:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise AssertionError(
                f"missing log entries: last {self.last_index()}, appending at {entries[0].index}"
            )
        del self._ents[offset:]
        self._ents.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with the snapshot's compaction point."""
        if snap.metadata.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {snap.metadata.index} is not newer than "
                f"{self._snapshot.metadata.index}"
            )
        self._snapshot = snap
        self._ents = [Entry(term=snap.metadata.term, index=snap.metadata.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record an application snapshot taken at applied `index`."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(f"snapshot at {index} is not newer")
        if index > self.last_index():
            raise AssertionError(f"snapshot index {index} beyond last {self.last_index()}")
        meta = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf_state)
        self._snapshot = Snapshot(metadata=meta, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including `index`, which must be stored."""
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(f"index {index} already compacted")
        if index > self.last_index():
            raise AssertionError(f"compact {index} beyond last {self.last_index()}")
        keep = self._ents[index - offset :]
        self._ents = [Entry(term=keep[0].term, index=keep[0].index), *keep[1:]]

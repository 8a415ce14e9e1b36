"""The Raft log as the core sees it: stable storage plus an unstable tail.

Indexes: `[first_index(), last_index()]` are readable; `term()` also answers
for `first_index() - 1` (the compaction point). Entries up to `committed`
are known committed; up to `applying` were handed to the application (in a
Ready), up to `applied` it reported applied (`advance`).
Invariant: applied <= applying <= committed <= last_index().
"""

from __future__ import annotations

import logging

from raft.errors import CompactedError, UnavailableError
from raft.storage import LogStorage, limit_size
from raft.types import Entry, Snapshot

log = logging.getLogger(__name__)


class Unstable:
    """Entries (and at most one snapshot) not yet written to stable storage.

    `entries[i]` has index `offset + i`. A pending snapshot, if any, sits just
    before `offset`.
    """

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == i:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` (of `term`) are durable: drop them."""
        t = self.maybe_term(index)
        if t is None or t != term or index < self.offset:
            # The entry was replaced (or already stable) since it was handed
            # out: a newer Ready will carry its replacement.
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.metadata.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        first = ents[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif first <= self.offset:
            # Replace everything unstable; storage entries at >= first are
            # overwritten when this is persisted.
            self.offset = first
            self.entries = list(ents)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        if lo < self.offset or hi > self.offset + len(self.entries):
            raise AssertionError(
                f"unstable slice [{lo},{hi}) out of [{self.offset},"
                f"{self.offset + len(self.entries)})"
            )
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    __slots__ = ("applied", "applying", "committed", "max_applying_bytes", "storage", "unstable")

    def __init__(self, storage: LogStorage, max_applying_bytes: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the compaction point is committed and applied.
        self.committed = first - 1
        self.applied = first - 1
        self.applying = first - 1
        self.max_applying_bytes = max_applying_bytes

    def describe(self) -> str:
        return (
            f"committed={self.committed} applied={self.applied} "
            f"unstable.offset={self.unstable.offset} len(unstable)={len(self.unstable.entries)}"
        )

    # -- indexes and terms ---------------------------------------------------

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def stable_last_index(self) -> int:
        """The last index known durable (the leader's own acknowledgement)."""
        return self.unstable.offset - 1

    def term(self, i: int) -> int:
        """Term of entry `i`; raises CompactedError / UnavailableError."""
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        if i < self.first_index() - 1:
            raise CompactedError(f"index {i} is compacted")
        if i > self.last_index():
            raise UnavailableError(f"index {i} is beyond {self.last_index()}")
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, i: int, term: int) -> bool:
        try:
            return self.term(i) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (last_index, term) is at least as up to date
        as ours (Raft §5.4.1)."""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # -- appending -----------------------------------------------------------

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: tuple[Entry, ...]
    ) -> int | None:
        """Append `ents` after (index, log_term) if that entry matches.

        Returns the last index of the new entries, or None on mismatch.
        Commits up to min(committed, that last index): never beyond what the
        leader has shown us to match.
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise AssertionError(
                    f"entry {ci} conflicts with committed entry (committed={self.committed})"
                )
            self.append(list(ents[ci - index - 1 :]))
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise AssertionError(f"append after {after} is below committed {self.committed}")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or conflicts, 0 if none."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (i, t) with i <= index and t <= term in our log, for the
        fast back-off of rejected appends. Stops at the compaction point."""
        while index > 0:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    # -- reading -------------------------------------------------------------

    def entries(self, lo: int, max_bytes: int | None = None) -> list[Entry]:
        last = self.last_index()
        if lo > last:
            return []
        return self.slice(lo, last + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), limited by size; raises CompactedError."""
        if lo > hi:
            raise AssertionError(f"invalid slice {lo} > {hi}")
        fi = self.first_index()
        if lo < fi:
            raise CompactedError(f"slice from {lo} below first index {fi}")
        if hi > self.last_index() + 1:
            raise AssertionError(f"slice [{lo},{hi}) beyond last index {self.last_index()}")
        if lo == hi:
            return []
        ents: list[Entry] = []
        u_off = self.unstable.offset
        if lo < u_off:
            stored = self.storage.entries(lo, min(hi, u_off), max_bytes)
            # Storage stopped early (size limit): don't add unstable entries.
            if len(stored) < min(hi, u_off) - lo:
                return stored
            ents = stored
        if hi > u_off:
            ents = ents + self.unstable.slice(max(lo, u_off), hi)
        return limit_size(ents, max_bytes)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_next_committed_entries(self) -> bool:
        if self.unstable.snapshot is not None:
            return False
        return self.committed > self.applied

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet handed to the application (none while a
        snapshot awaits installation, since they would follow it)."""
        if not self.has_next_committed_entries():
            return []
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.committed + 1, self.max_applying_bytes)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- moving the marks ----------------------------------------------------

    def commit_to(self, to: int) -> None:
        if to > self.committed:
            if to > self.last_index():
                raise AssertionError(f"commit {to} beyond last index {self.last_index()}")
            self.committed = to

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit `max_index` if it is of the current `term` (Raft §5.4.2:
        a leader never commits an older term's entry by counting replicas)."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if i > self.committed or i < self.applied:
            raise AssertionError(
                f"applied {i} out of range [applied={self.applied}, committed={self.committed}]"
            )
        self.applied = i
        self.applying = max(self.applying, i)

    def applying_to(self, i: int) -> None:
        """Entries up to `i` were handed to the application to apply."""
        if i > self.committed or i < self.applying:
            raise AssertionError(
                f"applying {i} out of range [applying={self.applying}, committed={self.committed}]"
            )
        self.applying = i

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snap: Snapshot) -> None:
        """Replace the log with a snapshot (installed by the application)."""
        log.debug("log restored to snapshot at %d/%d", snap.metadata.index, snap.metadata.term)
        self.committed = snap.metadata.index
        self.unstable.restore(snap)

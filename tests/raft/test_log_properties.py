"""Property tests of the log (raft.log.RaftLog over raft.storage.MemoryStorage)
against a deliberately simple model: a compaction point plus a plain list
of (term, data) entries."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from raft import CompactedError, Entry, MemoryStorage, Snapshot, SnapshotMetadata, UnavailableError
from raft.log import RaftLog
from raft.storage import entry_size


def data_of(term: int, index: int, size: int = 0) -> bytes:
    # The same (term, index) always carries the same data (Log Matching).
    base = f"{term}.{index}".encode()
    return base + b"x" * size


@dataclass
class Model:
    """The log as a list: entry i (snap_index < i <= last) is ents[i - snap_index - 1]."""

    snap_index: int = 0
    snap_term: int = 0
    ents: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.snap_index + 1

    @property
    def last(self) -> int:
        return self.snap_index + len(self.ents)

    def term(self, i: int) -> int | None:
        if i == self.snap_index:
            return self.snap_term
        if self.snap_index < i <= self.last:
            return self.ents[i - self.first][0]
        return None

    def entries(self, lo: int, hi: int) -> list[tuple[int, int, bytes]]:
        return [
            (self.ents[i - self.first][0], i, self.ents[i - self.first][1]) for i in range(lo, hi)
        ]


def as_tuples(ents: list[Entry]) -> list[tuple[int, int, bytes]]:
    return [(e.term, e.index, e.data) for e in ents]


@st.composite
def logs(draw: st.DrawFn, max_len: int = 10) -> tuple[Model, int, int]:
    """A model log, how much of it is stable, and its commit index."""
    snap_index = draw(st.integers(0, 5))
    snap_term = draw(st.integers(1, 3)) if snap_index else 0
    n = draw(st.integers(0, max_len))
    terms = sorted(draw(st.lists(st.integers(max(snap_term, 1), 6), min_size=n, max_size=n)))
    sizes = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    m = Model(snap_index, snap_term)
    for k, (t, size) in enumerate(zip(terms, sizes, strict=True)):
        m.ents.append((t, data_of(t, snap_index + 1 + k, size)))
    stable = draw(st.integers(0, n))
    committed = draw(st.integers(snap_index, snap_index + stable))
    return m, stable, committed


def build(m: Model, stable: int, committed: int) -> RaftLog:
    storage = MemoryStorage()
    if m.snap_index:
        meta = SnapshotMetadata(index=m.snap_index, term=m.snap_term)
        storage.apply_snapshot(Snapshot(metadata=meta))
    ents = [Entry(term=t, index=i, data=d) for t, i, d in m.entries(m.first, m.last + 1)]
    storage.append(ents[:stable])
    log = RaftLog(storage)
    log.append(ents[stable:])
    log.commit_to(committed)
    return log


def persist(log: RaftLog) -> None:
    """What the driver does with a Ready's entries, then advance()."""
    storage = log.storage
    assert isinstance(storage, MemoryStorage)
    ents = log.unstable_entries()
    storage.append(ents)
    if ents:
        log.stable_to(ents[-1].index, ents[-1].term)


def check_same(log: RaftLog, m: Model) -> None:
    assert log.first_index() == m.first
    assert log.last_index() == m.last
    assert as_tuples(log.entries(m.first)) == m.entries(m.first, m.last + 1)
    for i in range(m.snap_index, m.last + 1):
        assert log.term(i) == m.term(i)


@given(logs())
def test_a_log_reads_back_what_was_stored_and_appended(args: tuple[Model, int, int]) -> None:
    m, stable, committed = args
    log = build(m, stable, committed)
    check_same(log, m)
    assert log.committed == committed
    if m.snap_index > 0:
        with pytest.raises(CompactedError):
            log.term(m.snap_index - 1)
    with pytest.raises(UnavailableError):
        log.term(m.last + 1)


@st.composite
def appends(draw: st.DrawFn, m: Model) -> tuple[int, int, list[Entry], int]:
    """An append message: previous (index, term), entries, leader commit."""
    prev = draw(st.integers(max(0, m.snap_index - 1), m.last + 2))
    known = m.term(prev)
    prev_term = draw(st.integers(0, 6)) if known is None or draw(st.booleans()) else known
    n = draw(st.integers(0, 5))
    terms = sorted(draw(st.lists(st.integers(max(prev_term, 1), 8), min_size=n, max_size=n)))
    ents = [
        Entry(term=t, index=prev + 1 + k, data=data_of(t, prev + 1 + k))
        for k, t in enumerate(terms)
    ]
    commit = draw(st.integers(0, prev + n + 2))
    return prev, prev_term, ents, commit


@given(st.data())
def test_maybe_append_matches_truncates_and_commits_like_the_model(data: st.DataObject) -> None:
    m, stable, committed = data.draw(logs())
    log = build(m, stable, committed)
    prev, prev_term, ents, leader_commit = data.draw(appends(m))

    # The model: check the previous entry, find the first new or
    # conflicting entry, truncate there and append the rest.
    if m.term(prev) != prev_term:
        event("previous entry does not match")
        assert log.maybe_append(prev, prev_term, leader_commit, tuple(ents)) is None
        check_same(log, m)
        assert log.committed == committed
        return
    conflict = next((e for e in ents if m.term(e.index) != e.term), None)
    if conflict is not None and conflict.index <= committed:
        event("conflict with a committed entry")
        # A leader never sends this: it would rewrite a committed entry.
        with pytest.raises(AssertionError):
            log.maybe_append(prev, prev_term, leader_commit, tuple(ents))
        return
    event("truncated and appended" if conflict is not None else "nothing new")
    if conflict is not None:
        del m.ents[conflict.index - m.first :]
        m.ents.extend((e.term, e.data) for e in ents if e.index >= conflict.index)
    last_new = prev + len(ents)
    assert log.maybe_append(prev, prev_term, leader_commit, tuple(ents)) == last_new
    check_same(log, m)
    assert log.committed == max(committed, min(leader_commit, last_new))
    # What the driver persists from the Ready ends up equal to the model too.
    persist(log)
    assert log.unstable_entries() == []
    s = log.storage
    assert as_tuples(s.entries(s.first_index(), s.last_index() + 1)) == m.entries(
        m.first, m.last + 1
    )


@given(st.data())
def test_find_conflict_by_term_finds_the_last_entry_not_newer_than_the_term(
    data: st.DataObject,
) -> None:
    m, stable, committed = data.draw(logs())
    log = build(m, stable, committed)
    index = data.draw(st.integers(0, m.last + 2))
    term = data.draw(st.integers(0, 8))

    expected = (0, 0)
    for i in range(index, 0, -1):
        t = m.term(i)
        if t is None:  # unknown (compacted or beyond the log): may match
            expected = (i, 0)
            break
        if t <= term:
            expected = (i, t)
            break
    assert log.find_conflict_by_term(index, term) == expected


def limit(
    ents: list[tuple[int, int, bytes]], max_bytes: int | None
) -> list[tuple[int, int, bytes]]:
    if max_bytes is None:
        return ents
    out: list[tuple[int, int, bytes]] = []
    total = 0
    for t, i, d in ents:
        total += entry_size(Entry(term=t, index=i, data=d))
        if out and total > max_bytes:
            break
        out.append((t, i, d))
    return out


@given(st.data())
def test_a_slice_is_the_longest_prefix_within_the_size_limit_and_never_empty(
    data: st.DataObject,
) -> None:
    m, stable, committed = data.draw(logs())
    log = build(m, stable, committed)
    lo = data.draw(st.integers(m.first, m.last + 1))
    hi = data.draw(st.integers(lo, m.last + 1))
    max_bytes = data.draw(st.none() | st.integers(0, 200))
    got = as_tuples(log.slice(lo, hi, max_bytes))
    assert got == limit(m.entries(lo, hi), max_bytes)
    assert (len(got) > 0) == (hi > lo)
    if m.snap_index > 0:
        with pytest.raises(CompactedError):
            log.slice(m.snap_index, hi, max_bytes)


@given(st.data())
def test_compaction_keeps_the_term_at_the_compaction_point(data: st.DataObject) -> None:
    m, _, _ = data.draw(logs())
    log = build(m, len(m.ents), m.snap_index)  # all stable
    if m.last <= m.snap_index:
        return
    point = data.draw(st.integers(m.first, m.last))
    storage = log.storage
    assert isinstance(storage, MemoryStorage)
    storage.compact(point)
    log = RaftLog(storage)  # a restarted node over the compacted log
    m.snap_term = m.term(point) or 0
    del m.ents[: point - m.snap_index]
    m.snap_index = point
    check_same(log, m)
    assert log.committed == log.applied == point
    with pytest.raises(CompactedError):
        log.term(point - 1)
    with pytest.raises(CompactedError):
        storage.entries(point, m.last + 1)
    with pytest.raises(CompactedError):
        storage.compact(point)


@given(st.data())
def test_storage_appends_replace_the_suffix_they_overlap(data: st.DataObject) -> None:
    m = Model()
    storage = MemoryStorage()
    for _ in range(data.draw(st.integers(1, 6))):
        start = data.draw(st.integers(1, m.last + 1))
        prev_term = m.term(start - 1) or 0
        n = data.draw(st.integers(0, 4))
        terms = sorted(
            data.draw(st.lists(st.integers(max(prev_term, 1), 9), min_size=n, max_size=n))
        )
        ents = [
            Entry(term=t, index=start + k, data=data_of(t, start + k)) for k, t in enumerate(terms)
        ]
        storage.append(ents)
        if ents:
            del m.ents[start - 1 :]
            m.ents.extend((e.term, e.data) for e in ents)
        assert storage.last_index() == m.last
        assert as_tuples(storage.entries(1, m.last + 1)) == m.entries(1, m.last + 1)
    if m.last >= 2:
        # An append reaching below the compaction point keeps only the rest.
        storage.compact(2)
        again = [Entry(term=t, index=i, data=d) for t, i, d in m.entries(1, m.last + 1)]
        storage.append(again)
        assert as_tuples(storage.entries(3, m.last + 1)) == m.entries(3, m.last + 1)
        with pytest.raises(UnavailableError):
            storage.entries(3, m.last + 2)

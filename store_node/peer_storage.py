"""A region's Raft log on the store's LMDB engine: the `LogStorage` of one peer.

Reads come from a small cache of recent entries or from `raft/`; writes are
not made here but added to the round's shared `WriteBatch` (group commit).
The in-memory marks (`last_index`, the cache, the hard state) move when a
write is *queued*: the Raft core reads its own unstable entries until the
driver calls `advance`, which happens only after the batch is durable, so it
never observes a queued-but-unwritten entry through this storage.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from raft.errors import CompactedError, SnapshotTemporarilyUnavailableError, UnavailableError
from raft.storage import entry_size, limit_size
from raft.types import ConfState, Entry, HardState, Snapshot
from store_node import keys
from store_node.engine import Engine, WriteBatch, scan_cursor
from store_node.records import (
    ApplyState,
    decode_entry,
    decode_hard_state,
    encode_entry,
    encode_hard_state,
    entry_term,
)
from store_node.snapshot import descriptor_of

# The first index of a region created by bootstrap or split: entries below it
# are implied by the initial kv state (TiKV's RAFT_INIT_LOG_INDEX).
RAFT_INIT_LOG_INDEX = 5
RAFT_INIT_LOG_TERM = 5


class EntryCache:
    """The most recent entries of one region, contiguous, bounded in size."""

    __slots__ = ("_bytes", "_ents", "max_bytes", "max_entries")

    def __init__(self, max_entries: int = 1024, max_bytes: int = 4 << 20) -> None:
        self._ents: deque[Entry] = deque()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def first_index(self) -> int | None:
        return self._ents[0].index if self._ents else None

    def append(self, ents: Sequence[Entry]) -> None:
        if not ents:
            return
        first = ents[0].index
        if self._ents:
            cache_first = self._ents[0].index
            cache_next = cache_first + len(self._ents)
            if first < cache_first or first > cache_next:
                self.clear()
            else:
                while self._ents and self._ents[-1].index >= first:
                    self._bytes -= entry_size(self._ents.pop())
        for e in ents:
            self._ents.append(e)
            self._bytes += entry_size(e)
        while self._ents and (len(self._ents) > self.max_entries or self._bytes > self.max_bytes):
            self._bytes -= entry_size(self._ents.popleft())

    def get(self, lo: int, hi: int) -> list[Entry] | None:
        """Entries [lo, hi) if all are cached."""
        if not self._ents:
            return None
        first = self._ents[0].index
        if lo < first or hi > first + len(self._ents):
            return None
        return [self._ents[i - first] for i in range(lo, hi)]

    def term(self, index: int) -> int | None:
        if not self._ents:
            return None
        first = self._ents[0].index
        if first <= index < first + len(self._ents):
            return self._ents[index - first].term
        return None

    def compact_to(self, index: int) -> None:
        """Drop entries up to and including `index`."""
        while self._ents and self._ents[0].index <= index:
            self._bytes -= entry_size(self._ents.popleft())

    def clear(self) -> None:
        self._ents.clear()
        self._bytes = 0


class LogSizes:
    """The stored size of every log entry of one region, as running sums
    (8 bytes an entry): the log's bytes, and any prefix's, in O(1), so that
    the size policy (`store_node.log_gc`) never scans the log.

    `_ends[i]` is the sum of the sizes of every entry up to `first + i`,
    counted from an origin that truncation moves past (`_start`)."""

    __slots__ = ("_ends", "_start", "first")

    def __init__(self, first: int) -> None:
        self.first = first  # the index of `_ends[0]`
        self._ends = array("Q")
        self._start = 0

    @property
    def total(self) -> int:
        return self._ends[-1] - self._start if self._ends else 0

    def up_to(self, index: int) -> int:
        """Bytes of the entries from `first` to `index` (inclusive)."""
        i = min(index - self.first, len(self._ends) - 1)
        return self._ends[i] - self._start if i >= 0 else 0

    def append(self, first: int, sizes: Sequence[int]) -> None:
        """Entries of these sizes stored from index `first` on, replacing
        any from there (`first` is at most one past the last)."""
        del self._ends[max(0, first - self.first) :]
        end = self._ends[-1] if self._ends else self._start
        for size in sizes:
            end += size
            self._ends.append(end)

    def truncate_to(self, index: int) -> None:
        """Entries up to `index` (inclusive) are gone."""
        n = min(max(0, index + 1 - self.first), len(self._ends))
        if n:
            self._start = self._ends[n - 1]
            del self._ends[:n]
        self.first = index + 1

    def reset(self, first: int) -> None:
        self._ends = array("Q")
        self._start = 0
        self.first = first


class PeerStorage:
    """`raft.LogStorage` for one region on one store.

    Invariant: apply_state.truncated_index < first stored log index, and
    the log holds every index in (truncated_index, last_index].
    """

    def __init__(
        self,
        engine: Engine,
        region_id: int,
        conf_state: ConfState,
        apply_state: ApplyState,
        hard_state: HardState | None = None,
        region_version: int = 0,
    ) -> None:
        self.engine = engine
        self.region_id = region_id
        self.conf_state = conf_state
        # The region's epoch version now (kept by the core, as conf_state).
        self.region_version = region_version
        self.apply_state = apply_state
        if hard_state is None:
            raw = engine.raft_get(keys.STATE_DB, keys.region_key(region_id))
            hard_state = decode_hard_state(raw) if raw is not None else HardState()
        self.hard_state = hard_state
        self.cache = EntryCache()
        self._last_index, self.last_term = self._load_last()
        # Stored bytes of every entry of the log (the log size policy).
        self.sizes = self._load_sizes()
        # The latest snapshot generated for followers, and its data file.
        self.generated: tuple[Snapshot, Path] | None = None
        # Set when the Raft core asked for a snapshot that is not built yet.
        self.wants_snapshot = False

    def _load_last(self) -> tuple[int, int]:
        prefix = keys.raft_log_prefix(self.region_id)
        end = keys.raft_log_prefix(self.region_id + 1)
        with self.engine.read_raft() as txn:
            for k, v in scan_cursor(
                txn, self.engine.raft_db(keys.LOG_DB), prefix, end, reverse=True
            ):
                e = decode_entry(bytes(v))
                if keys.raft_log_index(bytes(k)) != e.index:
                    raise AssertionError(f"log key and entry index disagree at {e.index}")
                if e.index > self.apply_state.truncated_index:
                    return e.index, e.term
                break  # only leftovers of an interrupted truncation remain
        return self.apply_state.truncated_index, self.apply_state.truncated_term

    def _load_sizes(self) -> LogSizes:
        first = self.apply_state.truncated_index + 1
        sizes = LogSizes(first)
        with self.engine.read_raft() as txn:
            sizes.append(
                first,
                [
                    len(v)
                    for _, v in scan_cursor(
                        txn,
                        self.engine.raft_db(keys.LOG_DB),
                        keys.raft_log_key(self.region_id, first),
                        keys.raft_log_key(self.region_id, self._last_index + 1),
                    )
                ],
            )
        return sizes

    @property
    def log_bytes(self) -> int:
        """Bytes of the stored log, as stored (headers included)."""
        return self.sizes.total

    # -- LogStorage -------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self.conf_state

    def first_index(self) -> int:
        return self.apply_state.truncated_index + 1

    def last_index(self) -> int:
        return self._last_index

    def term(self, index: int) -> int:
        a = self.apply_state
        if index == a.truncated_index:
            return a.truncated_term
        if index < a.truncated_index:
            raise CompactedError(f"region {self.region_id}: index {index} is truncated")
        if index > self._last_index:
            raise UnavailableError(
                f"region {self.region_id}: index {index} beyond last {self._last_index}"
            )
        if index == self._last_index:
            return self.last_term
        t = self.cache.term(index)
        if t is not None:
            return t
        # The record's header only: a large entry is not decoded for it.
        raw = self.engine.raft_get(keys.LOG_DB, keys.raft_log_key(self.region_id, index))
        if raw is None:
            raise AssertionError(f"region {self.region_id}: log hole at {index}")
        return entry_term(raw, index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self.apply_state.truncated_index:
            raise CompactedError(f"region {self.region_id}: index {lo} is truncated")
        if hi > self._last_index + 1:
            raise UnavailableError(
                f"region {self.region_id}: entries to {hi - 1} beyond last {self._last_index}"
            )
        if lo >= hi:
            return []
        cached = self.cache.get(lo, hi)
        if cached is not None:
            return limit_size(cached, max_bytes)
        return self._read(lo, hi, max_bytes)

    def _read(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        out: list[Entry] = []
        total = 0
        with self.engine.read_raft() as txn:
            for k, v in scan_cursor(
                txn,
                self.engine.raft_db(keys.LOG_DB),
                keys.raft_log_key(self.region_id, lo),
                keys.raft_log_key(self.region_id, hi),
            ):
                e = decode_entry(bytes(v))
                expected = lo + len(out)
                if e.index != expected or keys.raft_log_index(bytes(k)) != expected:
                    raise AssertionError(
                        f"region {self.region_id}: log hole at {expected} (found {e.index})"
                    )
                total += entry_size(e)
                if out and max_bytes is not None and total > max_bytes:
                    break
                out.append(e)
        if len(out) < hi - lo and (max_bytes is None or not out):
            raise AssertionError(f"region {self.region_id}: log missing entries in [{lo}, {hi})")
        return out

    def snapshot(self) -> Snapshot:
        """The generated snapshot if it still connects to our log (its index
        is at or past the truncation point) and has the current config and
        range; else ask for a new one."""
        if self.generated is not None:
            snap = self.generated[0]
            # A snapshot from before a conf change would not name a peer
            # added since, which then refuses it: only the current config.
            # One from before a split holds the old range, which overlaps
            # the split-off regions a follower may hold by now (made from
            # their own snapshots): it would be refused there for ever.
            if (
                snap.metadata.index >= self.apply_state.truncated_index
                and snap.metadata.conf_state == self.conf_state
                and descriptor_of(snap).region.epoch.version >= self.region_version
            ):
                return snap
        self.wants_snapshot = True
        raise SnapshotTemporarilyUnavailableError(
            f"region {self.region_id}: snapshot being generated"
        )

    # -- queued writes ---------------------------------------------------------

    def append(self, ents: Sequence[Entry], batch: WriteBatch) -> None:
        """Queue `ents`, replacing any stored entries from their first index on."""
        if not ents:
            return
        first = ents[0].index
        if first <= self.apply_state.truncated_index:
            raise AssertionError(
                f"region {self.region_id}: append at {first} below truncated "
                f"{self.apply_state.truncated_index}"
            )
        if first > self._last_index + 1:
            raise AssertionError(
                f"region {self.region_id}: append at {first} leaves a hole after {self._last_index}"
            )
        stored = [encode_entry(e) for e in ents]
        for e, raw in zip(ents, stored, strict=True):
            batch.put(keys.LOG_DB, keys.raft_log_key(self.region_id, e.index), raw)
        self.sizes.append(first, [len(raw) for raw in stored])
        last = ents[-1]
        if last.index < self._last_index:
            # Drop the stale suffix the new entries replace.
            batch.delete_range(
                keys.LOG_DB,
                keys.raft_log_key(self.region_id, last.index + 1),
                keys.raft_log_key(self.region_id, self._last_index + 1),
            )
        self.cache.append(ents)
        self._last_index = last.index
        self.last_term = last.term

    def set_hard_state(self, hs: HardState, batch: WriteBatch) -> None:
        batch.put(keys.STATE_DB, keys.region_key(self.region_id), encode_hard_state(hs))
        self.hard_state = hs

    def log_entries(self) -> int:
        return self._last_index - self.apply_state.truncated_index

    def truncate_to(self, index: int, term: int, batch: WriteBatch) -> None:
        """Truncate the log prefix up to (index, term): the apply state moves
        now; the deletion is queued in `batch`, which the caller writes only
        once the kv/ state recording the new truncation point is durable."""
        old = self.apply_state
        if not old.truncated_index < index <= old.applied_index:
            raise AssertionError(
                f"region {self.region_id}: truncate to {index} outside "
                f"({old.truncated_index}, {old.applied_index}]"
            )
        self.sizes.truncate_to(index)
        # From index 0: also sweeps leftovers of an interrupted earlier deletion.
        batch.delete_range(
            keys.LOG_DB,
            keys.raft_log_key(self.region_id, 0),
            keys.raft_log_key(self.region_id, index + 1),
        )
        self.cache.compact_to(index)
        self.apply_state = ApplyState(old.applied_index, index, term, old.applied_term)

    def reset_to_snapshot(self, index: int, term: int, batch: WriteBatch) -> None:
        """The log restarts after an installed snapshot at (index, term)."""
        self.clear_log(batch)
        self.apply_state = ApplyState(index, index, term, term)
        self._last_index, self.last_term = index, term
        self.sizes.reset(index + 1)

    def clear_log(self, batch: WriteBatch) -> None:
        """Queue deletion of the whole log (snapshot install or tombstone)."""
        batch.delete_range(
            keys.LOG_DB,
            keys.raft_log_prefix(self.region_id),
            keys.raft_log_prefix(self.region_id + 1),
        )
        self.cache.clear()

"""Exactly-once client writes: the session table of a region (Raft
dissertation, section 6.3).

A client opens a session (16 random bytes) and numbers its writes; every
attempt of one write carries the same number (`kvproto.kvrpcpb.SessionRef`).
Each region remembers, per session, the answers of the numbers it applied,
in `kv/` in the same transaction as the writes, so that a retry of an
applied write gets the stored answer and is not applied again: a retry after
a lost connection, a timeout, a leader change or a split is then safe, for
compare-and-set as much as for put.

Everything here runs inside the apply transaction and depends only on the
log and the region's table, never on a replica's own clock or settings:
every replica decides alike.

* Time is the log's: each command carries its leader's wall clock and the
  session time to live (`WriteCommand.time_ms`, `session_ttl_ms`). The
  region's clock is the highest time applied so far, so a leader with a
  slow clock cannot move it back.
* A session idle (no write in this region) for longer than the time to live
  is forgotten at the next sweep (every ttl/8 of log time, at most).
* Memory is bounded: at most `MAX_SESSIONS` per region (the least recently
  active are forgotten first) and at most `WINDOW` answers per session (the
  client's `acked_below` lets the region forget answered ones sooner).
* The horizon: the latest last-active time of any session this region
  forgot. A retry (`SessionRef.retry`: an earlier attempt may have applied)
  in a session the region does not know is refused with SESSION_EXPIRED
  when the session was opened before the horizon (plus a clock-skew
  margin): it may be one the region forgot, whose earlier attempt applied
  here. A first attempt, or a session opened after the horizon, is new here.
* A number below the session's floor (its answer was forgotten) is refused
  with SESSION_EXPIRED too. Refused means not applied now; the client then
  reports the outcome as unknown (an earlier attempt may have applied).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace

from kvproto import codec
from kvproto.kvrpcpb import KvError, KvErrorCode, SessionRef
from kvproto.raft_cmdpb import SessionAnswer, WriteResult
from store_node import keys
from store_node.engine import KvTxn
from store_node.records import (
    SessionMeta,
    SessionRecord,
    decode_session_meta,
    decode_session_record,
    encode_session_meta,
    encode_session_record,
)

log = logging.getLogger(__name__)

SESSION_ID_SIZE = 16
# These shape every replica's decisions, so they are constants of the code,
# not settings (replicas with different values would diverge).
WINDOW = 16_384
MAX_SESSIONS = 4096
# A client's clock is compared with the log's only to decide whether a
# session may be one the region forgot; this margin leans that way.
CLOCK_SKEW_MS = 60_000
MIN_SWEEP_INTERVAL_MS = 1_000

EXPIRED = KvError(
    KvErrorCode.SESSION_EXPIRED,
    "this region no longer remembers the request's session; an earlier attempt "
    "may have been applied",
)


@dataclass(frozen=True, slots=True)
class Fresh:
    """Never applied here: apply it, then `record` its answer."""


@dataclass(frozen=True, slots=True)
class Stored:
    """Applied here before: answer this, apply nothing."""

    results: tuple[WriteResult, ...]


@dataclass(frozen=True, slots=True)
class Expired:
    """Cannot tell: refuse it (SESSION_EXPIRED), apply nothing."""


Decision = Fresh | Stored | Expired


def _answer_prefix_end(region_id: int, session_id: bytes) -> bytes:
    return keys.session_answer_key(region_id, session_id, (1 << 64) - 1)


class RegionSessions:
    """One region's session table inside one kv/ write transaction: `tick`
    at each command, `check` each client write before applying it, `record`
    the answer after. Every change is written to the transaction at once."""

    def __init__(self, txn: KvTxn, region_id: int) -> None:
        self._txn = txn
        self.region_id = region_id
        raw = txn.get(keys.SESSION_DB, keys.session_meta_key(region_id))
        self.meta = decode_session_meta(raw) if raw is not None else SessionMeta()
        self._ttl_ms = 0

    def tick(self, time_ms: int, ttl_ms: int) -> None:
        """An entry from the log at `time_ms`: move the clock, sweep when due."""
        self._ttl_ms = ttl_ms
        if time_ms > self.meta.clock_ms:
            self._set_meta(replace(self.meta, clock_ms=time_ms))
        if self.meta.clock_ms >= self.meta.next_sweep_ms:
            self._sweep()

    def check(self, ref: SessionRef) -> Decision:
        rec = self._record(ref.session_id)
        if rec is None:
            if ref.retry and ref.opened_at_ms <= self.meta.horizon_ms + CLOCK_SKEW_MS:
                return Expired()
            return Fresh()
        raw = self._txn.get(
            keys.SESSION_DB, keys.session_answer_key(self.region_id, ref.session_id, ref.seq)
        )
        if raw is not None:
            self._touch(ref, rec, rec.max_seq)
            return Stored(codec.loads(raw, SessionAnswer).results)
        if ref.seq < rec.floor:
            self._touch(ref, rec, rec.max_seq)
            return Expired()
        return Fresh()

    def record(self, ref: SessionRef, results: tuple[WriteResult, ...]) -> None:
        """`ref` (checked Fresh) was applied with these results."""
        rec = self._record(ref.session_id)
        if rec is None:
            rec = SessionRecord(self.meta.clock_ms, 0, 0)
            self._set_meta(replace(self.meta, count=self.meta.count + 1))
        rec = self._touch(ref, rec, max(rec.max_seq, ref.seq))
        if ref.seq >= rec.floor:
            self._txn.put(
                keys.SESSION_DB,
                keys.session_answer_key(self.region_id, ref.session_id, ref.seq),
                codec.dumps(SessionAnswer(results)),
            )

        if self.meta.count > MAX_SESSIONS:
            self._sweep()  # bounded between sweeps too

    # -- internals -------------------------------------------------------------

    def _set_meta(self, meta: SessionMeta) -> None:
        self.meta = meta
        self._txn.put(
            keys.SESSION_DB, keys.session_meta_key(self.region_id), encode_session_meta(meta)
        )

    def _record(self, session_id: bytes) -> SessionRecord | None:
        raw = self._txn.get(keys.SESSION_DB, keys.session_record_key(self.region_id, session_id))
        return decode_session_record(raw) if raw is not None else None

    def _touch(self, ref: SessionRef, rec: SessionRecord, max_seq: int) -> SessionRecord:
        """Mark the session active now, forget the answers below its new floor."""
        floor = max(rec.floor, ref.acked_below, max_seq - WINDOW + 1)
        if floor > rec.floor:
            self._txn.delete_range(
                keys.SESSION_DB,
                keys.session_answer_key(self.region_id, ref.session_id, rec.floor),
                keys.session_answer_key(self.region_id, ref.session_id, floor),
            )
        new = SessionRecord(self.meta.clock_ms, floor, max_seq)
        if new != rec:
            self._txn.put(
                keys.SESSION_DB,
                keys.session_record_key(self.region_id, ref.session_id),
                encode_session_record(new),
            )
        return new

    def _sweep(self) -> None:
        clock = self.meta.clock_ms
        ttl_ms = self._ttl_ms
        records = [
            (decode_session_record(bytes(v)).last_active_ms, keys.session_id_of(bytes(k)))
            for k, v in self._txn.scan(
                keys.SESSION_DB,
                keys.session_records_prefix(self.region_id),
                _records_end(self.region_id),
            )
        ]
        doomed = [(t, sid) for t, sid in records if t < clock - ttl_ms]
        if len(records) - len(doomed) > MAX_SESSIONS:
            # Too many active ones: the least recently active go too, down
            # to 90% (so that a burst of new sessions does not sweep at every
            # write).
            alive = sorted((t, sid) for t, sid in records if t >= clock - ttl_ms)
            doomed += alive[: len(alive) - MAX_SESSIONS * 9 // 10]
        horizon = self.meta.horizon_ms
        for t, sid in doomed:
            self._txn.delete(keys.SESSION_DB, keys.session_record_key(self.region_id, sid))
            self._txn.delete_range(
                keys.SESSION_DB,
                keys.session_answer_key(self.region_id, sid, 0),
                _answer_prefix_end(self.region_id, sid),
            )
            horizon = max(horizon, t)
        if doomed:
            log.debug("region %d: forgot %d client sessions", self.region_id, len(doomed))
        self._set_meta(
            SessionMeta(
                clock_ms=clock,
                next_sweep_ms=clock + max(ttl_ms // 8, MIN_SWEEP_INTERVAL_MS),
                horizon_ms=horizon,
                count=len(records) - len(doomed),
            )
        )


def _records_end(region_id: int) -> bytes:
    return keys.session_prefix(region_id) + b"\x02"


def check_session_id(session_id: bytes) -> str | None:
    """Why a session id is unusable, or None."""
    if len(session_id) != SESSION_ID_SIZE:
        return f"a session id has {SESSION_ID_SIZE} bytes, not {len(session_id)}"
    return None


# -- whole-region operations (split, snapshot, destroy) ------------------------------


def region_rows(txn: KvTxn, region_id: int) -> Iterator[tuple[bytes, bytes]]:
    """Every session row of a region, keys without the region prefix."""
    prefix = keys.session_prefix(region_id)
    for k, v in txn.scan(keys.SESSION_DB, prefix, keys.session_prefix(region_id + 1)):
        yield bytes(k)[len(prefix) :], bytes(v)


def put_row(txn: KvTxn, region_id: int, suffix: bytes, value: bytes) -> None:
    txn.put(keys.SESSION_DB, keys.session_prefix(region_id) + suffix, value)


def copy_region(txn: KvTxn, from_region: int, to_region: int) -> None:
    """A split: the new region remembers every session the original does (a
    retry of a write applied before the split may go to either part)."""
    for suffix, value in list(region_rows(txn, from_region)):
        put_row(txn, to_region, suffix, value)


def delete_region(txn: KvTxn, region_id: int) -> None:
    txn.delete_range(
        keys.SESSION_DB, keys.session_prefix(region_id), keys.session_prefix(region_id + 1)
    )

"""Fixed binary forms of the per-region records on the hot path.

Log entries, hard states and apply states are written every round, so they
use fixed `struct` layouts rather than CBOR. A leading version byte lets the
layouts evolve; an unknown version is a corrupt data directory, never guessed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from raft.types import Entry, EntryType, HardState

_ENTRY = struct.Struct(">BQQB")  # version, term, index, type; then data
_HARD_STATE = struct.Struct(">BQQQ")  # version, term, vote, commit
_APPLY_STATE = struct.Struct(">BQQQQ")  # version, applied, truncated index/term, applied term
_VERSION = 1


class CorruptRecordError(Exception):
    """A stored record could not be decoded: the data directory is damaged."""


def encode_entry(e: Entry) -> bytes:
    return _ENTRY.pack(_VERSION, e.term, e.index, e.type) + e.data


def decode_entry(b: bytes) -> Entry:
    try:
        version, term, index, etype = _ENTRY.unpack_from(b, 0)
        if version != _VERSION:
            raise CorruptRecordError(f"unknown entry version {version}")
        return Entry(term=term, index=index, type=EntryType(etype), data=bytes(b[_ENTRY.size :]))
    except (struct.error, ValueError) as e:
        raise CorruptRecordError(f"bad log entry: {e}") from e


def entry_term(b: bytes, index: int) -> int:
    """The term of stored entry `b`, which must be entry `index`, read from
    its header alone (an entry may be a value of many megabytes)."""
    try:
        version, term, found, _ = _ENTRY.unpack_from(b, 0)
    except struct.error as e:
        raise CorruptRecordError(f"bad log entry: {e}") from e
    if version != _VERSION:
        raise CorruptRecordError(f"unknown entry version {version}")
    if found != index:
        raise CorruptRecordError(f"log entry {found} stored as {index}")
    return int(term)


def encode_hard_state(hs: HardState) -> bytes:
    return _HARD_STATE.pack(_VERSION, hs.term, hs.vote, hs.commit)


def decode_hard_state(b: bytes) -> HardState:
    try:
        version, term, vote, commit = _HARD_STATE.unpack(b)
    except struct.error as e:
        raise CorruptRecordError(f"bad hard state: {e}") from e
    if version != _VERSION:
        raise CorruptRecordError(f"unknown hard state version {version}")
    return HardState(term=term, vote=vote, commit=commit)


@dataclass(frozen=True, slots=True)
class ApplyState:
    """How far a region's log is applied to `kv/`, and where it is truncated.

    Invariant: truncated_index <= applied_index. Entries up to
    truncated_index are gone from the log; their effects are in `kv/`.
    `applied_term` (the term of the entry at applied_index) lets a snapshot
    taken from one kv/ read transaction carry its own Raft metadata.
    """

    applied_index: int = 0
    truncated_index: int = 0
    truncated_term: int = 0
    applied_term: int = 0


def encode_apply_state(a: ApplyState) -> bytes:
    return _APPLY_STATE.pack(
        _VERSION, a.applied_index, a.truncated_index, a.truncated_term, a.applied_term
    )


def decode_apply_state(b: bytes) -> ApplyState:
    try:
        version, applied, tindex, tterm, aterm = _APPLY_STATE.unpack(b)
    except struct.error as e:
        raise CorruptRecordError(f"bad apply state: {e}") from e
    if version != _VERSION:
        raise CorruptRecordError(f"unknown apply state version {version}")
    return ApplyState(applied, tindex, tterm, aterm)


_SESSION_RECORD = struct.Struct(">BQQQ")  # version, last active (ms), floor, max seq
_SESSION_META = struct.Struct(">BQQQQ")  # version, clock, next sweep, horizon (ms), count


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a region remembers of one client session (store_node.sessions).

    `last_active_ms`: the log time of its latest write here. `floor`:
    answers of numbers below it are forgotten (acknowledged, or pushed out
    of the window). `max_seq`: the highest number applied here.
    """

    last_active_ms: int
    floor: int
    max_seq: int


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """A region's session clock and bookkeeping.

    `clock_ms`: the latest log time applied (never goes back, whatever the
    leaders' clocks). `next_sweep_ms`: when idle sessions are looked for
    next. `horizon_ms`: the latest last-active time of a session this region
    forgot. `count`: sessions remembered.
    """

    clock_ms: int = 0
    next_sweep_ms: int = 0
    horizon_ms: int = 0
    count: int = 0


def encode_session_record(r: SessionRecord) -> bytes:
    return _SESSION_RECORD.pack(_VERSION, r.last_active_ms, r.floor, r.max_seq)


def decode_session_record(b: bytes) -> SessionRecord:
    try:
        version, active, floor, max_seq = _SESSION_RECORD.unpack(b)
    except struct.error as e:
        raise CorruptRecordError(f"bad session record: {e}") from e
    if version != _VERSION:
        raise CorruptRecordError(f"unknown session record version {version}")
    return SessionRecord(active, floor, max_seq)


def encode_session_meta(m: SessionMeta) -> bytes:
    return _SESSION_META.pack(_VERSION, m.clock_ms, m.next_sweep_ms, m.horizon_ms, m.count)


def decode_session_meta(b: bytes) -> SessionMeta:
    try:
        version, clock, next_sweep, horizon, count = _SESSION_META.unpack(b)
    except struct.error as e:
        raise CorruptRecordError(f"bad session meta: {e}") from e
    if version != _VERSION:
        raise CorruptRecordError(f"unknown session meta version {version}")
    return SessionMeta(clock, next_sweep, horizon, count)

"""The recording of a history: how client calls split into per-key ops (what
a scan, a batch or a conditional write says about each key), outcomes and
pending calls, recordings refused, and whole histories checked."""

from __future__ import annotations

import math

import pytest

from shardkv.check.explain import describe_check_result
from shardkv.check.history import (
    BatchDelete,
    BatchGet,
    BatchPut,
    Call,
    Cas,
    CompareAndSet,
    Delete,
    DeleteRange,
    Get,
    GetAndPut,
    History,
    KeyCall,
    Outcome,
    Put,
    PutIfAbsent,
    Read,
    Scan,
    Swap,
    Value,
    Write,
)
from shardkv.check.linearizability import check
from tests.sim.linearizability_reference import FAILED, OK, UNKNOWN

KEYSPACE = (b"a", b"b", b"c", b"d", b"e")


def record(
    h: History,
    client: int,
    call: Call,
    invoke: float,
    complete: float,
    outcome: Outcome,
    result: object,
) -> None:
    h.complete(h.invoke(client, call, invoke), outcome, result, complete)


def reads_of(call: Scan | BatchGet | Get, result: object) -> dict[bytes, list[Value]]:
    h = History(KEYSPACE)
    record(h, 0, call, 1.0, 2.0, OK, result)
    out: dict[bytes, list[Value]] = {}
    for key, kops in h.key_ops().items():
        for o in kops:
            assert isinstance(o.call, Read)
            assert (o.invoke, o.complete, o.source) == (1.0, 2.0, call)
            assert not isinstance(o.result, tuple)
            out.setdefault(key, []).append(o.result)
    return out


def test_scan_that_did_not_hit_its_limit_reads_its_whole_range() -> None:
    assert reads_of(Scan(b"b", b"e", 10), [(b"c", b"3")]) == {
        b"b": [None],
        b"c": [b"3"],
        b"d": [None],
    }
    assert reads_of(Scan(b"b", b"", 10), []) == {k: [None] for k in KEYSPACE[1:]}
    assert reads_of(Scan(b"a", b"", 3, reverse=True), [(b"e", b"5"), (b"b", b"2")]) == {
        b"a": [None],
        b"b": [b"2"],
        b"c": [None],
        b"d": [None],
        b"e": [b"5"],
    }


def test_scan_that_hit_its_limit_reads_up_to_its_last_key() -> None:
    assert reads_of(Scan(b"a", b"", 2), [(b"a", b"1"), (b"c", b"3")]) == {
        b"a": [b"1"],
        b"b": [None],
        b"c": [b"3"],
    }
    assert reads_of(Scan(b"a", b"", 2, reverse=True), [(b"e", b"5"), (b"c", b"3")]) == {
        b"c": [b"3"],
        b"d": [None],
        b"e": [b"5"],
    }
    assert reads_of(Scan(b"a", b"d", 2, reverse=True), [(b"c", b"3"), (b"a", b"1")]) == {
        b"a": [b"1"],
        b"b": [None],
        b"c": [b"3"],
    }


def test_scan_returning_an_unknown_key_reads_it() -> None:
    assert reads_of(Scan(b"d", b"", 5), [(b"d", b"4"), (b"dd", b"x")]) == {
        b"d": [b"4"],
        b"dd": [b"x"],
        b"e": [None],
    }


def test_batch_get() -> None:
    assert reads_of(BatchGet((b"a", b"c", b"a")), {b"a": b"1"}) == {
        b"a": [b"1"],
        b"c": [None],
    }
    assert reads_of(Get(b"b"), b"2") == {b"b": [b"2"]}


def writes_of(call: DeleteRange | BatchPut | BatchDelete) -> dict[bytes, KeyCall]:
    h = History(KEYSPACE)
    record(h, 0, call, 1.0, 2.0, OK, None)
    out = {}
    for key, (o,) in h.key_ops().items():
        out[key] = o.call
    return out


def test_delete_range_and_batches() -> None:
    assert writes_of(DeleteRange(b"b", b"d")) == {b"b": Write(None), b"c": Write(None)}
    assert writes_of(DeleteRange(b"bb", b"")) == {k: Write(None) for k in (b"c", b"d", b"e")}
    assert writes_of(BatchPut(((b"a", b"1"), (b"b", b"2"), (b"a", b"3")))) == {
        b"a": Write(b"3"),
        b"b": Write(b"2"),
    }
    assert writes_of(BatchDelete((b"e", b"a"))) == {b"a": Write(None), b"e": Write(None)}


def test_conditional_writes() -> None:
    h = History(KEYSPACE)
    record(h, 0, CompareAndSet(b"a", None, b"1"), 0, 1, OK, (True, None))
    record(h, 0, PutIfAbsent(b"b", b"2"), 2, 3, OK, None)
    record(h, 0, PutIfAbsent(b"c", b"3"), 4, 5, OK, b"old")
    record(h, 0, GetAndPut(b"d", b"4"), 6, 7, OK, b"was")
    got = {k: [(o.call, o.result) for o in v] for k, v in h.key_ops().items()}
    assert got == {
        b"a": [(Cas(None, b"1"), (True, None))],
        b"b": [(Cas(None, b"2"), (True, None))],
        b"c": [(Cas(None, b"3"), (False, b"old"))],
        b"d": [(Swap(b"4"), b"was")],
    }


def test_outcomes_and_pending_calls() -> None:
    h = History(KEYSPACE)
    record(h, 0, Put(b"a", b"1"), 0, 1, FAILED, None)
    record(h, 0, Get(b"a"), 2, 3, UNKNOWN, None)
    record(h, 0, Delete(b"b"), 4, 5, UNKNOWN, None)
    h.invoke(1, Put(b"c", b"3"), 6)
    h.invoke(2, Get(b"c"), 7)
    got = h.key_ops()
    assert list(got) == [b"b", b"c"]
    (b,) = got[b"b"]
    assert (b.call, b.outcome, b.complete) == (Write(None), UNKNOWN, 5)
    (c,) = got[b"c"]
    assert (c.call, c.outcome, c.complete) == (Write(b"3"), UNKNOWN, math.inf)


def test_bad_recordings_are_refused() -> None:
    h = History(KEYSPACE)
    with pytest.raises(ValueError, match="not in the keyspace"):
        h.invoke(0, Put(b"z", b"1"), 0)
    i = h.invoke(0, Get(b"a"), 5)
    with pytest.raises(ValueError, match="complete 4 < invoke 5"):
        h.complete(i, OK, None, 4)
    with pytest.raises(ValueError, match="expected bytes or None"):
        h.complete(i, OK, 17, 6)
    j = h.invoke(0, CompareAndSet(b"a", None, b"1"), 0)
    with pytest.raises(ValueError, match="expected"):
        h.complete(j, OK, True, 1)
    h.complete(i, OK, None, 6)
    with pytest.raises(ValueError, match="completed twice"):
        h.complete(i, OK, None, 6)


def test_check_a_whole_history() -> None:
    h = History(KEYSPACE)
    record(h, 0, BatchPut(((b"a", b"1"), (b"b", b"2"))), 0, 1, OK, None)
    # A scan sees b's new value but a stale (absent) a.
    record(h, 1, Scan(b"a", b"c", 10), 2, 3, OK, [(b"b", b"2")])
    record(h, 1, DeleteRange(b"a", b""), 4, 5, OK, None)
    record(h, 2, BatchGet((b"a", b"b")), 6, 7, OK, {})
    result = check(h)
    assert not result.ok
    assert [k.key for k in result.keys] == list(KEYSPACE)
    assert [k.key for k in result.violations] == [b"a"]
    assert result.undecided == ()
    text = describe_check_result(result)
    assert text.startswith("5 keys, 11 ops")
    assert "1 not linearizable, 0 undecided" in text
    assert "key b'a': NOT linearizable" in text
    assert "(from scan [b'a', b'c') limit 10)" in text


def test_history_initial_values() -> None:
    h = History([b"a", b"b"], initial={b"a": b"0"})
    record(h, 0, Scan(b"a", b"", 10), 0, 1, OK, [(b"a", b"0")])
    assert check(h).ok
    record(h, 0, Get(b"a"), 2, 3, OK, None)
    assert [k.key for k in check(h).violations] == [b"a"]

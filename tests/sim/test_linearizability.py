"""Tests of the per-key linearizability checker: hand-made histories it must
accept or reject, how client calls split into per-key ops, its step budget,
and agreement with a brute-force checker on thousands of random small
histories (the brute force is slow but obviously right, so it is the
reference for the search, its memo and its shortcuts)."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence

import pytest

from tests.sim.linearizability import (
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
    KeyCheck,
    KeyOp,
    OpResult,
    Outcome,
    Put,
    PutIfAbsent,
    Read,
    Scan,
    Swap,
    Value,
    Verdict,
    Write,
    check,
    check_key,
)

OK, FAILED, UNKNOWN = Outcome.OK, Outcome.FAILED, Outcome.UNKNOWN


def op(
    client: int,
    call: KeyCall,
    invoke: float,
    complete: float,
    result: OpResult = None,
    outcome: Outcome = OK,
    *,
    op_id: int = -1,
) -> KeyOp:
    return KeyOp(op_id, client, b"k", call, outcome, result, invoke, complete)


def numbered(ops: Sequence[KeyOp]) -> list[KeyOp]:
    return [dataclasses.replace(o, op_id=n) for n, o in enumerate(ops)]


def verdict(*ops: KeyOp, initial: Value = None) -> Verdict:
    kc = check_key(b"k", numbered(ops), initial=initial)
    if kc.ok:
        assert_valid_linearization(kc)
    return kc.verdict


# --- a reference: the model, and an exhaustive search --------------------


def model_step(state: Value, o: KeyOp) -> tuple[bool, Value]:
    """The sequential spec of one op: whether its result fits `state`, and the state after."""
    known = o.outcome is OK
    match o.call:
        case Read():
            return (not known or o.result == state), state
        case Write(value=v):
            return True, v
        case Cas(expected=e, new=v):
            succeeded = state == e
            return (not known or o.result == (succeeded, state)), (v if succeeded else state)
        case Swap(new=v):
            return (not known or o.result == state), v


def must_precede(a: KeyOp, b: KeyOp) -> bool:
    # An UNKNOWN op may take effect after it completed: it precedes nothing.
    return a.outcome is OK and a.complete < b.invoke


def brute_force(ops: Sequence[KeyOp], initial: Value = None) -> bool:
    """Whether some order of the OK ops and of any subset of the UNKNOWN ops
    respects real time and the model. Every such sequence is built one op at
    a time; only a prefix the model already rejects is cut short."""
    ops = [
        o for o in ops if o.outcome is OK or (o.outcome is UNKNOWN and not isinstance(o.call, Read))
    ]
    n_ok = sum(o.outcome is OK for o in ops)
    preds = [[j for j, a in enumerate(ops) if must_precede(a, b)] for b in ops]

    def extend(placed: list[int], state: Value, ok_placed: int) -> bool:
        if ok_placed == n_ok:
            return True  # the UNKNOWN ops not placed never took effect
        for i, o in enumerate(ops):
            if i in placed or any(j not in placed for j in preds[i]):
                continue
            fits, after = model_step(state, o)
            if fits and extend([*placed, i], after, ok_placed + (o.outcome is OK)):
                return True
        return False

    return extend([], initial, 0)


def assert_valid_linearization(kc: KeyCheck) -> None:
    """The checker's witness, checked against the definition."""
    order = kc.linearization
    assert len(set(order)) == len(order)
    for i, o in enumerate(kc.ops):
        assert (i in order) or o.outcome is UNKNOWN
    pos = {i: n for n, i in enumerate(order)}
    for a in order:
        for b in order:
            if must_precede(kc.ops[a], kc.ops[b]):
                assert pos[a] < pos[b]
    state = kc.initial
    for i in order:
        fits, state = model_step(state, kc.ops[i])
        assert fits, (i, kc.ops[i], state)


# --- known-good histories --------------------------------------------------


def test_sequential_ops() -> None:
    assert (
        verdict(
            op(0, Read(), 0, 1, None),
            op(0, Write(b"a"), 1, 2),
            op(1, Read(), 3, 4, b"a"),
            op(1, Cas(b"a", b"b"), 5, 6, (True, b"a")),
            op(0, Cas(b"a", b"c"), 7, 8, (False, b"b")),
            op(0, Swap(b"d"), 9, 10, b"b"),
            op(1, Write(None), 11, 12),
            op(0, Read(), 13, 14, None),
            op(1, Cas(None, b"e"), 15, 16, (True, None)),
            op(1, Read(), 17, 18, b"e"),
        )
        is Verdict.LINEARIZABLE
    )


def test_initial_value() -> None:
    assert verdict(op(0, Read(), 0, 1, b"x"), initial=b"x") is Verdict.LINEARIZABLE
    assert verdict(op(0, Read(), 0, 1, None), initial=b"x") is Verdict.VIOLATION


@pytest.mark.parametrize("seen", [(b"a", b"b"), (b"b", b"a"), (b"a", b"a"), (None, b"b")])
def test_concurrent_writes_and_reads_see_either(seen: tuple[Value, Value]) -> None:
    # Two overlapping writes, two reads overlapping both: any order of the
    # writes is possible, and each read may come before either of them.
    first, second = seen
    assert (
        verdict(
            op(0, Write(b"a"), 0, 10),
            op(1, Write(b"b"), 1, 9),
            op(2, Read(), 2, 5, first),
            op(2, Read(), 6, 8, second),
        )
        is Verdict.LINEARIZABLE
    )


def test_ops_that_touch_in_time_are_concurrent() -> None:
    # The read was invoked at the very instant the write completed: it may
    # precede it.
    assert verdict(op(0, Write(b"a"), 0, 5), op(1, Read(), 5, 6, None)) is Verdict.LINEARIZABLE
    assert verdict(op(0, Write(b"a"), 0, 5), op(1, Read(), 5.001, 6, None)) is Verdict.VIOLATION


def test_unknown_write_seen_later() -> None:
    # It may take effect long after it completed (a retry that lands late).
    assert (
        verdict(
            op(0, Write(b"a"), 0, 1, outcome=UNKNOWN),
            op(1, Write(None), 2, 3),
            op(1, Read(), 4, 5, None),
            op(1, Read(), 6, 7, b"a"),
            op(1, Read(), 8, 9, b"a"),
        )
        is Verdict.LINEARIZABLE
    )


def test_unknown_write_never_seen() -> None:
    assert (
        verdict(
            op(0, Write(b"a"), 0, 1),
            op(1, Write(b"b"), 1, 2, outcome=UNKNOWN),
            op(1, Cas(b"a", b"c"), 1, 2, outcome=UNKNOWN),
            op(0, Read(), 3, 4, b"a"),
            op(0, Read(), 5, 6, b"a"),
        )
        is Verdict.LINEARIZABLE
    )


def test_unknown_cas_chain() -> None:
    # Only the UNKNOWN write and then the UNKNOWN cas, in that order, explain
    # the read; the write's value is seen by nobody but the cas.
    assert (
        verdict(
            op(0, Write(b"a"), 0, 1, outcome=UNKNOWN),
            op(1, Cas(b"a", b"b"), 0, 1, outcome=UNKNOWN),
            op(2, Read(), 2, 3, b"b"),
        )
        is Verdict.LINEARIZABLE
    )


def test_failed_write_is_ignored() -> None:
    assert (
        verdict(
            op(0, Write(b"a"), 0, 1),
            op(1, Write(b"b"), 2, 3, outcome=FAILED),
            op(0, Read(), 4, 5, b"a"),
        )
        is Verdict.LINEARIZABLE
    )
    # ... also when its result was filled in.
    assert (
        verdict(op(1, Swap(b"b"), 2, 3, b"zzz", FAILED), op(0, Read(), 4, 5, None))
        is Verdict.LINEARIZABLE
    )


def test_reads_without_a_result_are_ignored() -> None:
    assert (
        verdict(
            op(0, Write(b"a"), 0, 1),
            op(1, Read(), 2, 3, b"nonsense", UNKNOWN),
            op(1, Read(), 4, 5, b"nonsense", FAILED),
        )
        is Verdict.LINEARIZABLE
    )


# --- known-bad histories ----------------------------------------------------


def test_stale_read() -> None:
    assert (
        verdict(
            op(0, Write(b"old"), 0, 1),
            op(0, Write(b"new"), 2, 3),
            op(1, Read(), 4, 5, b"old"),
        )
        is Verdict.VIOLATION
    )


def test_lost_write() -> None:
    assert (
        verdict(
            op(0, Write(b"a"), 0, 1),
            op(0, Write(b"b"), 2, 3),
            op(1, Read(), 3.5, 4, b"b"),
            op(1, Read(), 4, 5, b"a"),
        )
        is Verdict.VIOLATION
    )
    assert verdict(op(0, Write(b"a"), 0, 1), op(1, Read(), 2, 3, None)) is Verdict.VIOLATION


def test_double_apply_of_an_acknowledged_write() -> None:
    history = [
        op(0, Write(b"v1"), 0, 1),
        op(1, Write(None), 2, 3),
        op(2, Read(), 4, 5, b"v1"),
    ]
    assert verdict(*history) is Verdict.VIOLATION
    # Had the put not been acknowledged, a late apply would explain it.
    history[0] = op(0, Write(b"v1"), 0, 1, outcome=UNKNOWN)
    assert verdict(*history) is Verdict.LINEARIZABLE


@pytest.mark.parametrize("cas_outcome", [OK, UNKNOWN])
def test_cas_applied_twice(cas_outcome: Outcome) -> None:
    assert (
        verdict(
            op(0, Cas(None, b"a"), 0, 1, (True, None), cas_outcome),
            op(1, Write(b"b"), 2, 3),
            op(2, Read(), 4, 5, b"a"),
        )
        is Verdict.VIOLATION
    )


def test_two_cas_succeed_from_the_same_value() -> None:
    assert (
        verdict(
            op(0, Cas(None, b"a"), 0, 10, (True, None)),
            op(1, Cas(None, b"b"), 0, 10, (True, None)),
        )
        is Verdict.VIOLATION
    )


def test_read_of_a_value_never_written() -> None:
    assert verdict(op(0, Write(b"a"), 0, 10), op(1, Read(), 1, 2, b"ghost")) is Verdict.VIOLATION


def test_impossible_results() -> None:
    # Set, but the value before was not the one expected; or not set though it was.
    assert verdict(op(0, Cas(b"a", b"b"), 0, 1, (True, None))) is Verdict.VIOLATION
    assert verdict(op(0, Cas(None, b"b"), 0, 1, (False, None))) is Verdict.VIOLATION
    assert verdict(op(0, Swap(b"b"), 0, 1, b"a")) is Verdict.VIOLATION


def test_violation_is_explained() -> None:
    kc = check_key(
        b"k",
        numbered(
            [
                op(0, Write(b"old"), 0, 1),
                op(0, Write(b"new"), 2, 3),
                op(1, Read(), 2.5, 3.5, b"new"),
                op(1, Read(), 4, 5, b"old"),
                op(2, Write(b"later"), 6, 7),
            ]
        ),
    )
    assert kc.verdict is Verdict.VIOLATION
    assert kc.linearization == (0, 1, 2)
    text = kc.describe()
    assert "NOT linearizable" in text
    assert "places 3 ops; after it the value is b'new'" in text
    assert "it saw b'old', but the value was b'new'" in text
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "op 3 client 1 [4, 5] ok read => b'old'" in lines  # the op that does not fit
    assert "#2 op 1 client 0 [2, 3] ok write b'new'" in lines
    assert "-- op 3 client 1 [4, 5] ok read => b'old'" in lines
    assert lines[-2:] == [
        "... where it got stuck; later ops:",
        "-- op 4 client 2 [6, 7] ok write b'later'",
    ]


# --- against the brute force --------------------------------------------------

ALPHABET: tuple[Value, ...] = (None, b"a", b"b", b"c")


def random_history(rng: random.Random) -> list[KeyOp]:
    """2-4 clients, each running its ops one after another, up to 7 ops in
    all, on integer times so that ops often touch. Results come from running
    the ops in the order of a random instant in each op's interval (after
    invoke at any time for an UNKNOWN op, if it takes effect at all), so
    mostly linearizable; then perhaps some results are changed at random."""
    clients = rng.randint(2, 4)
    free_at = [rng.randint(0, 2) for _ in range(clients)]
    unknown = rng.choice((0.1, 0.2, 0.4))
    planned: list[tuple[float, int, KeyOp]] = []
    for n in range(rng.choice((1, 2, 3, 4, 5, 6, 6, 7, 7, 7, 7))):
        c = rng.randrange(clients)
        invoke = free_at[c] + rng.randint(0, 2)
        complete = invoke + rng.randint(0, 4)
        free_at[c] = complete
        r = rng.random()
        call: KeyCall
        if r < 0.35:
            call = Read()
        elif r < 0.6:
            call = Write(rng.choice(ALPHABET))
        elif r < 0.85:
            call = Cas(rng.choice(ALPHABET), rng.choice(ALPHABET))
        else:
            call = Swap(rng.choice(ALPHABET))
        outcome = rng.choices([OK, UNKNOWN, FAILED], [1 - unknown - 0.1, unknown, 0.1])[0]
        at = rng.uniform(invoke, complete)
        if outcome is UNKNOWN:
            at = rng.uniform(invoke, complete + 6) if rng.random() < 0.6 else math.inf
        elif outcome is FAILED:
            at = math.inf
        unset = (False, None) if isinstance(call, Cas) else None  # filled in below
        planned.append((at, n, KeyOp(n, c, b"k", call, outcome, unset, invoke, complete)))
    state: Value = None
    ops: dict[int, KeyOp] = {}
    for at, n, o in sorted(planned, key=lambda p: (p[0], p[1])):
        if at < math.inf:
            result: OpResult = None
            match o.call:
                case Read() | Swap():
                    result = state
                case Cas(expected=e):
                    result = (state == e, state)
                case Write():
                    pass
            state = model_step(state, o)[1]
            o = dataclasses.replace(o, result=result)
        ops[n] = o
    observers = [n for n, o in ops.items() if o.outcome is OK and not isinstance(o.call, Write)]
    if observers and rng.random() < 0.5:
        for n in rng.sample(observers, min(len(observers), rng.randint(1, 2))):
            match ops[n].call:
                case Read() | Swap():
                    ops[n] = dataclasses.replace(ops[n], result=rng.choice(ALPHABET))
                case Cas():
                    bad = (rng.random() < 0.5, rng.choice(ALPHABET))
                    ops[n] = dataclasses.replace(ops[n], result=bad)
                case Write():
                    pass
    return [ops[n] for n in range(len(ops))]


def test_agrees_with_brute_force() -> None:
    rng = random.Random(20240611)
    verdicts = {True: 0, False: 0}
    for n in range(10_000):
        ops = random_history(rng)
        initial = rng.choice(ALPHABET) if n % 4 == 0 else None
        expected = brute_force(ops, initial)
        kc = check_key(b"k", ops, initial=initial)
        assert kc.verdict is not Verdict.UNDECIDED
        assert kc.ok == expected, "\n".join(
            [f"history {n}: brute force says {expected}", kc.describe(), *map(repr, ops)]
        )
        if kc.ok:
            assert_valid_linearization(kc)
        verdicts[expected] += 1
    # Both answers must be common for the agreement to mean something.
    assert verdicts[True] > 3000 and verdicts[False] > 3000, verdicts


# --- how client calls split into per-key ops ------------------------------------

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
    text = result.describe()
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


# --- the budget, and speed ---------------------------------------------------------


def test_budget_exceeded_is_undecided() -> None:
    # Many concurrent writes and a read no order explains: the search has
    # to try every subset before it can say so.
    ops = [op(c, Write(bytes([65 + c])), 0, 100) for c in range(12)]
    ops.append(op(99, Read(), 101, 102, b"never"))
    kc = check_key(b"k", numbered(ops), max_steps=50)
    assert kc.verdict is Verdict.UNDECIDED
    assert kc.steps == 50
    assert "UNDECIDED: the search gave up after 50 steps" in kc.describe()
    assert check_key(b"k", numbered(ops)).verdict is Verdict.VIOLATION

    h = History([b"k"])
    for o in ops:
        i = h.invoke(o.client, Get(b"k") if isinstance(o.call, Read) else Put(b"k", b"x"), 0)
        h.complete(i, OK, b"never" if isinstance(o.call, Read) else None, 1)
    result = check(h, max_steps_per_key=5)
    assert not result.ok and result.undecided and not result.violations
    assert "0 not linearizable, 1 undecided" in result.describe()


def busy_history(rng: random.Random, n_ops: int, clients: int) -> list[KeyOp]:
    """Clients each running ops one after another, with unique values, 10%
    of writes UNKNOWN (half of them taking effect, perhaps late)."""
    free_at = [rng.uniform(0, 1) for _ in range(clients)]
    planned: list[tuple[float, KeyOp]] = []
    for n in range(n_ops):
        c = rng.randrange(clients)
        invoke = free_at[c] + rng.uniform(0, 0.5)
        complete = free_at[c] = invoke + rng.uniform(0, 3)
        r, v = rng.random(), b"v%d" % n
        call: KeyCall = (
            Read()
            if r < 0.4
            else Write(v)
            if r < 0.7
            else Cas(rng.choice([None, b"v%d" % rng.randrange(n + 1)]), v)
            if r < 0.85
            else Swap(v)
        )
        outcome = UNKNOWN if not isinstance(call, Read) and rng.random() < 0.1 else OK
        at = rng.uniform(invoke, complete)
        if outcome is UNKNOWN:
            at = rng.uniform(invoke, complete + 3) if rng.random() < 0.5 else math.inf
        unset = (False, None) if isinstance(call, Cas) else None  # filled in below
        planned.append((at, KeyOp(n, c, b"k", call, outcome, unset, invoke, complete)))
    state: Value = None
    ops = []
    for at, o in sorted(planned, key=lambda p: p[0]):
        if at < math.inf:
            match o.call:
                case Read() | Swap():
                    o = dataclasses.replace(o, result=state)
                case Cas(expected=e):
                    o = dataclasses.replace(o, result=(state == e, state))
                case Write():
                    pass
            state = model_step(state, o)[1]
        ops.append(o)
    return ops


def test_busy_key_is_fast() -> None:
    rng = random.Random(7)
    for _ in range(5):
        ops = busy_history(rng, 500, 8)
        start = time.perf_counter()
        kc = check_key(b"k", ops)
        elapsed = time.perf_counter() - start
        assert kc.verdict is Verdict.LINEARIZABLE
        assert_valid_linearization(kc)
        assert elapsed < 1.0, (elapsed, kc.steps)
        # A stale read late in the run: the value of an acknowledged write
        # that another one surely overwrote before the read began.
        i = rng.choice([i for i, o in enumerate(ops) if isinstance(o.call, Read)][-50:])
        writes = [o for o in ops if isinstance(o.call, Write) and o.outcome is OK]
        old = next(
            w1.call
            for w2 in reversed(writes)
            if w2.complete < ops[i].invoke
            for w1 in reversed(writes)
            if w1.complete < w2.invoke
        )
        assert isinstance(old, Write)
        stale = dataclasses.replace(ops[i], result=old.value)
        kc = check_key(b"k", [*ops[:i], stale, *ops[i + 1 :]])
        assert kc.verdict is Verdict.VIOLATION, kc.describe()

"""The reference the tests of the linearizability checker hold it to: the
sequential model of one key, step by step (`model_step`); an exhaustive
search, slow but obviously right (`brute_force`); a check of the checker's
witness against the definition (`assert_valid_linearization`); and
shorthands to write the history of one key (`op`, `numbered`, `verdict`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from shardkv.check.history import Cas, KeyCall, KeyOp, OpResult, Outcome, Read, Swap, Value, Write
from shardkv.check.linearizability import KeyCheck, Verdict, check_key

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

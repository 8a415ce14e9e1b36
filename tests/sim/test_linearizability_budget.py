"""The linearizability checker's step budget (a key it cannot decide in time is
UNDECIDED, not a violation) and its speed on a busy key."""

from __future__ import annotations

import dataclasses
import math
import random
import time

from shardkv.check.explain import describe_check_result, describe_key_check
from shardkv.check.history import Cas, Get, History, KeyCall, KeyOp, Put, Read, Swap, Value, Write
from shardkv.check.linearizability import Verdict, check, check_key
from tests.sim.linearizability_reference import (
    OK,
    UNKNOWN,
    assert_valid_linearization,
    model_step,
    numbered,
    op,
)


def test_budget_exceeded_is_undecided() -> None:
    # Many concurrent writes and a read no order explains: the search has
    # to try every subset before it can say so.
    ops = [op(c, Write(bytes([65 + c])), 0, 100) for c in range(12)]
    ops.append(op(99, Read(), 101, 102, b"never"))
    kc = check_key(b"k", numbered(ops), max_steps=50)
    assert kc.verdict is Verdict.UNDECIDED
    assert kc.steps == 50
    assert "UNDECIDED: the search gave up after 50 steps" in describe_key_check(kc)
    assert check_key(b"k", numbered(ops)).verdict is Verdict.VIOLATION

    h = History([b"k"])
    for o in ops:
        i = h.invoke(o.client, Get(b"k") if isinstance(o.call, Read) else Put(b"k", b"x"), 0)
        h.complete(i, OK, b"never" if isinstance(o.call, Read) else None, 1)
    result = check(h, max_steps_per_key=5)
    assert not result.ok and result.undecided and not result.violations
    assert "0 not linearizable, 1 undecided" in describe_check_result(result)


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
        assert kc.verdict is Verdict.VIOLATION, describe_key_check(kc)

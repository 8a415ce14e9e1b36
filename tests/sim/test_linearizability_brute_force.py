"""The linearizability checker agrees with a brute-force checker on thousands
of random small histories of one key (the brute force is slow but obviously
right, so it is the reference for the search, its memo and its shortcuts)."""

from __future__ import annotations

import dataclasses
import math
import random

from shardkv.check.explain import describe_key_check
from shardkv.check.history import Cas, KeyCall, KeyOp, OpResult, Read, Swap, Value, Write
from shardkv.check.linearizability import Verdict, check_key
from tests.sim.linearizability_reference import (
    FAILED,
    OK,
    UNKNOWN,
    assert_valid_linearization,
    brute_force,
    model_step,
)

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
            [f"history {n}: brute force says {expected}", describe_key_check(kc), *map(repr, ops)]
        )
        if kc.ok:
            assert_valid_linearization(kc)
        verdicts[expected] += 1
    # Both answers must be common for the agreement to mean something.
    assert verdicts[True] > 3000 and verdicts[False] > 3000, verdicts

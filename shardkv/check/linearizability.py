"""A per-key linearizability checker for the whole-cluster simulation.

Why: what shardkv promises a client is that every operation on a key appears
to take effect atomically at one instant between its invocation and its
response. The faults the simulation injects (crashes, lost and reordered
messages, leader changes, splits, a client retrying a request whose first
attempt did land) break that promise in ways a final-state comparison cannot
see: a stale read from a deposed leader, a retried put applied twice (undoing
a delete in between), an acknowledged write lost and then masked by a later
one. Checking the whole history against the sequential model of a key catches
all of them, and it needs nothing from the store but what its clients saw.

What: the simulation records every client call in a `History`
(`shardkv.check.history` says what a call, one key's operation and an outcome
are, and how a multi-key call splits into one operation per key);
`check(history)` answers per key, since linearizability is local (Herlihy &
Wing): a history is linearizable iff the sub-history of every object is.
`check_key` checks the ops of one key against the model of one key: a value
(None: absent) that `Read`, `Write`, `Cas` and `Swap` observe and set. An op
that is OK took effect once between invoke and complete; an UNKNOWN write
took effect once at any time after its invoke, or never; FAILED ops and reads
that are not OK tell nothing and are left out.

How: Wing & Gong's search with Lowe's memoization, the way porcupine
(github.com/anishathalye/porcupine, checker.go) does it: the call and return
events of the key sorted by time (a call before a return at the same time: an
op that completes exactly when another is invoked is concurrent with it, not
before it), a linked list of the events not yet linearized, and a depth-first
search that linearizes the earliest call whose op may go next (one whose call
precedes the first remaining return) if the model accepts it and the pair
(set of linearized ops, value) was not met before, and undoes the last choice
when it reaches a return it cannot get past. It is iterative, with an explicit
stack, since a key can have thousands of ops.

UNKNOWN ops never block the search: they have no return event, and the search
succeeds as soon as every OK op is linearized, which says the UNKNOWN ops left
over never took effect (porcupine puts their return at +infinity instead,
which gives the same answer). Their result being unknown, the model accepts
them in any state.

The search is exponential in the worst case (checking linearizability is
NP-complete), so it avoids work it can prove useless, each shortcut argued
where it is made and all checked against a brute force in the tests:
UNKNOWN writes of a value no op could have seen are left out before the
search (`_unobservable`); an UNKNOWN op is not linearized where it would
change nothing, nor before an earlier invoked UNKNOWN op with the same effect
("twins"); an OK op that leaves the value as it is (a read, a failed cas) is
linearized as soon as it fits, and no other order is tried when that fails.
With values unique per write, as a workload should make them (they also make
a violation easy to read), a key with 500 ops from 8 clients, 10% of its
writes UNKNOWN, takes a few milliseconds when linearizable and rarely more
than a tenth of a second when not. What still costs: many writers in flight
at once (each order of them may need trying: 16 busy clients on one key take
some 500 steps per op) and, worst, UNKNOWN writes of values that repeat,
which the search may place anywhere after their invoke. Hence a budget of
search steps per key (`DEFAULT_MAX_STEPS`, about half a second): a key whose
search exceeds it is UNDECIDED, not a violation, so a run reports it instead
of hanging.

Every key is checked (not only up to the first violation): which keys failed,
and how many, tells more about a bug than the first one alone.
`shardkv.check.explain` puts a verdict in words: on a
violation, the longest linearizable prefix the search found, the ops that
could not come next and why, and the ops of the key up to there.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from shardkv.check.history import Cas, History, KeyCall, KeyOp, Outcome, Read, Swap, Value, Write

DEFAULT_MAX_STEPS: Final = 2_000_000
"""Search steps per key before it is UNDECIDED: about half a second (0.2-0.3 us a
step) and, for a key with 3000 ops, up to ~80 MB of memo."""


# --- verdicts ----------------------------------------------------------------------


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    UNDECIDED = "undecided"
    """The search exceeded its step budget."""


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The verdict on one key."""

    key: bytes
    verdict: Verdict
    ops: tuple[KeyOp, ...]
    """The ops checked (FAILED ops and reads without a result left out), in invoke order."""
    left_out: frozenset[int]
    """Indexes into `ops` of UNKNOWN ops left out since no op could observe their effect."""
    linearization: tuple[int, ...]
    """Indexes into `ops`: if LINEARIZABLE, an order that explains the history
    (UNKNOWN ops not in it never took effect); else the longest linearizable
    prefix the search found."""
    steps: int
    initial: Value = None

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE


@dataclass(frozen=True, slots=True)
class CheckResult:
    keys: tuple[KeyCheck, ...]
    """Every key with ops, in key order."""

    @property
    def ok(self) -> bool:
        return all(k.ok for k in self.keys)

    @property
    def violations(self) -> tuple[KeyCheck, ...]:
        return tuple(k for k in self.keys if k.verdict is Verdict.VIOLATION)

    @property
    def undecided(self) -> tuple[KeyCheck, ...]:
        return tuple(k for k in self.keys if k.verdict is Verdict.UNDECIDED)

    @property
    def steps(self) -> int:
        return sum(k.steps for k in self.keys)


def check(history: History, *, max_steps_per_key: int = DEFAULT_MAX_STEPS) -> CheckResult:
    """Check every key of `history`; see the module docstring."""
    return CheckResult(
        tuple(
            check_key(key, ops, initial=history.initial(key), max_steps=max_steps_per_key)
            for key, ops in history.key_ops().items()
        )
    )


# --- the model of one key, compiled for the search ---------------------------------


# The model step of one op, compiled to (observes, mode, value, expected):
# the op fits only in a state equal to `observes` (any state if ANY); then
# the state stays (KEEP), becomes `value` (SET), or becomes `value` if it
# equals `expected` (COND).
ANY: Final = object()
IMPOSSIBLE: Final = object()  # a result no state explains, e.g. a cas that succeeded against
KEEP, SET, COND = 0, 1, 2
Step: TypeAlias = tuple[object, int, Value, Value]


def compile_op(op: KeyOp) -> Step:
    known = op.outcome is Outcome.OK
    match op.call:
        case Read():
            assert known and not isinstance(op.result, tuple)
            return (op.result, KEEP, None, None)
        case Write(value=v):
            return (ANY, SET, v, None)
        case Swap(new=v):
            if not known:
                return (ANY, SET, v, None)
            assert not isinstance(op.result, tuple)
            return (op.result, SET, v, None)
        case Cas(expected=e, new=v):
            if not known:
                return (ANY, COND, v, e)
            assert isinstance(op.result, tuple)
            succeeded, previous = op.result
            if succeeded != (previous == e):
                return (IMPOSSIBLE, KEEP, None, None)
            return (previous, SET if succeeded else KEEP, v, None)


def _unobservable(ops: Sequence[KeyOp], candidates: Iterable[int]) -> set[int]:
    """The UNKNOWN ops among `candidates` (indexes into `ops`) that can be left
    out without changing the verdict.

    An UNKNOWN op U that sets a value v that no OK op observes (as a read's
    value or the previous value of a cas or swap) and that no UNKNOWN cas
    expects: take a linearization that has U. Until the next op that sets a
    value, the value is v, so no OK op can come there but a write, and the
    UNKNOWN ops there are cas ops that did nothing (they do not expect v).
    That next op is an unconditional write (OK or UNKNOWN) or a swap whose
    result is unknown, so it does the same whatever the value before it:
    leaving out U and the cas ops after it gives a linearization too. The
    converse holds since U may never take effect. Leaving ops out can make
    more ops unobservable (fewer cas ops expecting a value): to a fixpoint.

    An UNKNOWN cas that expects the value it sets changes nothing in any
    state, and nothing sees its result: it goes too.
    """
    observed: set[Value] = set()
    for op in ops:
        if op.outcome is Outcome.OK:
            match op.call:
                case Read():
                    assert not isinstance(op.result, tuple)
                    observed.add(op.result)
                case Swap():
                    assert not isinstance(op.result, tuple)
                    observed.add(op.result)
                case Cas():
                    assert isinstance(op.result, tuple)
                    observed.add(op.result[1])
                case Write():
                    pass
    left = {i for i in candidates if ops[i].outcome is Outcome.UNKNOWN}
    out = {i for i in left if isinstance(c := ops[i].call, Cas) and c.expected == c.new}
    left -= out
    while True:
        expected = {c.expected for i in left if isinstance(c := ops[i].call, Cas)}
        new = {
            i for i in left if (v := _new_value(ops[i].call)) not in observed and v not in expected
        }
        if not new:
            return out
        out |= new
        left -= new


def _new_value(call: KeyCall) -> Value:
    match call:
        case Write(value=v) | Swap(new=v) | Cas(new=v):
            return v
        case Read():
            raise AssertionError("a read sets no value")


# --- the search --------------------------------------------------------------------


def check_key(
    key: bytes,
    ops: Iterable[KeyOp],
    *,
    initial: Value = None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> KeyCheck:
    """Check the ops of one key (FAILED ops and reads that are not OK are
    left out here, so the ops may come straight from a recording)."""
    kept = sorted(
        (
            op
            for op in ops
            if op.outcome is not Outcome.FAILED
            and not (isinstance(op.call, Read) and op.outcome is not Outcome.OK)
        ),
        key=lambda op: (op.invoke, op.complete, op.op_id),
    )
    left_out = _unobservable(kept, range(len(kept)))
    active = [i for i in range(len(kept)) if i not in left_out]
    verdict, steps, order = _search(kept, active, initial, max_steps)
    return KeyCheck(key, verdict, tuple(kept), frozenset(left_out), tuple(order), steps, initial)


def _search(
    ops: Sequence[KeyOp], active: Sequence[int], initial: Value, max_steps: int
) -> tuple[Verdict, int, list[int]]:
    """The search over the ops `active` (indexes into `ops`, in invoke
    order): the verdict, the steps taken, and the order found (see
    `KeyCheck.linearization`)."""
    # Events: (time, 0 call / 1 return, op index). UNKNOWN ops have no return
    # event: nothing forces them to be linearized, and the search stops once
    # every OK op is. At equal times a call sorts before a return.
    events: list[tuple[float, int, int]] = []
    known_left = 0
    for i in active:
        events.append((ops[i].invoke, 0, i))
        if ops[i].outcome is Outcome.OK:
            events.append((ops[i].complete, 1, i))
            known_left += 1
    events.sort()
    n = len(events)
    # A doubly linked list over nodes 0 (head), 1..n (events), n+1 (tail);
    # taking an op out and putting it back in LIFO order restores it exactly.
    nxt = [*range(1, n + 2), n + 1]
    prv = [0, *range(n + 1)]
    node_op = [-1] * (n + 2)
    node_call = [False] * (n + 2)
    ret_node = [-1] * (n + 2)  # call node -> its return node, -1 if none
    call_node: dict[int, int] = {}
    for node, (_, kind, i) in enumerate(events, start=1):
        node_op[node] = i
        if kind == 0:
            node_call[node] = True
            call_node[i] = node
        else:
            ret_node[call_node[i]] = node

    steps_of = {i: compile_op(ops[i]) for i in active}
    known = {i: ops[i].outcome is Outcome.OK for i in active}
    bit = {i: 1 << i for i in active}
    # UNKNOWN ops with the same effect ("twins": same value set, by a write
    # or a swap, or the same cas) are interchangeable: in any linearization
    # one can use the earlier invoked of two twins instead of the later, as
    # everything that had to precede the earlier one had to precede the
    # later one too, and nothing has to follow either. So the search only
    # linearizes an UNKNOWN op once its previous twin is linearized, which
    # cuts the subsets of k twins it could explore from 2**k to k + 1.
    twin_bit = dict.fromkeys(active, 0)  # op -> bit of its previous twin, 0 if none
    last_twin: dict[tuple[int, Value, Value], int] = {}
    for i in active:
        if not known[i]:
            _, mode, value, expected = steps_of[i]
            effect = (mode, value, expected)
            if effect in last_twin:
                twin_bit[i] = bit[last_twin[effect]]
            last_twin[effect] = i

    # OK ops that leave the value as they found it (reads, failed cas ops,
    # and the odd cas or swap that sets the value it saw): when one fits now
    # it may as well go now, since in any linearization from here it can be
    # moved to the front (everything that had to precede it already has, and
    # it changes nothing for the ops it jumps over). So the search takes such
    # an op first when there is one, and if that fails, so does the
    # configuration it left: no other order need be tried.
    keeps = {
        i: known[i] and (mode == KEEP or value == observes)
        for i, (observes, mode, value, _) in steps_of.items()
    }

    # Lowe's memo: the configurations (ops linearized, value) met so far.
    # One met before either failed or is on the stack, which cannot lead back
    # to it since the set of ops only grows along the stack.
    seen: set[tuple[int, Value]] = set()
    stack_nodes: list[int] = []
    stack_states: list[Value] = []
    stack_forced: list[bool] = []
    best: list[int] = []
    linearized = 0  # a bitset of op indexes
    state = initial
    fresh = True  # a new configuration: look for an op that keeps the value first
    node = nxt[0]
    steps = 0
    while known_left:
        if steps > max_steps:
            if len(stack_nodes) > len(best):
                best = stack_nodes[:]
            return Verdict.UNDECIDED, max_steps, [node_op[x] for x in best]
        backtrack = False
        if fresh:
            fresh = False
            x = nxt[0]
            while node_call[x]:
                steps += 1
                i = node_op[x]
                if keeps[i] and steps_of[i][0] == state:
                    config = (linearized | bit[i], state)
                    if config in seen:
                        backtrack = True
                    else:
                        seen.add(config)
                        stack_nodes.append(x)
                        stack_states.append(state)
                        stack_forced.append(True)
                        linearized = config[0]
                        known_left -= 1
                        fresh = True
                        p, q = prv[x], nxt[x]
                        nxt[p], prv[q] = q, p
                        r = ret_node[x]
                        p, q = prv[r], nxt[r]
                        nxt[p], prv[q] = q, p
                    break
                x = nxt[x]
            if fresh:
                continue
            node = nxt[0]
        if not backtrack:
            steps += 1
            i = node_op[node]
            if not node_call[node]:
                # This op cannot wait any longer and nothing before it led
                # anywhere.
                backtrack = True
            else:
                observes, mode, value, expected = steps_of[i]
                twin = twin_bit[i]
                if (observes is ANY or observes == state) and (not twin or linearized & twin):
                    if mode == KEEP:
                        new_state = state
                    elif mode == SET or state == expected:
                        new_state = value
                    else:
                        new_state = state
                    config = (linearized | bit[i], new_state)
                    # An UNKNOWN op that would change nothing now is better
                    # kept for later (or never).
                    if (known[i] or new_state != state) and config not in seen:
                        seen.add(config)
                        stack_nodes.append(node)
                        stack_states.append(state)
                        stack_forced.append(False)
                        state, linearized = new_state, config[0]
                        if known[i]:
                            known_left -= 1
                        fresh = True
                        # Take the op's events out of the list.
                        p, q = prv[node], nxt[node]
                        nxt[p], prv[q] = q, p
                        r = ret_node[node]
                        if r >= 0:
                            p, q = prv[r], nxt[r]
                            nxt[p], prv[q] = q, p
                        continue
                node = nxt[node]
                continue
        # The configuration failed: undo the last choice and try the next one,
        # or, if that choice was forced, undo the one before it too.
        if len(stack_nodes) > len(best):
            # Depth peaks just before a backtrack: snapshotting only here
            # keeps the copies few.
            best = stack_nodes[:]
        forced = True
        while forced:
            if not stack_nodes:
                return Verdict.VIOLATION, steps, [node_op[x] for x in best]
            node = stack_nodes.pop()
            state = stack_states.pop()
            forced = stack_forced.pop()
            i = node_op[node]
            linearized ^= bit[i]
            if known[i]:
                known_left += 1
            r = ret_node[node]
            if r >= 0:
                nxt[prv[r]] = r
                prv[nxt[r]] = r
            nxt[prv[node]] = node
            prv[nxt[node]] = node
        node = nxt[node]
    return Verdict.LINEARIZABLE, steps, [node_op[x] for x in stack_nodes]

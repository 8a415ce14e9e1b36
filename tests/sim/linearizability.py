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

What: the simulation records every client call in a `History` (`invoke` before
sending, `complete` with what came back); `check(history)` answers per key.
Linearizability is local (Herlihy & Wing): a history is linearizable iff the
sub-history of every object is, so each key is checked alone. Multi-key calls
(batch_get, scan, batch_put, delete_range, ...) are split into one operation
per key with the same times and outcome; they are not checked for atomicity
across keys, because the store does not promise it across regions.

The model of one key: a value `bytes | None` (None: absent), starting at the
`initial` value given to the `History` (None by default), and four operations:
`Read`, `Write` (put; delete is Write(None)), `Cas` (compare-and-set; also
put_if_absent) and `Swap` (get_and_put). An operation's outcome is `OK` (took
effect once between invoke and complete, result known), `FAILED` (definitely
did not take effect: left out) or `UNKNOWN` (a write that may take effect once
at any time after its invoke, even after it completed, or never; its result is
unknown). A read that did not complete with OK tells nothing and is left out;
a call still pending when the history ends counts as UNKNOWN.

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
and how many, tells more about a bug than the first one alone. On a violation
`KeyCheck.describe()` shows the longest linearizable prefix the search found,
the ops that could not come next and why, and the ops of the key up to there.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

Value: TypeAlias = bytes | None

DEFAULT_MAX_STEPS: Final = 2_000_000
"""Search steps per key before it is UNDECIDED: about half a second (0.2-0.3 us a
step) and, for a key with 3000 ops, up to ~80 MB of memo."""


class Outcome(enum.Enum):
    OK = "ok"
    """It took effect exactly once between invoke and complete; the result is known."""
    FAILED = "failed"
    """It definitely did not take effect."""
    UNKNOWN = "unknown"
    """A write that took effect once, at any time after invoke, or never."""


# --- the model of one key -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    """Result: the value (None: absent)."""


@dataclass(frozen=True, slots=True)
class Write:
    """Set the value (None: delete). Result: None."""

    value: Value


@dataclass(frozen=True, slots=True)
class Cas:
    """If the value is `expected`, set it to `new`. Result: (succeeded, value before)."""

    expected: Value
    new: Value


@dataclass(frozen=True, slots=True)
class Swap:
    """Set the value to `new`. Result: the value before."""

    new: Value


KeyCall: TypeAlias = Read | Write | Cas | Swap
OpResult: TypeAlias = bytes | tuple[bool, bytes | None] | None


# --- the calls a client makes ---------------------------------------------


def _keys_tuple(keys: Iterable[bytes]) -> tuple[bytes, ...]:
    return keys if isinstance(keys, tuple) else tuple(keys)


@dataclass(frozen=True, slots=True)
class Get:
    """Result: the value (None: absent)."""

    key: bytes


@dataclass(frozen=True, slots=True)
class BatchGet:
    """Result: a mapping of the keys that have a value to it."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", _keys_tuple(self.keys))


@dataclass(frozen=True, slots=True)
class Scan:
    """Keys in [start, end) (end b"": no bound), at most `limit`, descending
    from `end` when `reverse`. Result: a sequence of (key, value) pairs."""

    start: bytes
    end: bytes
    limit: int
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.limit <= 0:
            raise ValueError(f"scan limit must be positive, got {self.limit}")


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class BatchPut:
    """Not atomic across keys; the last of duplicate keys wins."""

    pairs: tuple[tuple[bytes, bytes], ...]

    def __post_init__(self) -> None:
        pairs = self.pairs
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        object.__setattr__(self, "pairs", tuple((k, v) for k, v in items))


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class BatchDelete:
    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", _keys_tuple(self.keys))


@dataclass(frozen=True, slots=True)
class DeleteRange:
    """Delete every key in [start, end) (end b"": no bound)."""

    start: bytes
    end: bytes


@dataclass(frozen=True, slots=True)
class CompareAndSet:
    """Result: (whether it was set, the value before)."""

    key: bytes
    expected: Value
    new: Value


@dataclass(frozen=True, slots=True)
class PutIfAbsent:
    """Result: None when it was set, else the value the key has."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class GetAndPut:
    """Result: the value before."""

    key: bytes
    value: bytes


Call: TypeAlias = (
    Get
    | BatchGet
    | Scan
    | Put
    | BatchPut
    | Delete
    | BatchDelete
    | DeleteRange
    | CompareAndSet
    | PutIfAbsent
    | GetAndPut
)

_READ_CALLS: Final = (Get, BatchGet, Scan)


# --- recording --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyOp:
    """One operation on one key, as the checker sees it. A multi-key call
    becomes one per key, all with its `op_id`, times and outcome."""

    op_id: int
    client: int
    key: bytes
    call: KeyCall
    outcome: Outcome
    result: OpResult
    """What came back when OK: see the `KeyCall` classes; ignored otherwise."""
    invoke: float
    complete: float
    """math.inf for a call that never completed."""
    source: Call | None = None
    """The client call it came from, for messages."""

    def __post_init__(self) -> None:
        if not self.complete >= self.invoke:
            raise ValueError(f"op {self.op_id}: complete {self.complete} < invoke {self.invoke}")
        if self.outcome is not Outcome.OK:
            return
        r = self.result
        match self.call:
            case Read() | Swap():
                ok = r is None or isinstance(r, bytes)
            case Cas():
                ok = (
                    isinstance(r, tuple)
                    and len(r) == 2
                    and isinstance(r[0], bool)
                    and (r[1] is None or isinstance(r[1], bytes))
                )
            case Write():
                ok = True
        if not ok:
            raise ValueError(f"op {self.op_id}: bad result {r!r} for {self.call!r}")


@dataclass(frozen=True, slots=True)
class Operation:
    """One client call as recorded; `outcome` None while it is pending."""

    op_id: int
    client: int
    call: Call
    invoke: float
    outcome: Outcome | None = None
    result: object = None
    complete: float = math.inf


class History:
    """The calls of a run. `keyspace` must hold every key a write may touch:
    a scan or delete_range says something about each of its keys in range."""

    __slots__ = ("_initial", "_key_ops", "_keyset", "_keyspace", "_ops")

    def __init__(
        self, keyspace: Iterable[bytes], initial: Mapping[bytes, bytes] | None = None
    ) -> None:
        self._keyspace: tuple[bytes, ...] = tuple(sorted(set(keyspace)))
        self._keyset: frozenset[bytes] = frozenset(self._keyspace)
        self._initial: dict[bytes, bytes] = dict(initial or {})
        self._ops: dict[int, Operation] = {}
        # Decomposed at completion, so a malformed result fails at the call
        # site that recorded it rather than in check().
        self._key_ops: dict[int, list[KeyOp]] = {}

    @property
    def keyspace(self) -> tuple[bytes, ...]:
        return self._keyspace

    def initial(self, key: bytes) -> Value:
        return self._initial.get(key)

    def invoke(self, client: int, call: Call, time: float) -> int:
        """Record a call about to be sent; returns its op id."""
        for key in _written_keys(call):
            if key not in self._keyset:
                raise ValueError(f"{describe_call(call)} writes {key!r}, not in the keyspace")
        op_id = len(self._ops)
        self._ops[op_id] = Operation(op_id, client, call, time)
        return op_id

    def complete(self, op_id: int, outcome: Outcome, result: object, time: float) -> None:
        """Record how call `op_id` ended (`result` is ignored unless OK)."""
        op = self._ops[op_id]
        if op.outcome is not None:
            raise ValueError(f"op {op_id} completed twice")
        if not time >= op.invoke:
            raise ValueError(f"op {op_id}: complete {time} < invoke {op.invoke}")
        done = Operation(op_id, op.client, op.call, op.invoke, outcome, result, time)
        self._key_ops[op_id] = _decompose(done, self._keyspace, self._keyset)
        self._ops[op_id] = done

    def operations(self) -> tuple[Operation, ...]:
        return tuple(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def key_ops(self) -> dict[bytes, list[KeyOp]]:
        """The per-key ops in invoke order; calls still pending count as UNKNOWN."""
        out: dict[bytes, list[KeyOp]] = {}
        for op in self._ops.values():
            kops = self._key_ops.get(op.op_id)
            if kops is None:
                kops = _decompose(op, self._keyspace, self._keyset)
            for kop in kops:
                out.setdefault(kop.key, []).append(kop)
        for kops in out.values():
            kops.sort(key=lambda k: (k.invoke, k.op_id))
        return dict(sorted(out.items()))


def _written_keys(call: Call) -> Iterable[bytes]:
    match call:
        case Put(key=k) | Delete(key=k) | CompareAndSet(key=k) | PutIfAbsent(key=k):
            return (k,)
        case GetAndPut(key=k):
            return (k,)
        case BatchPut(pairs=pairs):
            return (k for k, _ in pairs)
        case BatchDelete(keys=keys):
            return keys
        case _:
            # DeleteRange writes only keyspace keys, by definition.
            return ()


def _range_keys(keyspace: Sequence[bytes], lo: bytes, hi: bytes | None) -> Sequence[bytes]:
    """Keyspace keys in [lo, hi); hi None: no bound."""
    i = bisect.bisect_left(keyspace, lo)
    j = len(keyspace) if hi is None else bisect.bisect_left(keyspace, hi)
    return keyspace[i:j]


def _bytes_or_none(v: object, what: str) -> Value:
    if v is None or isinstance(v, bytes):
        return v
    raise ValueError(f"{what}: expected bytes or None, got {v!r}")


def _decompose(op: Operation, keyspace: Sequence[bytes], keyset: frozenset[bytes]) -> list[KeyOp]:
    outcome = Outcome.UNKNOWN if op.outcome is None else op.outcome
    call = op.call
    if outcome is Outcome.FAILED or (isinstance(call, _READ_CALLS) and outcome is not Outcome.OK):
        return []
    what = f"op {op.op_id} ({describe_call(call)})"
    res = op.result if outcome is Outcome.OK else None
    unset = (False, None)  # the result of a write whose result is unknown

    def kop(key: bytes, kcall: KeyCall, result: OpResult = None) -> KeyOp:
        return KeyOp(op.op_id, op.client, key, kcall, outcome, result, op.invoke, op.complete, call)

    match call:
        case Get(key=key):
            return [kop(key, Read(), _bytes_or_none(res, what))]
        case BatchGet(keys=keys):
            if not isinstance(res, Mapping):
                raise ValueError(f"{what}: expected a mapping, got {res!r}")
            found = {k: _bytes_or_none(v, what) for k, v in res.items()}
            # A key it returned but was not asked for still shows that key's value.
            asked = dict.fromkeys(keys) | dict.fromkeys(found)
            return [kop(k, Read(), found.get(k)) for k in asked]
        case Scan():
            return [kop(k, Read(), v) for k, v in _scan_reads(call, res, keyspace, keyset, what)]
        case Put(key=key, value=value):
            return [kop(key, Write(value))]
        case Delete(key=key):
            return [kop(key, Write(None))]
        case BatchPut(pairs=pairs):
            return [kop(k, Write(v)) for k, v in dict(pairs).items()]
        case BatchDelete(keys=keys):
            return [kop(k, Write(None)) for k in dict.fromkeys(keys)]
        case DeleteRange(start=start, end=end):
            return [kop(k, Write(None)) for k in _range_keys(keyspace, start, end or None)]
        case CompareAndSet(key=key, expected=expected, new=new):
            if outcome is Outcome.OK and not (
                isinstance(res, tuple) and len(res) == 2 and isinstance(res[0], bool)
            ):
                raise ValueError(f"{what}: expected (bool, previous), got {res!r}")
            cas_res = (res[0], _bytes_or_none(res[1], what)) if isinstance(res, tuple) else unset
            return [kop(key, Cas(expected, new), cas_res)]
        case PutIfAbsent(key=key, value=value):
            existing = _bytes_or_none(res, what)
            return [kop(key, Cas(None, value), (existing is None, existing))]
        case GetAndPut(key=key, value=value):
            return [kop(key, Swap(value), _bytes_or_none(res, what))]


def _scan_reads(
    scan: Scan, res: object, keyspace: Sequence[bytes], keyset: frozenset[bytes], what: str
) -> list[tuple[bytes, Value]]:
    if not isinstance(res, Sequence):
        raise ValueError(f"{what}: expected a list of (key, value), got {res!r}")
    pairs: list[tuple[bytes, bytes]] = []
    for p in res:
        if not (isinstance(p, tuple | list) and len(p) == 2 and isinstance(p[0], bytes)):
            raise ValueError(f"{what}: expected (key, value) pairs, got {p!r}")
        v = _bytes_or_none(p[1], what)
        if v is None:
            raise ValueError(f"{what}: a scan returned {p[0]!r} without a value")
        pairs.append((p[0], v))
    lo, hi = scan.start, scan.end or None
    if len(pairs) >= scan.limit:
        # It stopped at the limit: keys beyond its last one in scan direction
        # were not looked at, so their absence from the result says nothing.
        last = pairs[-1][0]
        if scan.reverse:
            lo = max(lo, last)
        else:
            hi = last + b"\x00" if hi is None else min(hi, last + b"\x00")
    covered = _range_keys(keyspace, lo, hi)
    returned: dict[bytes, list[bytes]] = {}
    for k, v in pairs:
        returned.setdefault(k, []).append(v)
    reads: list[tuple[bytes, Value]] = [(k, None) for k in covered if k not in returned]
    # Every returned pair is a read of its key, whether or not it was in range
    # or in the keyspace (then it is a value nobody wrote, and so a violation).
    reads += [(k, v) for k, vs in returned.items() for v in dict.fromkeys(vs)]
    return reads


# --- checking ---------------------------------------------------------------


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

    def describe(self, context: int = 30) -> str:
        """For a human: unless linearizable, the longest linearizable prefix
        found, the ops that could not come next and why, and the ops of the
        key around there (the last `context` ops up to it), one per line."""
        if self.ok:
            return (
                f"key {_fmt_value(self.key)}: linearizable "
                f"({len(self.ops)} ops, {self.steps} search steps)"
            )
        return _describe_failure(self, context)


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

    def describe(self, max_keys: int = 3, context: int = 30) -> str:
        """A summary line, then the details of up to `max_keys` failing keys
        (violations first)."""
        bad, undecided = self.violations, self.undecided
        n_ops = sum(len(k.ops) for k in self.keys)
        head = (
            f"{len(self.keys)} keys, {n_ops} ops, {self.steps} search steps: "
            f"{len(bad)} not linearizable, {len(undecided)} undecided"
        )
        failing = (bad + undecided)[:max_keys]
        lines = [head]
        if bad:
            lines.append("not linearizable: " + ", ".join(_fmt_value(k.key) for k in bad))
        if undecided:
            lines.append("undecided: " + ", ".join(_fmt_value(k.key) for k in undecided))
        lines += ["", *(k.describe(context) + "\n" for k in failing)]
        return "\n".join(lines).rstrip() + "\n"


def check(history: History, *, max_steps_per_key: int = DEFAULT_MAX_STEPS) -> CheckResult:
    """Check every key of `history`; see the module docstring."""
    return CheckResult(
        tuple(
            check_key(key, ops, initial=history.initial(key), max_steps=max_steps_per_key)
            for key, ops in history.key_ops().items()
        )
    )


# The model step of one op, compiled to (observes, mode, value, expected):
# the op fits only in a state equal to `observes` (any state if _ANY); then
# the state stays (_KEEP), becomes `value` (_SET), or becomes `value` if it
# equals `expected` (_COND).
_ANY: Final = object()
_IMPOSSIBLE: Final = object()  # a result no state explains, e.g. a cas that succeeded against
_KEEP, _SET, _COND = 0, 1, 2
_Step: TypeAlias = tuple[object, int, Value, Value]


def _compile(op: KeyOp) -> _Step:
    known = op.outcome is Outcome.OK
    match op.call:
        case Read():
            assert known and not isinstance(op.result, tuple)
            return (op.result, _KEEP, None, None)
        case Write(value=v):
            return (_ANY, _SET, v, None)
        case Swap(new=v):
            if not known:
                return (_ANY, _SET, v, None)
            assert not isinstance(op.result, tuple)
            return (op.result, _SET, v, None)
        case Cas(expected=e, new=v):
            if not known:
                return (_ANY, _COND, v, e)
            assert isinstance(op.result, tuple)
            succeeded, previous = op.result
            if succeeded != (previous == e):
                return (_IMPOSSIBLE, _KEEP, None, None)
            return (previous, _SET if succeeded else _KEEP, v, None)


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

    steps_of = {i: _compile(ops[i]) for i in active}
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
        i: known[i] and (mode == _KEEP or value == observes)
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
                if (observes is _ANY or observes == state) and (not twin or linearized & twin):
                    if mode == _KEEP:
                        new_state = state
                    elif mode == _SET or state == expected:
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


# --- messages ---------------------------------------------------------------


def _fmt_value(v: Value) -> str:
    if v is None:
        return "None"
    if len(v) > 24:
        return f"{v[:16]!r}...({len(v)} bytes)"
    return repr(v)


def _fmt_time(t: float) -> str:
    return "inf" if math.isinf(t) else repr(round(t, 9))


def _fmt_times(op: KeyOp) -> str:
    return f"[{_fmt_time(op.invoke)}, {_fmt_time(op.complete)}]"


def _fmt_range(start: bytes, end: bytes) -> str:
    return f"[{_fmt_value(start)}, {_fmt_value(end) if end else '+inf'})"


def describe_call(call: Call) -> str:
    """A client call, briefly."""
    match call:
        case Get(key=k):
            return f"get {_fmt_value(k)}"
        case BatchGet(keys=keys):
            return f"batch_get of {len(keys)} keys"
        case Scan(start=s, end=e, limit=limit, reverse=rev):
            return f"scan {_fmt_range(s, e)} limit {limit}{' reverse' if rev else ''}"
        case Put(key=k, value=v):
            return f"put {_fmt_value(k)} {_fmt_value(v)}"
        case BatchPut(pairs=pairs):
            return f"batch_put of {len(pairs)} keys"
        case Delete(key=k):
            return f"delete {_fmt_value(k)}"
        case BatchDelete(keys=keys):
            return f"batch_delete of {len(keys)} keys"
        case DeleteRange(start=s, end=e):
            return f"delete_range {_fmt_range(s, e)}"
        case CompareAndSet(key=k, expected=x, new=v):
            return f"compare_and_set {_fmt_value(k)} {_fmt_value(x)} -> {_fmt_value(v)}"
        case PutIfAbsent(key=k, value=v):
            return f"put_if_absent {_fmt_value(k)} {_fmt_value(v)}"
        case GetAndPut(key=k, value=v):
            return f"get_and_put {_fmt_value(k)} {_fmt_value(v)}"


def describe_op(op: KeyOp, times_width: int = 0) -> str:
    """One per-key op on one line: id, client, times (padded to
    `times_width`), outcome, call, result."""
    match op.call:
        case Read():
            text = "read"
        case Write(value=None):
            text = "delete"
        case Write(value=v):
            text = f"write {_fmt_value(v)}"
        case Cas(expected=x, new=v):
            text = f"cas {_fmt_value(x)} -> {_fmt_value(v)}"
        case Swap(new=v):
            text = f"swap {_fmt_value(v)}"
    r = op.result
    if op.outcome is not Outcome.OK or isinstance(op.call, Write):
        pass
    elif isinstance(r, tuple):
        text += f" => {'set' if r[0] else 'not set'}, was {_fmt_value(r[1])}"
    elif isinstance(op.call, Read):
        text += f" => {_fmt_value(r)}"
    else:
        text += f" => was {_fmt_value(r)}"
    line = (
        f"op {op.op_id:<5} client {op.client:<3} {_fmt_times(op):<{times_width}}  "
        f"{op.outcome.value:<7}  {text}"
    )
    src = op.source
    if src is not None and not isinstance(src, Get | Put | Delete | CompareAndSet):
        line += f"  (from {describe_call(src)})"
    return line


def _why_not(step: _Step, state: Value) -> str:
    observes = step[0]
    if observes is _IMPOSSIBLE:
        return "its result is impossible (set iff the value before was the one expected)"
    if observes is _ANY or observes == state:
        return "it fits, but nothing after it does"
    assert observes is None or isinstance(observes, bytes)
    return f"it saw {_fmt_value(observes)}, but the value was {_fmt_value(state)}"


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _describe_failure(kc: KeyCheck, context: int, after: int = 5) -> str:
    ops = kc.ops
    prefix = kc.linearization
    state = kc.initial
    for i in prefix:
        _, mode, value, expected = _compile(ops[i])
        if mode == _SET or (mode == _COND and state == expected):
            state = value
    placed = {i: pos for pos, i in enumerate(prefix, start=1)}
    rest = [i for i in range(len(ops)) if i not in placed and i not in kc.left_out]
    # Where the search got stuck: the first OK op left over had to be
    # linearized by its completion; the ops invoked by then could come next.
    deadline = min(
        (ops[i].complete for i in rest if ops[i].outcome is Outcome.OK), default=math.inf
    )
    upto = [i for i in range(len(ops)) if ops[i].invoke <= deadline]
    shown = upto[max(0, len(upto) - context) :]
    shown += [i for i in range(len(ops)) if ops[i].invoke > deadline][:after]
    width = max((len(_fmt_times(ops[i])) for i in shown), default=0)

    n_unknown = sum(o.outcome is Outcome.UNKNOWN for o in ops)
    if kc.verdict is Verdict.VIOLATION:
        head = "NOT linearizable: no order of its ops fits the model"
    else:
        head = f"UNDECIDED: the search gave up after {kc.steps} steps"
    lines = [
        f"key {_fmt_value(kc.key)}: {head}",
        f"  {_plural(len(ops), 'op')}"
        + (f" ({n_unknown} unknown, {len(kc.left_out)} of them unobservable)" if n_unknown else "")
        + f", initial value {_fmt_value(kc.initial)}, {kc.steps} search steps",
        (
            f"  The longest linearizable prefix found places {_plural(len(prefix), 'op')}; after it"
            f" the value is {_fmt_value(state)}."
        ),
    ]
    if kc.verdict is Verdict.VIOLATION:
        lines.append("  None of the ops that could come next fits:")
        for i in rest:
            if ops[i].invoke <= deadline and ops[i].outcome is Outcome.OK:
                lines.append(f"    {describe_op(ops[i], width)}")
                lines.append(f"        {_why_not(_compile(ops[i]), state)}")
    lines.append(
        "  Ops of the key around there, in invoke order (#n: n-th in that prefix,"
        " --: not in it,\n  ~~: UNKNOWN, left out as nobody could see its effect):"
    )
    for n, i in enumerate(shown):
        if n == 0 and i > 0:
            lines.append(f"    ... {_plural(i, 'earlier op')}")
        if n > 0 and ops[i].invoke > deadline >= ops[shown[n - 1]].invoke:
            lines.append("    ... where it got stuck; later ops:")
        mark = f"#{placed[i]}" if i in placed else "~~" if i in kc.left_out else "--"
        lines.append(f"    {mark:>6}  {describe_op(ops[i], width)}")
    if shown and shown[-1] < len(ops) - 1:
        lines.append(f"    ... {_plural(len(ops) - 1 - shown[-1], 'later op')}")
    return "\n".join(lines)

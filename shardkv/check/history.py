"""What the clients of a simulation did, recorded for the linearizability
checker (`shardkv.check.linearizability`).

The simulation records every client call in a `History`: `invoke` before
sending, `complete` with what came back. Linearizability is local (Herlihy &
Wing): a history is linearizable iff the sub-history of every object is, so
the checker looks at one key at a time, and the history splits every call
into one `KeyOp` per key it touched (`History.key_ops()`). Multi-key calls
(batch_get, scan, batch_put, delete_range, ...) become one operation per key
with the same times and outcome; they are not checked for atomicity across
keys, because the store does not promise it across regions.

The model of one key: a value `bytes | None` (None: absent), starting at the
`initial` value given to the `History` (None by default), and four operations:
`Read`, `Write` (put; delete is Write(None)), `Cas` (compare-and-set; also
put_if_absent) and `Swap` (get_and_put). An operation's outcome is `OK` (took
effect once between invoke and complete, result known), `FAILED` (definitely
did not take effect: left out) or `UNKNOWN` (a write that may take effect once
at any time after its invoke, even after it completed, or never; its result is
unknown). A read that did not complete with OK tells nothing and is left out;
a call still pending when the history ends counts as UNKNOWN.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

Value: TypeAlias = bytes | None


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
    """Result: the value (None: absent). `follower`: served by any replica
    after the leader confirmed a read index (as linearizable)."""

    key: bytes
    follower: bool = False


@dataclass(frozen=True, slots=True)
class BatchGet:
    """Result: a mapping of the keys that have a value to it."""

    keys: tuple[bytes, ...]
    follower: bool = False

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


# --- splitting a call into per-key ops -------------------------------------------


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


# --- how a call reads in messages ---------------------------------------------------


def fmt_value(v: Value) -> str:
    """A value (or key) for a message, cut short when long."""
    if v is None:
        return "None"
    if len(v) > 24:
        return f"{v[:16]!r}...({len(v)} bytes)"
    return repr(v)


def _fmt_range(start: bytes, end: bytes) -> str:
    return f"[{fmt_value(start)}, {fmt_value(end) if end else '+inf'})"


def describe_call(call: Call) -> str:
    """A client call, briefly."""
    match call:
        case Get(key=k, follower=f):
            return f"get {fmt_value(k)}{' (follower read)' if f else ''}"
        case BatchGet(keys=keys, follower=f):
            return f"batch_get of {len(keys)} keys{' (follower read)' if f else ''}"
        case Scan(start=s, end=e, limit=limit, reverse=rev):
            return f"scan {_fmt_range(s, e)} limit {limit}{' reverse' if rev else ''}"
        case Put(key=k, value=v):
            return f"put {fmt_value(k)} {fmt_value(v)}"
        case BatchPut(pairs=pairs):
            return f"batch_put of {len(pairs)} keys"
        case Delete(key=k):
            return f"delete {fmt_value(k)}"
        case BatchDelete(keys=keys):
            return f"batch_delete of {len(keys)} keys"
        case DeleteRange(start=s, end=e):
            return f"delete_range {_fmt_range(s, e)}"
        case CompareAndSet(key=k, expected=x, new=v):
            return f"compare_and_set {fmt_value(k)} {fmt_value(x)} -> {fmt_value(v)}"
        case PutIfAbsent(key=k, value=v):
            return f"put_if_absent {fmt_value(k)} {fmt_value(v)}"
        case GetAndPut(key=k, value=v):
            return f"get_and_put {fmt_value(k)} {fmt_value(v)}"

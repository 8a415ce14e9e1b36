"""The linearizability checker's verdicts in words, for the failure report of
a simulation and for a test that fails.

`describe_check_result` sums up a whole history (how many keys, ops and
search steps, which keys failed) and details the first failing keys;
`describe_key_check` details one key: unless it is linearizable, the longest
linearizable prefix the search found, the ops that could not come next and
why, and the ops of the key around there, one per line (`describe_op`).
"""

from __future__ import annotations

import math

from shardkv.check.history import (
    Cas,
    CompareAndSet,
    Delete,
    Get,
    KeyOp,
    Outcome,
    Put,
    Read,
    Swap,
    Value,
    Write,
    describe_call,
    fmt_value,
)
from shardkv.check.linearizability import (
    ANY,
    COND,
    IMPOSSIBLE,
    SET,
    CheckResult,
    KeyCheck,
    Step,
    Verdict,
    compile_op,
)


def describe_check_result(result: CheckResult, max_keys: int = 3, context: int = 30) -> str:
    """A summary line, then the details of up to `max_keys` failing keys
    (violations first)."""
    bad, undecided = result.violations, result.undecided
    n_ops = sum(len(k.ops) for k in result.keys)
    head = (
        f"{len(result.keys)} keys, {n_ops} ops, {result.steps} search steps: "
        f"{len(bad)} not linearizable, {len(undecided)} undecided"
    )
    failing = (bad + undecided)[:max_keys]
    lines = [head]
    if bad:
        lines.append("not linearizable: " + ", ".join(fmt_value(k.key) for k in bad))
    if undecided:
        lines.append("undecided: " + ", ".join(fmt_value(k.key) for k in undecided))
    lines += ["", *(describe_key_check(k, context) + "\n" for k in failing)]
    return "\n".join(lines).rstrip() + "\n"


def describe_key_check(kc: KeyCheck, context: int = 30) -> str:
    """Unless linearizable, the longest linearizable prefix found, the ops
    that could not come next and why, and the ops of the key around there
    (the last `context` ops up to it), one per line."""
    if kc.ok:
        return f"key {fmt_value(kc.key)}: linearizable ({len(kc.ops)} ops, {kc.steps} search steps)"
    return _describe_failure(kc, context)


def describe_op(op: KeyOp, times_width: int = 0) -> str:
    """One per-key op on one line: id, client, times (padded to
    `times_width`), outcome, call, result."""
    match op.call:
        case Read():
            text = "read"
        case Write(value=None):
            text = "delete"
        case Write(value=v):
            text = f"write {fmt_value(v)}"
        case Cas(expected=x, new=v):
            text = f"cas {fmt_value(x)} -> {fmt_value(v)}"
        case Swap(new=v):
            text = f"swap {fmt_value(v)}"
    r = op.result
    if op.outcome is not Outcome.OK or isinstance(op.call, Write):
        pass
    elif isinstance(r, tuple):
        text += f" => {'set' if r[0] else 'not set'}, was {fmt_value(r[1])}"
    elif isinstance(op.call, Read):
        text += f" => {fmt_value(r)}"
    else:
        text += f" => was {fmt_value(r)}"
    line = (
        f"op {op.op_id:<5} client {op.client:<3} {_fmt_times(op):<{times_width}}  "
        f"{op.outcome.value:<7}  {text}"
    )
    src = op.source
    if src is not None and not isinstance(src, Get | Put | Delete | CompareAndSet):
        line += f"  (from {describe_call(src)})"
    return line


def _fmt_time(t: float) -> str:
    return "inf" if math.isinf(t) else repr(round(t, 9))


def _fmt_times(op: KeyOp) -> str:
    return f"[{_fmt_time(op.invoke)}, {_fmt_time(op.complete)}]"


def _why_not(step: Step, state: Value) -> str:
    observes = step[0]
    if observes is IMPOSSIBLE:
        return "its result is impossible (set iff the value before was the one expected)"
    if observes is ANY or observes == state:
        return "it fits, but nothing after it does"
    assert observes is None or isinstance(observes, bytes)
    return f"it saw {fmt_value(observes)}, but the value was {fmt_value(state)}"


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _describe_failure(kc: KeyCheck, context: int, after: int = 5) -> str:
    ops = kc.ops
    prefix = kc.linearization
    state = kc.initial
    for i in prefix:
        _, mode, value, expected = compile_op(ops[i])
        if mode == SET or (mode == COND and state == expected):
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
        f"key {fmt_value(kc.key)}: {head}",
        f"  {_plural(len(ops), 'op')}"
        + (f" ({n_unknown} unknown, {len(kc.left_out)} of them unobservable)" if n_unknown else "")
        + f", initial value {fmt_value(kc.initial)}, {kc.steps} search steps",
        (
            f"  The longest linearizable prefix found places {_plural(len(prefix), 'op')}; after it"
            f" the value is {fmt_value(state)}."
        ),
    ]
    if kc.verdict is Verdict.VIOLATION:
        lines.append("  None of the ops that could come next fits:")
        for i in rest:
            if ops[i].invoke <= deadline and ops[i].outcome is Outcome.OK:
                lines.append(f"    {describe_op(ops[i], width)}")
                lines.append(f"        {_why_not(compile_op(ops[i]), state)}")
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

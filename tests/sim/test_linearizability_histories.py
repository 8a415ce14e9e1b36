"""The linearizability checker on hand-made histories of one key: ones it must
accept, ones it must reject (each a bug the simulation looks for), and how
it explains a rejection."""

from __future__ import annotations

import pytest

from shardkv.check.explain import describe_key_check
from shardkv.check.history import Cas, Outcome, Read, Swap, Value, Write
from shardkv.check.linearizability import Verdict, check_key
from tests.sim.linearizability_reference import FAILED, OK, UNKNOWN, numbered, op, verdict

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
    text = describe_key_check(kc)
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

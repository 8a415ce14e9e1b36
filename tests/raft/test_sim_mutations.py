"""The simulator's checker can fail: deliberately broken Raft cores are caught.

Each test patches one rule of the core (with `monkeypatch`, undone after
the test), searches a bounded range of seeds of a chaos flavor suited to the
bug until the checker reports a safety violation, checks the violation is
one the bug should cause, and replays the catching seed on the correct core
to show the violation came from the mutation. Seeds that caught each
mutation when this was written are in the comments (they move whenever the
simulator's use of randomness changes, hence the search).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from raft.core import Raft
from raft.errors import CompactedError, UnavailableError
from raft.log import RaftLog
from raft.read_only import ReadAnswer
from raft.types import NONE, Entry, MessageType
from tests.raft.raftsim import Options, SafetyViolation, SimulationFailure, run_random


def _hunt(
    search: range,
    steps: int,
    *,
    flavor: str | None = None,
    options: Options | None = None,
) -> tuple[int, SafetyViolation]:
    """The first seed of `search` whose run reports a safety violation."""
    other: list[str] = []
    for seed in search:
        try:
            run_random(seed, steps, flavor=flavor, options=options)
        except SafetyViolation as e:
            return seed, e
        except SimulationFailure as e:
            other.append(f"{seed}: {type(e).__name__}: {e.reason[:100]}")
    raise AssertionError(
        f"no safety violation in seeds {search.start}..{search.stop - 1}; other failures: "
        f"{other[:5]}"
    )


def _caught(
    monkeypatch: pytest.MonkeyPatch,
    target: Any,
    name: str,
    broken: Callable[..., Any],
    expected: set[str],
    search: range,
    steps: int,
    **kw: Any,
) -> None:
    with monkeypatch.context() as m:
        m.setattr(target, name, broken)
        seed, violation = _hunt(search, steps, **kw)
    print(f"{name}: seed {seed} caught: {violation.reason}")
    assert violation.invariant in expected, violation
    assert f"seed={seed}" in str(violation) and "reproduce:" in str(violation)
    # The same seed on the correct core is fine.
    run_random(seed, steps, **kw)


def test_committing_an_older_terms_entry_by_counting_replicas_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Break Raft §5.4.2 (Figure 8) in `RaftLog.maybe_commit`. Harmful only
    when a leader's old-term entries reach a quorum before its own entry
    does, and a node holding a conflicting newer entry wins next: one entry
    per append, and a nemesis that kills or cuts off new leaders.
    (First caught by seed 52 of 300 at 5000 steps when written: about 1 seed in
    33 catches it.)"""

    def commit_by_counting(self: RaftLog, max_index: int, term: int) -> bool:
        if max_index > self.committed and self.term_or_zero(max_index) > 0:
            self.commit_to(max_index)
            return True
        return False

    _caught(
        monkeypatch,
        RaftLog,
        "maybe_commit",
        commit_by_counting,
        {"leader-completeness", "committed-entry-changed", "state-machine-safety"},
        range(300),
        5000,
        flavor="leader-hunter",
        options=Options(max_size_per_msg=1, max_inflight=1),
    )


def test_granting_a_second_vote_in_a_term_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that forgets whom it voted for. (Seed 0 when written.)"""
    grant = Raft._handle_vote_request

    def forgetful(self: Raft, m: Any) -> None:
        if m.type == MessageType.VOTE:
            self.vote = NONE
            self.lead = NONE
        grant(self, m)

    _caught(
        monkeypatch,
        Raft,
        "_handle_vote_request",
        forgetful,
        {"vote-once", "election-safety"},
        range(100),
        2000,
    )


def test_counting_a_rejected_vote_as_granted_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate that wins without a quorum: two leaders in a term, or a
    leader missing committed entries. (Seed 0 when written.)"""
    poll = Raft._poll

    def optimistic(self: Raft, node_id: int, granted: bool) -> Any:
        return poll(self, node_id, True)

    _caught(
        monkeypatch,
        Raft,
        "_poll",
        optimistic,
        {"election-safety", "leader-completeness"},
        range(100),
        2000,
    )


def test_acknowledging_before_the_write_is_durable_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Followers' votes and acks leave with `messages`, before the write:
    a crash then loses an entry a quorum was counted for. Needs crashes
    between a Ready and its write, and power failures. (Seed 27 when written;
    about 1 seed in 10 catches it.)"""

    def send_early(self: Raft, m: Any) -> None:
        self.msgs.append(m)

    _caught(
        monkeypatch,
        Raft,
        "_send",
        send_early,
        {"leader-completeness", "committed-entry-changed", "state-machine-safety", "vote-once"},
        range(200),
        2000,
        flavor="crashy",
    )


def test_a_heartbeat_committing_past_the_followers_match_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader that tells a follower to commit up to its own commit index,
    although the follower's log may not match that far. (Seed 8 when
    written.)"""

    def eager_heartbeat(self: Raft, to: int, ctx: bytes) -> None:
        self._send(self._msg(MessageType.HEARTBEAT, to, commit=self.log.committed, context=ctx))

    _caught(
        monkeypatch,
        Raft,
        "_send_heartbeat",
        eager_heartbeat,
        {"committed-entry-changed", "state-machine-safety", "log-matching"},
        range(100),
        2000,
    )


def test_reading_without_confirming_leadership_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """ReadIndex answered at once, without a heartbeat round: a deposed
    leader serves a stale read. (Seed 0 when written.)"""

    def read_at_once(self: Raft, from_: int, ctx: bytes) -> None:
        self._answer_read(ReadAnswer(from_, ctx, self.log.committed))

    _caught(
        monkeypatch,
        Raft,
        "_handle_read_index",
        read_at_once,
        {"read-linearizability"},
        range(200),
        2000,
    )


def test_keeping_a_conflicting_entry_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower that takes an entry it already holds at an index as
    matching, whatever its term: it keeps a stale entry and acknowledges
    the leader's. (Seed 0 when written.)"""

    def lenient(self: RaftLog, ents: tuple[Entry, ...]) -> int:
        for e in ents:
            try:
                self.term(e.index)
            except (CompactedError, UnavailableError):
                return e.index
        return 0

    _caught(
        monkeypatch,
        RaftLog,
        "find_conflict",
        lenient,
        {"log-matching", "committed-entry-changed", "state-machine-safety", "leader-completeness"},
        range(100),
        2000,
    )

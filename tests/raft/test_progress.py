"""Flow control and the leader's view of one follower (raft.inflights,
raft.progress): the state machine probe / replicate / snapshot."""

from __future__ import annotations

import pytest

from raft.inflights import Inflights
from raft.progress import Progress, ProgressState

PROBE, REPLICATE, SNAPSHOT = ProgressState.PROBE, ProgressState.REPLICATE, ProgressState.SNAPSHOT


# -- inflights ---------------------------------------------------------------------


def test_an_inflights_window_fills_by_count() -> None:
    w = Inflights(3)
    for i in (5, 6, 7):
        assert not w.full()
        w.add(i, 100)
    assert w.full() and w.count() == 3


def test_an_inflights_window_fills_by_bytes() -> None:
    w = Inflights(10, max_bytes=250)
    w.add(1, 100)
    w.add(2, 100)
    assert not w.full()
    w.add(3, 100)  # the message that crosses the limit is still accepted
    assert w.full() and w.bytes == 300


def test_acknowledging_an_index_frees_every_message_up_to_it() -> None:
    w = Inflights(10, max_bytes=1000)
    for i in (3, 5, 8, 9):
        w.add(i, 10)
    w.free_le(6)
    assert w.count() == 2 and w.bytes == 20
    w.free_le(4)  # stale: nothing left at or below 4
    assert w.count() == 2
    w.free_le(100)
    assert w.count() == 0 and w.bytes == 0


def test_inflights_refuse_misuse() -> None:
    w = Inflights(1)
    w.add(5, 1)
    with pytest.raises(AssertionError):
        w.add(6, 1)  # full
    w.reset()
    w.add(5, 1)
    w2 = Inflights(3)
    w2.add(5, 1)
    with pytest.raises(AssertionError):
        w2.add(5, 1)  # not increasing
    with pytest.raises(ValueError, match="must be positive"):
        Inflights(0)


# -- progress --------------------------------------------------------------------


def fresh(next_index: int = 6, match: int = 0, size: int = 2) -> Progress:
    return Progress(next_index, Inflights(size), match=match)


def test_a_probe_sends_one_append_at_a_time() -> None:
    pr = fresh()
    assert pr.state == PROBE and not pr.is_paused()
    pr.sent_entries(3, 30)
    assert pr.is_paused()
    assert pr.next == 6  # a probe does not advance next


def test_an_acknowledgement_moves_match_and_next_and_unpauses() -> None:
    pr = fresh()
    pr.sent_entries(1, 10)
    assert pr.maybe_update(7)
    assert (pr.match, pr.next) == (7, 8) and not pr.is_paused()
    assert not pr.maybe_update(7)  # stale
    assert not pr.maybe_update(3)


def test_replicating_streams_within_the_inflights_window() -> None:
    pr = fresh(match=5)
    pr.become_replicate()
    assert pr.next == 6
    pr.sent_entries(2, 20)  # entries 6, 7
    assert pr.next == 8 and not pr.is_paused()
    pr.sent_entries(1, 10)  # entry 8: the window (2 messages) is full
    assert pr.is_paused() and pr.inflights.count() == 2
    pr.sent_entries(0, 0)  # an empty append (to unstick a follower) fits
    assert pr.is_paused() and pr.next == 9
    pr.maybe_update(7)
    pr.inflights.free_le(7)
    pr.sent_entries(0, 0)
    assert not pr.is_paused()


def test_a_rejection_while_replicating_falls_back_to_match() -> None:
    pr = fresh(match=5)
    pr.become_replicate()
    pr.sent_entries(3, 30)  # 6..8
    assert not pr.maybe_decr_to(5, 0)  # stale: at or below match
    assert pr.maybe_decr_to(8, 2)
    assert pr.next == 6  # match + 1, whatever the hint


def test_a_rejection_while_probing_uses_the_hint_but_never_goes_below_match() -> None:
    pr = fresh(next_index=10, match=3)
    pr.sent_entries(1, 10)
    assert not pr.maybe_decr_to(7, 2)  # not the outstanding probe (at 9)
    assert pr.maybe_decr_to(9, 6)
    assert pr.next == 7 and not pr.is_paused()
    pr.sent_entries(1, 10)
    assert pr.maybe_decr_to(6, 0)
    assert pr.next == 4  # match + 1


def test_a_snapshot_pauses_the_follower_until_reported() -> None:
    pr = fresh(match=3)
    pr.become_snapshot(20)
    assert pr.state == SNAPSHOT and pr.is_paused()
    assert pr.next == 21 and pr.pending_snapshot == 20
    pr.become_probe()  # reported applied: probe after the snapshot
    assert pr.state == PROBE and pr.next == 21


def test_a_failed_snapshot_probes_again_from_match() -> None:
    pr = fresh(match=3)
    pr.become_snapshot(20)
    pr.pending_snapshot = 0  # what report_snapshot(failure) does first
    pr.become_probe()
    assert pr.next == 4


def test_the_commit_index_is_resent_only_if_it_can_still_move_the_follower() -> None:
    pr = fresh(match=5)
    pr.become_replicate()
    pr.sent_entries(2, 20)  # next = 8
    pr.sent_commit = 7
    assert not pr.can_bump_commit(9)  # commit 7 already covers up to next - 1
    pr.sent_commit = 5
    assert pr.can_bump_commit(6)
    assert not pr.can_bump_commit(5)

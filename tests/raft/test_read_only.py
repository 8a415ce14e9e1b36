"""The ReadIndex queue (raft.read_only)."""

from __future__ import annotations

from raft.read_only import ReadOnly


def test_a_duplicate_context_is_not_queued_twice() -> None:
    ro = ReadOnly()
    assert ro.add_request(5, 2, b"a")
    assert not ro.add_request(7, 3, b"a")
    assert ro.pending[b"a"].index == 5
    assert ro.queue == [b"a"]


def test_acknowledgements_are_counted_per_context() -> None:
    ro = ReadOnly()
    ro.add_request(5, 0, b"a")
    assert ro.recv_ack(1, b"a") == {1: True}
    assert ro.recv_ack(2, b"a") == {1: True, 2: True}
    assert ro.recv_ack(2, b"unknown") is None


def test_advancing_releases_every_read_queued_up_to_the_acknowledged_one_in_order() -> None:
    ro = ReadOnly()
    for i, ctx in enumerate([b"a", b"b", b"c"]):
        ro.add_request(10 + i, 0, ctx)
    assert ro.last_pending_ctx() == b"c"
    released = ro.advance(b"b")
    assert [(r.ctx, r.index) for r in released] == [(b"a", 10), (b"b", 11)]
    assert ro.queue == [b"c"] and list(ro.pending) == [b"c"]
    assert ro.advance(b"a") == []  # already released
    assert [r.ctx for r in ro.advance(b"c")] == [b"c"]
    assert ro.last_pending_ctx() is None


def test_a_new_request_marks_a_heartbeat_round_as_needed() -> None:
    ro = ReadOnly()
    assert not ro.unbroadcast
    ro.add_request(1, 0, b"a")
    assert ro.unbroadcast

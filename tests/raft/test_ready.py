"""The driver contract of `RaftNode` (see `raft.node`): what a Ready may ask
for, and in which order. Regression tests for bugs found in review."""

from __future__ import annotations

from raft import (
    Config,
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    RaftNode,
    Role,
    Snapshot,
    SnapshotMetadata,
)
from tests.raft.helpers import booted_storage, write_ready


def _node(node_id: int, cs: ConfState, index: int = 2) -> tuple[RaftNode, MemoryStorage]:
    storage = booted_storage(cs, index)
    return RaftNode(Config(id=node_id, election_ticks=3), storage), storage


def test_no_message_leaves_before_a_new_term_is_durable() -> None:
    # A single voter becomes leader, and takes a proposal, within one Ready.
    # Had its append to the learner gone out before the term was written, a
    # crash would let it be elected again in the same term and append a
    # different entry at the same index (see testdata/durability.txt).
    node, _ = _node(1, ConfState(voters=(1,), learners=(2,)))
    node.campaign()
    node.propose(b"a")
    rd = node.ready()
    assert node.role == Role.LEADER
    assert rd.hard_state is not None and rd.hard_state.term == 2
    assert rd.must_sync
    assert rd.messages == ()
    assert [m.type for m in rd.persisted_messages] == [MessageType.APPEND]


def test_a_leader_appends_before_its_write_once_its_term_is_durable() -> None:
    node, storage = _node(1, ConfState(voters=(1,), learners=(2,)))
    node.campaign()
    rd = node.ready()
    write_ready(storage, rd)
    node.advance(rd)
    node.propose(b"a")
    rd = node.ready()
    assert rd.hard_state is None or rd.hard_state.term == 2
    assert [m.type for m in rd.messages] == [MessageType.APPEND]
    assert rd.persisted_messages == ()


def test_an_installed_snapshot_is_written_durably_and_leaves_nothing_to_do() -> None:
    # Once the snapshot is installed the node is applied up to its index;
    # before the fix, committed > applied stayed true with no entries to
    # hand out, and has_ready() returned an empty Ready forever.
    follower, storage = _node(2, ConfState(voters=(1, 2)))
    snap = Snapshot(
        metadata=SnapshotMetadata(index=10, term=1, conf_state=ConfState(voters=(1, 2)))
    )
    follower.step(Message(type=MessageType.SNAPSHOT, to=2, from_=1, term=1, snapshot=snap))
    rd = follower.ready()
    assert rd.snapshot == snap
    assert rd.committed_entries == ()
    # The acknowledgement vouches for the snapshot: it must be written durably.
    assert rd.hard_state is not None and rd.hard_state.term == 1  # no new term or vote
    assert rd.must_sync
    assert rd.messages == ()
    assert [m.index for m in rd.persisted_messages] == [10]
    write_ready(storage, rd)
    follower.advance(rd)
    assert follower.applied_index == 10
    assert not follower.has_ready()

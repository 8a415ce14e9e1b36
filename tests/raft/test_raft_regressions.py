"""Small deterministic tests for bugs of `raft/` that the simulator (or a
review) found.

Each test drives `RaftNode`s by hand, message by message, to the exact
situation of the bug; the simulator seed that found it, if any, is named in
the docstring (it may no longer reproduce once the simulator changes).
"""

from __future__ import annotations

import pytest

from raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RaftNode,
    Role,
    Snapshot,
    SnapshotMetadata,
)
from tests.raft.helpers import booted_storage, write_ready
from tests.raft.scenario import Env

VOTERS_123 = ConfState(voters=(1, 2, 3))


def _bootstrapped(nid: int, cs: ConfState = VOTERS_123) -> tuple[RaftNode, MemoryStorage]:
    """A node whose storage starts from a snapshot at 1/1 holding `cs`."""
    st = booted_storage(cs)
    return RaftNode(Config(id=nid, applied=1), st), st


def test_snapshot_is_refused_while_handed_out_entries_are_being_applied() -> None:
    """Simulator seed 83 (membership): a follower took a Ready whose committed
    entries held a conf change (entering a joint config); before it applied
    them, a snapshot arrived and `_restore` swapped in the snapshot's config.
    Applying the conf change then failed against that config ("already
    joint"), so this follower skipped a change every other node applied."""
    rn, st = _bootstrapped(2)
    enter_joint = ConfChange(
        (
            ConfChangeSingle(ConfChangeType.ADD_NODE, 4),
            ConfChangeSingle(ConfChangeType.REMOVE_NODE, 1),
        )
    )
    cc_entry = Entry(term=2, index=2, type=EntryType.CONF_CHANGE, data=enter_joint.encode())
    append = Message(
        MessageType.APPEND,
        to=2,
        from_=1,
        term=2,
        log_term=1,
        index=1,
        entries=(cc_entry,),
        commit=2,
    )
    rn.step(append)
    rd = rn.ready()
    write_ready(st, rd)  # not advanced: the application is still applying
    assert [e.index for e in rd.committed_entries] == [2]

    # The leader meanwhile compacted past index 2: a snapshot at 5 arrives
    # while the application is still applying index 2.
    joint = ConfState(voters=(2, 3, 4), voters_outgoing=(1, 2, 3), auto_leave=True)
    snap = Snapshot(SnapshotMetadata(index=5, term=2, conf_state=joint), b"state at 5")
    snap_msg = Message(MessageType.SNAPSHOT, to=2, from_=1, term=2, snapshot=snap)
    rn.step(snap_msg)

    # The application applies what it was handed, against the config it
    # was handed it under: this must not fail.
    cs = rn.apply_conf_change(enter_joint)
    assert cs == joint
    rn.advance(rd)

    # The snapshot was refused for now: the answer acknowledges only what
    # is committed here, not the snapshot's index.
    rd = rn.ready()
    acks = [m for m in rd.persisted_messages + rd.messages if m.type == MessageType.APPEND_RESPONSE]
    assert acks and all(not m.reject and m.index == 2 for m in acks)
    assert rd.snapshot is None
    rn.advance(rd)

    # Once everything handed out is applied, the retried snapshot installs.
    rn.step(snap_msg)
    rd = rn.ready()
    assert rd.snapshot == snap
    st.apply_snapshot(snap)
    rn.advance(rd)
    assert rn.applied_index == 5
    assert rn.conf_state() == joint


def test_a_node_restarts_from_a_snapshot_newer_than_its_hard_state() -> None:
    """Simulator, torn writes: a crash after writing an installed snapshot but
    before the same Ready's hard state (the contract orders the writes but
    does not make them one transaction; a store may keep snapshots apart).
    The disk then holds a snapshot at 5 and a hard state committing 2: the
    snapshot proves 5 committed, so the node restarts there, keeping the
    hard state's term and vote. It used to fail an assertion at start."""
    st = MemoryStorage()
    st.apply_snapshot(Snapshot(SnapshotMetadata(index=1, term=1, conf_state=VOTERS_123)))
    st.append([Entry(term=2, index=2), Entry(term=2, index=3)])
    st.set_hard_state(HardState(term=3, vote=1, commit=2))
    st.apply_snapshot(Snapshot(SnapshotMetadata(index=5, term=2, conf_state=VOTERS_123)))
    rn = RaftNode(Config(id=2, applied=5), st)
    assert (rn.commit_index, rn.applied_index, rn.last_index) == (5, 5, 5)
    assert (rn.term, rn.raft.vote) == (3, 1)
    assert not rn.has_ready()


def test_a_hard_state_committing_beyond_the_log_is_still_refused() -> None:
    st = booted_storage(VOTERS_123)
    st.set_hard_state(HardState(term=1, commit=3))
    with pytest.raises(AssertionError, match="commit 3"):
        RaftNode(Config(id=1), st)


@pytest.mark.parametrize(
    "end_transfer",
    [
        "tick-election 1",  # the transfer times out
        "transfer-leader 1 1",  # the leader is asked to keep leadership
    ],
    ids=["timed-out", "called-off"],
)
def test_a_joint_config_applied_during_a_leader_transfer_is_left_once_the_transfer_fails(
    end_transfer: str,
) -> None:
    """Review: `on_applied` proposes leaving an auto-leave joint config, but not
    while a leader transfer is in progress. When the joint entry was applied
    during a transfer that then timed out (or was called off), nothing
    proposed the leave until some later entry was applied, which may never
    come (the store waits for the config to settle before it proposes
    anything more): the group stayed joint for good."""
    env = Env()
    env.run("add-nodes 4 voters=(1,2,3) learners=(4) index=2")
    env.run("campaign 1")
    env.run("stabilize")
    leader = env.peer(1).node
    assert leader.role == Role.LEADER
    # Swap voter 3 for learner 4: two voters change, so a joint config is
    # entered (with auto-leave).
    assert env.run("propose-conf-change 1 l3 v4") == ["ok index=4"]
    # Before the joint entry is applied, hand leadership to 2, which cannot
    # answer: every message to or from it is lost.
    env.run("transfer-leader 1 2")
    assert leader.raft.lead_transferee == 2
    env.run("partition (1 3 4) (2)")
    env.run("stabilize")
    assert leader.applied_index == 4
    joint = ConfState(
        voters=(1, 2, 4), voters_outgoing=(1, 2, 3), learners_next=(3,), auto_leave=True
    )
    assert leader.conf_state() == joint
    assert leader.last_index == 4  # no leave yet: the transfer is in progress

    # The transfer ends without leadership moving (1, 3 and 4 are a quorum
    # of both halves, so 1 stays leader): 1 now leaves the joint config.
    env.run(end_transfer)
    assert leader.role == Role.LEADER and leader.raft.lead_transferee == 0
    env.run("stabilize")
    ents = env.peer(1).storage.entries(5, leader.last_index + 1)
    assert [(e.type, ConfChange.decode(e.data)) for e in ents] == [
        (EntryType.CONF_CHANGE, ConfChange())
    ]
    done = ConfState(voters=(1, 2, 4), learners=(3,))
    assert leader.commit_index == leader.applied_index == 5
    for i in (1, 3, 4):
        assert env.peer(i).node.conf_state() == done

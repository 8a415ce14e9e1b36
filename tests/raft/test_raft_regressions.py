"""Small deterministic tests for bugs of `raft/` that the simulator found.

Each test drives `RaftNode`s by hand, message by message, to the exact
situation of the bug; the simulator seed that found it is named in the
docstring (it may no longer reproduce once the simulator changes).
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
    Ready,
    Snapshot,
    SnapshotMetadata,
)

VOTERS_123 = ConfState(voters=(1, 2, 3))


def _bootstrapped(nid: int, cs: ConfState = VOTERS_123) -> tuple[RaftNode, MemoryStorage]:
    """A node whose storage starts from a snapshot at 1/1 holding `cs`."""
    st = MemoryStorage()
    st.apply_snapshot(Snapshot(SnapshotMetadata(index=1, term=1, conf_state=cs)))
    st.set_hard_state(HardState(term=1, commit=1))
    return RaftNode(Config(id=nid, applied=1), st), st


def _persist(st: MemoryStorage, rn: RaftNode) -> Ready:
    """Take a Ready and write it (snapshot, entries, hard state); don't advance."""
    rd = rn.ready()
    if rd.snapshot is not None:
        st.apply_snapshot(rd.snapshot)
    st.append(rd.entries)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    return rd


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
    rd = _persist(st, rn)
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
    st = MemoryStorage()
    st.apply_snapshot(Snapshot(SnapshotMetadata(index=1, term=1, conf_state=VOTERS_123)))
    st.set_hard_state(HardState(term=1, commit=3))
    with pytest.raises(AssertionError, match="commit 3"):
        RaftNode(Config(id=1), st)

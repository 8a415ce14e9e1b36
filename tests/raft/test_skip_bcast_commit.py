"""`Config.skip_bcast_commit`: a leader whose commit index advances sends no
empty append to a follower that has all the entries; the follower learns
the commit index with the next heartbeat (or append) instead. Without the
option, every follower gets an append carrying it at once."""

from __future__ import annotations

import pytest

from raft import Config, ConfState, Message, MessageType, RaftNode, Ready
from tests.raft.helpers import booted_storage, write_ready

MT = MessageType
HEARTBEAT_TICKS = 2


class _Node:
    """A node and its storage, driven as the driver contract says."""

    def __init__(self, skip: bool) -> None:
        self.storage = booted_storage(ConfState(voters=(1, 2, 3)))
        cfg = Config(
            id=1, applied=1, heartbeat_ticks=HEARTBEAT_TICKS, pre_vote=False, skip_bcast_commit=skip
        )
        self.rn = RaftNode(cfg, self.storage)

    def drain(self) -> Ready:
        rd = self.rn.ready()
        write_ready(self.storage, rd)
        self.rn.advance(rd)
        return rd


def _leader_with_one_entry_sent(skip: bool) -> tuple[_Node, int]:
    """Node 1 leads voters 1, 2, 3 and has sent one proposed entry to both
    followers; returns the node and the entry's index."""
    node = _Node(skip)
    rn = node.rn
    rn.campaign()
    node.drain()
    term = rn.term
    for voter in (2, 3):
        rn.step(Message(MT.VOTE_RESPONSE, to=1, from_=voter, term=term))
    rd = node.drain()  # leader: its empty entry goes out
    last = max(m.index + len(m.entries) for m in rd.messages if m.type == MT.APPEND)
    for f in (2, 3):
        rn.step(Message(MT.APPEND_RESPONSE, to=1, from_=f, term=term, index=last))
    node.drain()
    index = rn.propose(b"x")
    node.drain()
    return node, index


def _answer(node: _Node, follower: int, index: int) -> list[Message]:
    node.rn.step(Message(MT.APPEND_RESPONSE, to=1, from_=follower, term=node.rn.term, index=index))
    rd = node.drain()
    return list(rd.messages) + list(rd.persisted_messages)


@pytest.mark.parametrize("skip", [False, True])
def test_a_commit_is_broadcast_only_without_the_option(skip: bool) -> None:
    node, index = _leader_with_one_entry_sent(skip)
    sent = _answer(node, 2, index)
    assert node.rn.commit_index == index
    commits = {m.to: m.commit for m in sent if m.type == MT.APPEND}
    if skip:
        assert commits == {}
    else:
        assert commits == {2: index, 3: index}


def test_with_the_option_the_next_heartbeat_carries_the_commit() -> None:
    node, index = _leader_with_one_entry_sent(skip=True)
    _answer(node, 2, index)
    _answer(node, 3, index)
    heartbeats: dict[int, int] = {}
    for _ in range(HEARTBEAT_TICKS):
        node.rn.tick()
        rd = node.drain()
        heartbeats.update({m.to: m.commit for m in rd.messages if m.type == MT.HEARTBEAT})
    assert heartbeats == {2: index, 3: index}


def test_with_the_option_new_entries_carry_the_commit() -> None:
    node, index = _leader_with_one_entry_sent(skip=True)
    _answer(node, 2, index)
    node.rn.propose(b"y")
    rd = node.drain()
    appends = {m.to: m.commit for m in rd.messages if m.type == MT.APPEND}
    assert appends[2] == index


def test_with_the_option_a_marked_entry_is_still_broadcast() -> None:
    node, index = _leader_with_one_entry_sent(skip=True)
    node.rn.broadcast_commit_of(index)
    sent = _answer(node, 2, index)
    commits = {m.to: m.commit for m in sent if m.type == MT.APPEND}
    assert commits == {2: index, 3: index}
    # Only that one: the next commit is not broadcast.
    later = node.rn.propose(b"y")
    node.drain()
    sent = _answer(node, 2, later)
    assert [m for m in sent if m.type == MT.APPEND] == []

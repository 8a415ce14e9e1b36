"""`Config.quiet_after_start`: a restarted node keeps the promise its
acknowledgements made to a leader holding a lease (no vote for an election
timeout), while a node started fresh votes at once."""

from __future__ import annotations

import pytest

from raft import Config, ConfState, HardState, Message, MessageType, RaftNode
from tests.raft.helpers import booted_storage

ELECTION = 10


def _restarted(quiet: bool) -> RaftNode:
    st = booted_storage(ConfState(voters=(1, 2, 3)))
    st.set_hard_state(HardState(term=1, vote=1, commit=1))
    return RaftNode(Config(id=2, applied=1, election_ticks=ELECTION, quiet_after_start=quiet), st)


def _ask_vote(rn: RaftNode, kind: MessageType) -> bool:
    """Send a vote request of a later term from node 3; True if granted."""
    rn.step(Message(kind, to=2, from_=3, term=2, index=1, log_term=1))
    rd = rn.ready()
    rn.advance(rd)
    answers = [m for m in rd.messages + rd.persisted_messages if m.to == 3]
    return any(not m.reject for m in answers)


@pytest.mark.parametrize("kind", [MessageType.PRE_VOTE, MessageType.VOTE])
def test_restarted_node_grants_no_vote_within_an_election_timeout(kind: MessageType) -> None:
    rn = _restarted(quiet=True)
    for _ in range(ELECTION - 1):
        rn.tick()
    assert not _ask_vote(rn, kind)


@pytest.mark.parametrize("kind", [MessageType.PRE_VOTE, MessageType.VOTE])
def test_restarted_node_votes_once_an_election_timeout_passed(kind: MessageType) -> None:
    rn = _restarted(quiet=True)
    for _ in range(ELECTION):
        rn.tick()
    assert _ask_vote(rn, kind)


def test_without_quiet_a_restarted_node_votes_at_once() -> None:
    assert _ask_vote(_restarted(quiet=False), MessageType.VOTE)


def test_a_quiet_node_that_campaigns_itself_is_no_longer_quiet() -> None:
    rn = _restarted(quiet=True)
    rn.campaign()
    rn.advance(rn.ready())
    assert _ask_vote(rn, MessageType.PRE_VOTE)

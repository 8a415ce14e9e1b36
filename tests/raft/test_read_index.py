"""`RaftNode.read_index`: a request is either taken (served by the leader,
or forwarded to the leader this node knows of) or refused at once with
`NotLeaderError`, never dropped silently."""

from __future__ import annotations

import pytest

from raft import MessageType, NotLeaderError, ProposalDroppedError, Role
from tests.raft.scenario import Env


def _cluster(prevote: bool = True) -> Env:
    env = Env()
    env.run(f"add-nodes 3 voters=(1,2,3) index=2 prevote={str(prevote).lower()}")
    return env


def _elected() -> Env:
    env = _cluster()
    env.run("campaign 1")
    env.run("stabilize")
    assert env.peer(1).node.role == Role.LEADER
    return env


def _read_states(out: list[str]) -> list[tuple[int, str]]:
    """(node, read state) of each read state a `stabilize` output shows."""
    found: list[tuple[int, str]] = []
    node = 0
    for ln in out:
        if ln.startswith("> "):
            node = int(ln.split()[1])
        elif ln.strip().startswith("read state: "):
            found.append((node, ln.strip().removeprefix("read state: ")))
    return found


def test_a_follower_that_knows_no_leader_refuses_a_read() -> None:
    env = _cluster()
    node = env.peer(2).node
    assert (node.role, node.leader_id) == (Role.FOLLOWER, 0)
    with pytest.raises(NotLeaderError) as exc:
        node.read_index(b"r")
    assert isinstance(exc.value, ProposalDroppedError)
    assert exc.value.leader_id == 0
    assert not node.has_ready()  # nothing was queued or sent


@pytest.mark.parametrize(
    ("prevote", "role"),
    [(True, Role.PRE_CANDIDATE), (False, Role.CANDIDATE)],
    ids=["pre-candidate", "candidate"],
)
def test_a_candidate_refuses_a_read(prevote: bool, role: Role) -> None:
    node = _cluster(prevote).peer(2).node
    node.campaign()
    assert node.role == role
    with pytest.raises(NotLeaderError) as exc:
        node.read_index(b"r")
    assert exc.value.leader_id == 0
    rd = node.ready()
    assert not [m for m in rd.all_messages() if m.type == MessageType.READ_INDEX]
    assert not rd.read_states


def test_a_follower_with_a_leader_forwards_a_read_and_gets_the_answer() -> None:
    env = _elected()
    node = env.peer(2).node
    assert node.leader_id == 1
    node.read_index(b"f")  # taken: no error
    out = env.run("stabilize")
    assert "  send after persist: 2->1 READ_INDEX term=0 ctx=f" in out
    assert _read_states(out) == [(2, "index=3 ctx=f")]


def test_the_leader_serves_a_read_itself() -> None:
    env = _elected()
    env.peer(1).node.read_index(b"l")
    assert _read_states(env.run("stabilize")) == [(1, "index=3 ctx=l")]


def test_the_scenario_runner_shows_a_refused_read() -> None:
    env = _cluster()
    assert env.run("read-index 2 r") == [
        "refused: NotLeaderError: not the leader (leader: unknown)"
    ]

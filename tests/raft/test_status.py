"""`RaftNode.status()`: what an application may read of a node (instead of
its internals), a copy that does not change under it."""

from __future__ import annotations

from raft import ProgressStatus, Role
from raft.progress import ProgressState
from tests.raft.scenario import Env


def test_a_leader_reports_every_members_progress_and_a_follower_none() -> None:
    env = Env()
    env.run("add-nodes 3 voters=(1,2,3) index=2")
    env.run("campaign 1")
    env.run("stabilize")
    leader = env.peer(1).node.status()
    assert (leader.id, leader.role, leader.lead) == (1, Role.LEADER, 1)
    assert leader.commit == leader.applied == 3  # the new leader's empty entry
    assert set(leader.progress) == {1, 2, 3}
    assert leader.progress[2] == ProgressStatus(
        match=3, next=4, state=ProgressState.REPLICATE, recent_active=True, is_learner=False
    )
    follower = env.peer(2).node.status()
    assert (follower.role, follower.lead, follower.term) == (Role.FOLLOWER, 1, leader.term)
    assert follower.progress == {}
    # A copy: later progress does not change it.
    env.run("propose 1 x")
    env.run("stabilize")
    assert leader.progress[2].match == 3
    assert env.peer(1).node.status().progress[2].match == 4

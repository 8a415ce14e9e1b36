"""The leader refuses a membership change that would leave its region without
a healthy quorum (TiKV's check_conf_change): healthy is the leader itself and
the followers its Raft progress marks recently active. A region whose voters
are two healthy and one cut off must not lose a healthy one: it could commit
nothing more, not even the change that would repair it."""

from __future__ import annotations

from pathlib import Path

from kvproto.metapb import PeerRole
from kvproto.raft_cmdpb import ChangePeer, ChangePeerRequest, ChangePeerType
from store_node.config import CoreConfig
from tests.factories import learner, peer
from tests.store_node.harness import CoreCluster, bootstrapped

CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=2)


def cut_off(c: CoreCluster, *stores: int) -> None:
    """Drop every Raft message to or from `stores`, for longer than an
    election timeout: the leader's CheckQuorum no longer sees them active."""
    c.isolate(*stores)
    c.tick(2 * CONFIG.election_ticks)


def propose(c: CoreCluster, token: str, *changes: ChangePeer) -> object:
    """Region 1's leader is asked for `changes`: None once proposed, else why not."""
    found = c.leader_of(1)
    assert found is not None, "region 1 has no leader"
    core = c.cores[found[0]]
    region = core.peers[1].region
    return core.change_peer(token, 1, region.epoch, ChangePeerRequest(changes))


def followers(c: CoreCluster) -> list[int]:
    found = c.leader_of(1)
    assert found is not None
    return sorted(s for s in (1, 2, 3) if s != found[0])


def voters(c: CoreCluster, store: int) -> list[int]:
    region = c.cores[store].peers[1].region
    return sorted(p.store_id for p in region.peers if p.role == PeerRole.VOTER)


def test_removing_a_healthy_voter_beside_a_cut_off_one_is_refused(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    healthy, gone = followers(c)
    cut_off(c, gone)
    leader = c.leader_of(1)
    assert leader is not None and leader[0] not in (healthy, gone)
    # Without `healthy`, the voters would be the leader and a silent peer.
    refused = propose(
        c, "rm-healthy", ChangePeer(ChangePeerType.REMOVE, peer(10 + healthy, healthy))
    )
    assert isinstance(refused, str) and "healthy" in refused, refused
    c.stabilize()
    assert voters(c, leader[0]) == [1, 2, 3]
    # Removing the silent one leaves two healthy voters of two.
    assert propose(c, "rm-gone", ChangePeer(ChangePeerType.REMOVE, peer(10 + gone, gone))) is None
    c.stabilize()
    c.tick(3)
    assert voters(c, leader[0]) == sorted((leader[0], healthy))
    assert c.replies.pop("rm-gone").value is not None


def test_a_joint_change_needs_a_healthy_majority_in_both_halves(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3, 4], CONFIG, region_on=[1, 2, 3])
    c.change_peer(ChangePeerType.ADD_LEARNER, learner(14, 4))
    c.tick(10)
    assert c.cores[4].peers[1].initialized
    healthy, gone = followers(c)
    # The follower and the learner are both cut off: promoting the learner
    # in the place of the healthy follower would leave the incoming voters
    # (leader, `gone`, 14) with one healthy.
    cut_off(c, gone, 4)
    swap_healthy = (
        ChangePeer(ChangePeerType.ADD_VOTER, peer(14, 4)),
        ChangePeer(ChangePeerType.ADD_LEARNER, learner(10 + healthy, healthy)),
    )
    refused = propose(c, "swap-healthy", *swap_healthy)
    assert isinstance(refused, str) and "healthy" in refused, refused
    # The learner is back: it may replace the silent follower (incoming: the
    # leader, `healthy`, 14; outgoing: the leader, `healthy`, `gone`).
    c.drop = lambda m: gone in (m.to_peer.store_id, m.from_peer.store_id)
    c.tick(CONFIG.election_ticks)
    swap_gone = (
        ChangePeer(ChangePeerType.ADD_VOTER, peer(14, 4)),
        ChangePeer(ChangePeerType.ADD_LEARNER, learner(10 + gone, gone)),
    )
    assert propose(c, "swap-gone", *swap_gone) is None
    c.stabilize()
    c.tick(3)
    leader = c.leader_of(1)
    assert leader is not None
    assert voters(c, leader[0]) == sorted((leader[0], healthy, 4))

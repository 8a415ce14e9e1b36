"""The replica checker, a pure function of a cluster view, against the
builder-style MockCluster (no trio, explicit time). Peer ids: region r's
peer on store s is r * 100 + s; new peers get 1001, 1002, ..."""

from __future__ import annotations

from kvproto.metapb import Peer, PeerRole, RegionEpoch, StoreId, StoreState
from placement_driver.operators import AddLearner, OperatorKind
from placement_driver.region_check import OpInfluence
from placement_driver.replica_checker import check_replicas
from tests.factories import learner
from tests.placement_driver.mock_cluster import MockCluster, TiB, describe


def three_stores(**config: object) -> MockCluster:
    return MockCluster(**config).store(1).store(2).store(3)


def test_an_under_replicated_region_gets_a_learner_on_the_emptiest_store_then_a_promotion() -> None:
    # Store 2 already holds two other regions, store 3 one: store 3 is emptier.
    mc = three_stores().store(4)
    mc.region(1, voters=(1,)).region(2, voters=(2,)).region(3, voters=(2, 4)).region(4, voters=(3,))
    mc.region(5, voters=(4,))
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None
    assert (op.kind, op.desc, op.region_id) == (OperatorKind.REPLICA, "add-replica", 1)
    assert describe(op) == [
        "add learner peer 1001 on store 3",
        "promote learner peer 1001 on store 3",
    ]
    assert op.origin == mc.region_of(1).epoch


def test_ties_between_equally_full_stores_go_to_the_lowest_store_id() -> None:
    # Stores 2, 3 and 4 hold nothing: store 2 wins.
    mc = three_stores().store(4).region(1, voters=(1,))
    assert describe(check_replicas(mc.cluster, mc.record(1)))[0] == (
        "add learner peer 1001 on store 2"
    )


def test_stores_that_cannot_take_a_peer_are_skipped() -> None:
    # Every store but 8 is unfit: gone, silent, unknown, full or busy.
    mc = MockCluster().store(1)
    mc.store(2, state=StoreState.DISCONNECTED).store(3, state=StoreState.DOWN)
    mc.store(5, heartbeat=False).store(6, available=TiB // 10).store(7, busy=True).store(8)
    mc.store(4, state=StoreState.OFFLINE)  # last: drained while enough stores are Up
    mc.region(1, voters=(1,))
    assert describe(check_replicas(mc.cluster, mc.record(1)))[0] == (
        "add learner peer 1001 on store 8"
    )
    # A store already holding a peer of the region is no target either.
    mc.region(2, voters=(1, 8))
    assert check_replicas(mc.cluster, mc.record(2)) is None


def test_snapshot_and_pending_limits_keep_a_store_from_taking_more() -> None:
    mc = three_stores(max_snapshot_count=1, max_pending_peer_count=1).store(4)
    mc.region(1, voters=(1,))
    # An operator elsewhere is still to send a snapshot to store 2.
    influence = OpInfluence()
    influence.add([AddLearner(learner(999, 2))])
    assert describe(check_replicas(mc.cluster, mc.record(1), influence))[0].endswith("store 3")
    # Store 3 has a peer catching up in another region: at its pending limit.
    mc.region(2, voters=(4, 3), pending=(3,))
    op = check_replicas(mc.cluster, mc.record(1), influence)
    assert op is not None and describe(op)[0].endswith("store 4")


def test_a_caught_up_learner_is_promoted_and_a_pending_one_waited_for() -> None:
    # A learner left over (say by a PD restart) while the region lacks a voter.
    mc = three_stores().region(1, voters=(1, 2), learners=(3,), pending=(3,))
    # It is still catching up: nothing to do yet.
    assert check_replicas(mc.cluster, mc.record(1)) is None
    # Caught up: promote it rather than add another peer.
    mc.region(1, voters=(1, 2), learners=(3,))
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None and op.desc == "promote-learner"
    assert describe(op) == ["promote learner peer 103 on store 3"]


def test_a_voter_on_a_down_store_is_replaced_by_a_joint_promote_and_demote() -> None:
    # Store 3 went Down; store 4 is free.
    mc = three_stores().store(4).region(1, voters=(1, 2, 3)).down(3)
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None and op.desc == "replace-down-peer"
    assert describe(op) == [
        "add learner peer 1001 on store 4",
        "joint: promote peer 1001 on store 4, demote peer 103 on store 3",
        "remove peer 103 on store 3",
    ]


def test_a_leader_on_an_offline_store_hands_over_before_it_is_replaced() -> None:
    # Store 1 is being decommissioned and leads region 1.
    mc = three_stores().store(4).region(1, voters=(1, 2, 3), leader=1)
    mc.cluster.set_store_state(1, StoreState.OFFLINE, mc.now)
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None and op.desc == "replace-offline-peer"
    assert describe(op) == [
        "transfer leader to peer 102 on store 2",
        "add learner peer 1001 on store 4",
        "joint: promote peer 1001 on store 4, demote peer 101 on store 1",
        "remove peer 101 on store 1",
    ]


def test_a_learner_on_a_down_store_is_removed() -> None:
    mc = three_stores().store(4).region(1, voters=(1, 2, 3), learners=(4,)).down(4)
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None and op.desc == "remove-down-learner"
    assert describe(op) == ["remove peer 104 on store 4"]


def test_without_a_target_store_a_down_voter_stays() -> None:
    # Only three stores: nowhere to put a replacement, and no voter to spare.
    mc = three_stores().region(1, voters=(1, 2, 3)).down(3)
    assert check_replicas(mc.cluster, mc.record(1)) is None


def test_an_over_replicated_region_loses_the_voter_on_the_fullest_store() -> None:
    # Store 3 holds one more region than the others.
    mc = three_stores().store(4).region(1, voters=(1, 2, 3, 4)).region(2, voters=(3,))
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None and op.desc == "remove-extra-replica"
    assert describe(op) == ["remove peer 103 on store 3"]
    # Ties go to the highest store id.
    mc.region(2, voters=(1,))
    mc.region(3, voters=(3,))
    mc.region(4, voters=(4,))
    mc.region(5, voters=(2,))
    assert describe(check_replicas(mc.cluster, mc.record(1))) == ["remove peer 104 on store 4"]


def test_a_voter_on_a_down_store_goes_first_when_voters_are_to_spare() -> None:
    mc = three_stores().store(4).region(1, voters=(1, 2, 3, 4)).region(2, voters=(4,)).down(2)
    assert describe(check_replicas(mc.cluster, mc.record(1))) == ["remove peer 102 on store 2"]


def test_the_leader_is_never_removed_directly() -> None:
    # The fullest store holds the leader: the leadership moves first.
    mc = three_stores().store(4).region(1, voters=(1, 2, 3, 4), leader=4).region(2, voters=(4,))
    op = check_replicas(mc.cluster, mc.record(1))
    assert describe(op) == ["transfer leader to peer 101 on store 1", "remove peer 104 on store 4"]


def test_leftover_learners_are_removed_once_the_voters_are_complete() -> None:
    mc = three_stores().store(4).region(1, voters=(1, 2, 3), learners=(4,))
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None and op.desc == "remove-extra-learner"
    assert describe(op) == ["remove peer 104 on store 4"]


def test_a_healthy_region_needs_nothing() -> None:
    mc = three_stores().region(1, voters=(1, 2, 3))
    assert check_replicas(mc.cluster, mc.record(1)) is None


def test_max_replicas_is_read_from_the_config() -> None:
    # Five replicas wanted, five stores: region 1 has three.
    mc = three_stores(max_replicas=5).store(4).store(5).region(1, voters=(1, 2, 3))
    assert describe(check_replicas(mc.cluster, mc.record(1)))[0] == (
        "add learner peer 1001 on store 4"
    )


def test_a_region_that_lost_its_quorum_is_left_alone() -> None:
    # Two of three voters are Down: no conf change could commit.
    mc = three_stores().store(4).store(5).region(1, voters=(1, 2, 3)).down(2).down(3)
    assert check_replicas(mc.cluster, mc.record(1)) is None


def test_a_region_in_a_joint_configuration_is_left_alone() -> None:
    # Store 2's voter is being demoted: the store leaves the joint config by itself.
    mc = three_stores().store(4).region(1, voters=(1, 2))
    region = mc.region_of(1)
    demoting = Peer(region.peers[1].id, StoreId(2), PeerRole.DEMOTING_VOTER)
    mc.report(region.with_peer(demoting).with_epoch(RegionEpoch(2, 1)))
    assert check_replicas(mc.cluster, mc.record(1)) is None


def test_learners_being_added_count_against_their_store() -> None:
    # Two under-replicated regions, checked in one pass: stores 2 and 3 are empty.
    mc = three_stores().region(1, voters=(1,)).region(2, voters=(1,))
    influence = OpInfluence()
    first = check_replicas(mc.cluster, mc.record(1), influence)
    assert first is not None
    influence.add(first.steps)
    second = check_replicas(mc.cluster, mc.record(2), influence)
    # The second goes to the other store.
    assert describe(first)[0] == "add learner peer 1001 on store 2"
    assert describe(second)[0] == "add learner peer 1002 on store 3"


# -- healthy quorum: a voter is healthy on a live store (Up, Offline, Disconnected),
# neither reported down by the leader nor pending ---------------------------------------


def test_lowering_max_replicas_removes_dead_voters_before_a_live_offline_one() -> None:
    # Five voters, two on Down stores (2, 3) and one on an Offline but live store
    # (9); the administrator lowers max_replicas from 5 to 3.
    # (Store 5, with no peer, lets 9 be drained while 5 other stores are Up.)
    mc = MockCluster(max_replicas=5).store(1).store(2).store(3).store(4).store(5).store(9)
    mc.region(1, voters=(1, 4, 2, 3, 9))
    mc.cluster.set_store_state(9, StoreState.OFFLINE, mc.now)
    mc.down(2).down(3)
    mc.cluster.set_config({"max_replicas": "3"})
    op = check_replicas(mc.cluster, mc.record(1))
    # Removing the voter on 9 would leave 2 healthy voters (1, 4) of 4.
    assert op is not None and op.desc == "remove-extra-replica"
    assert describe(op) == ["remove peer 103 on store 3"]
    # Once it is gone, the other Down voter goes next.
    mc.region(1, voters=(1, 4, 2, 9), conf_ver=2)
    assert describe(check_replicas(mc.cluster, mc.record(1))) == ["remove peer 102 on store 2"]


def test_a_voter_the_leader_reports_down_is_removed_before_a_healthy_one() -> None:
    # Five voters on Up stores, four wanted; the leader reports peer 103 down
    # and peer 102 catching up. By fullness alone (all equal), the highest store
    # id would go: 105.
    mc = MockCluster(max_replicas=4).store(1).store(2).store(3).store(4).store(5)
    mc.region(1, voters=(1, 2, 3, 4, 5))
    mc.report(mc.region_of(1), pending=[mc.peer(1, 2)], down=[mc.peer(1, 3)])
    # Without 105, 102 and 103 would be two unhealthy voters of four.
    assert describe(check_replicas(mc.cluster, mc.record(1))) == ["remove peer 103 on store 3"]


def test_a_region_whose_healthy_voters_are_no_majority_is_left_alone() -> None:
    # Store 3 is Down and the leader reports peer 102 down: one healthy voter of
    # three. A replacement would enter a joint configuration its outgoing half
    # (1, 2, 3) could not commit the leaving of.
    mc = three_stores().store(4).region(1, voters=(1, 2, 3)).down(3)
    mc.report(mc.region_of(1), down=[mc.peer(1, 2)])
    assert check_replicas(mc.cluster, mc.record(1)) is None
    # A pending voter cannot acknowledge either.
    mc.report(mc.region_of(1), pending=[mc.peer(1, 2)])
    assert check_replicas(mc.cluster, mc.record(1)) is None
    # Heard from again and caught up: the Down voter is replaced.
    mc.report(mc.region_of(1))
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None and op.desc == "replace-down-peer"


# -- a replacement learner catching up is kept and used ---------------------------------


def test_a_replacement_learner_catching_up_is_not_removed_as_extra() -> None:
    # A replace-down-peer operator added a learner on store 4 and timed out (or
    # the PD restarted) while its snapshot was still on the way.
    mc = three_stores().store(4).region(1, voters=(1, 2, 3), learners=(4,), pending=(4,))
    mc.down(3)
    assert check_replicas(mc.cluster, mc.record(1)) is None


def test_a_replacement_learner_catching_up_is_waited_for_then_promoted() -> None:
    # As above, with store 5 free: no second learner is added there.
    mc = three_stores().store(4).store(5)
    mc.region(1, voters=(1, 2, 3), learners=(4,), pending=(4,)).down(3)
    assert check_replicas(mc.cluster, mc.record(1)) is None
    # Caught up: it takes the Down voter's place.
    mc.region(1, voters=(1, 2, 3), learners=(4,))
    op = check_replicas(mc.cluster, mc.record(1))
    assert op is not None and op.desc == "replace-down-peer"
    assert describe(op) == [
        "joint: promote peer 104 on store 4, demote peer 103 on store 3",
        "remove peer 103 on store 3",
    ]

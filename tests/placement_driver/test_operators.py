"""Operators and the operator controller on the pure core: the MockCluster
plays the region's leader (carrying out steps with the store's own
membership rules), time is explicit. One narrative comment per step."""

from __future__ import annotations

import pytest

from kvproto import pdpb
from kvproto.metapb import (
    PeerId,
    RegionEpoch,
    RegionId,
    StoreId,
    StoreState,
)
from kvproto.pdpb import PdErrorCode
from kvproto.raft_cmdpb import ChangePeer, ChangePeerRequest, ChangePeerType
from placement_driver.errors import OperatorExistsError, PdRequestError
from placement_driver.operators import (
    AddLearner,
    ChangePeers,
    Operator,
    OperatorKind,
    OperatorStatus,
    OperatorTimeouts,
    RemovePeer,
)
from tests import factories
from tests.placement_driver.mock_cluster import (
    MockCluster,
    Refused,
    apply_order,
    describe,
    key,
    learners,
    leave_joint,
    voters,
)


def three_stores(**config: object) -> MockCluster:
    return MockCluster(**config).store(1).store(2).store(3)


def only_change(order: pdpb.RegionHeartbeatResponse | None) -> ChangePeer:
    assert order is not None and order.change_peer is not None, order
    (change,) = order.change_peer.changes
    return change


def test_an_add_replica_operator_advances_only_on_reports_that_show_its_steps_done() -> None:
    mc = three_stores(max_replicas=2).region(1, voters=(1,))
    region = mc.region_of(1)
    # The leader's heartbeat gets the first step, planned on the epoch it reported.
    order = mc.heartbeat(region)
    assert order is not None and order.region_id == 1 and order.region_epoch == region.epoch
    assert only_change(order) == ChangePeer(ChangePeerType.ADD_LEARNER, factories.learner(1001, 2))
    op = mc.operator(1)
    assert op is not None and op.current == 0
    # A heartbeat before the change is applied gets the same step again.
    assert mc.heartbeat(region) == order
    # The learner joined but is still catching up: nothing is sent twice.
    region = apply_order(region, order)
    learner = region.find_peer(PeerId(1001))
    assert learner is not None
    assert mc.heartbeat(region, pending=(learner,)) is None
    assert op.current == 0
    # Caught up: the learner is promoted, on the new epoch.
    order = mc.heartbeat(region)
    assert order is not None and order.region_epoch == RegionEpoch(2, 1)
    assert only_change(order).change_type == ChangePeerType.ADD_VOTER
    assert op.current == 1
    # The promotion shows up: the operator succeeds and goes to the history.
    region = apply_order(region, order)
    assert mc.heartbeat(region) is None
    assert voters(region) == [1, 2]
    assert op.status == OperatorStatus.SUCCESS and mc.operator(1) is None
    assert mc.controller.history() == [op]
    assert op.step_finished_at == [mc.now, mc.now]


def test_a_down_voter_is_replaced_through_a_joint_change_the_store_accepts() -> None:
    mc = three_stores().store(4).region(1, voters=(1, 2, 3)).down(3)
    region = mc.region_of(1)
    down = region.peer_on_store(StoreId(3))
    assert down is not None
    # The leader reports store 3's peer down and gets a learner on store 4.
    order = mc.heartbeat(region, down=(down,))
    assert order is not None
    region = apply_order(region, order)
    # It caught up: next the joint promote + demote.
    order = mc.heartbeat(region, down=(down,))
    assert order is not None and order.change_peer is not None
    assert len(order.change_peer.changes) == 2
    region = apply_order(region, order)
    # In the joint configuration nothing is sent: the store leaves it by itself.
    assert mc.heartbeat(region, down=(down,)) is None
    region = leave_joint(region)
    assert voters(region) == [1, 2, 4] and learners(region) == [3]
    # Out of it: the demoted peer, now a learner, is removed.
    order = mc.heartbeat(region, down=(down,))
    assert only_change(order) == ChangePeer(ChangePeerType.REMOVE, factories.learner(down.id, 3))
    region = apply_order(region, order)
    # Done: three voters on live stores, conf_ver moved by 1 + 2 + 1.
    assert mc.heartbeat(region) is None
    assert voters(region) == [1, 2, 4] and learners(region) == []
    assert region.epoch == RegionEpoch(5, 1)
    (op,) = mc.controller.history()
    assert (op.desc, op.status) == ("replace-down-peer", OperatorStatus.SUCCESS)


def test_removing_a_voter_inside_a_joint_change_would_be_refused_by_the_store() -> None:
    """Why the plan demotes instead: the store's membership rules."""
    mc = three_stores().store(4).region(1, voters=(1, 2, 3), learners=(4,))
    region = mc.region_of(1)
    order = pdpb.RegionHeartbeatResponse(
        pdpb.ResponseHeader(),
        region_id=1,
        region_epoch=region.epoch,
        change_peer=ChangePeerRequest(
            (
                ChangePeer(ChangePeerType.ADD_VOTER, factories.peer(104, 4)),
                ChangePeer(ChangePeerType.REMOVE, factories.peer(103, 3)),
            )
        ),
    )
    with pytest.raises(Refused, match="must be demoted"):
        apply_order(region, order)


def test_an_over_replicated_region_moves_its_leader_before_removing_that_peer() -> None:
    mc = three_stores(max_replicas=2).region(1, voters=(1, 2, 3), leader=3)
    mc.region(2, voters=(3,))
    region = mc.region_of(1)
    # Store 3 is the fullest and leads: first the leadership moves to store 1.
    order = mc.heartbeat(region)
    assert order is not None and order.transfer_leader == mc.peer(1, 1)
    # Store 1's peer now leads (a new term): the removal of store 3's peer follows.
    order = mc.heartbeat(region, leader=1)
    assert only_change(order) == ChangePeer(ChangePeerType.REMOVE, mc.peer(1, 3))
    region = apply_order(region, order)
    # Done.
    assert mc.heartbeat(region) is None
    assert voters(region) == [1, 2]


def test_an_unexplained_conf_ver_move_cancels_the_operator() -> None:
    mc = three_stores(max_replicas=2).region(1, voters=(1,))
    region = mc.region_of(1)
    # The learner on store 2 is ordered.
    order = mc.heartbeat(region)
    op = mc.operator(1)
    assert order is not None and op is not None
    # Someone else adds a learner on store 3 instead: conf_ver moves by one...
    other = pdpb.RegionHeartbeatResponse(
        pdpb.ResponseHeader(),
        region_id=1,
        region_epoch=region.epoch,
        change_peer=ChangePeerRequest(
            (ChangePeer(ChangePeerType.ADD_LEARNER, factories.learner(77, 3)),)
        ),
    )
    region = apply_order(region, other)
    # ... which the add-learner step does not explain: the region does not
    # show its learner (a change of the same size is not the step's).
    mc.heartbeat(region, pending=region.peers[1:])
    assert op.status == OperatorStatus.CANCELED
    assert "conf_ver moved from 1 to 2" in op.reason
    # The region is checked again: a fresh operator with a fresh plan.
    mc.heartbeat(region)
    new = mc.operator(1)
    assert new is not None and new is not op and new.origin == region.epoch


def test_a_version_move_cancels_a_replica_operator() -> None:
    mc = three_stores(max_replicas=2).region(1, voters=(1,))
    region = mc.region_of(1)
    # An add-replica operator starts.
    mc.heartbeat(region)
    op = mc.operator(1)
    assert op is not None
    # The store splits the region on its own (size): its version moves.
    mc.heartbeat(region.with_range(key(1), b"r0001m").with_epoch(RegionEpoch(1, 2)))
    assert op.status == OperatorStatus.CANCELED
    assert "version moved from 1 to 2" in op.reason


def test_a_step_that_can_no_longer_finish_cancels_the_operator() -> None:
    mc = three_stores(max_replicas=2).region(1, voters=(1, 2, 3), leader=1)
    mc.region(2, voters=(3,))
    region = mc.region_of(1)
    # Store 3 is the fullest: its peer is to be removed.
    order = mc.heartbeat(region)
    assert only_change(order) == ChangePeer(ChangePeerType.REMOVE, mc.peer(1, 3))
    # Before that, an election makes it the leader (no epoch change).
    order = mc.heartbeat(region, leader=3)
    (op,) = mc.controller.history()
    assert op.status == OperatorStatus.CANCELED
    assert op.reason == "step 1: peer 103 to remove is the leader"
    # The new plan moves the leadership away first.
    assert order is not None and order.transfer_leader == mc.peer(1, 1)
    assert describe(mc.operator(1)) == [
        "transfer leader to peer 101 on store 1",
        "remove peer 103 on store 3",
    ]


def test_a_step_past_its_deadline_times_the_operator_out() -> None:
    mc = three_stores(max_replicas=2).operators(timeouts=OperatorTimeouts(step=5, snapshot=50))
    mc.region(1, voters=(1,))
    region = mc.region_of(1)
    # The learner is added...
    region = apply_order(region, mc.heartbeat(region))
    pending = [p for p in region.peers if p.is_learner]
    # ... and catches up for longer than a fast step, but within the snapshot deadline.
    mc.tick(49)
    assert mc.heartbeat(region, pending=pending) is None
    op = mc.operator(1)
    assert op is not None and op.is_running
    # Past the snapshot deadline: timed out.
    mc.tick(1)
    mc.heartbeat(region, pending=pending)
    assert op.status == OperatorStatus.TIMEOUT
    assert op.reason == "step 1 (add learner peer 1001 on store 2) not done in 50 s"
    # A patrol times out operators of regions that stopped reporting, too.
    mc.region(2, voters=(1,))
    assert [o.region_id for o in mc.patrol()] == [2]
    mc.tick(50)
    result = mc.controller.patrol(mc.cluster, mc.now)
    assert [(o.region_id, o.status) for o in result.finished] == [(2, OperatorStatus.TIMEOUT)]


def test_a_region_has_at_most_one_operator() -> None:
    mc = three_stores().region(1, voters=(1, 2, 3))
    # A split operator runs for region 1.
    op = mc.controller.split_region(mc.cluster, 1, [b"r0001m"], mc.now)
    assert describe(op) == ["split at b'r0001m'"] and op.kind == OperatorKind.ADMIN
    # A second one is refused, whoever asks.
    with pytest.raises(OperatorExistsError, match="region 1 already has a running operator"):
        mc.controller.split_region(mc.cluster, 1, [b"r0001n"], mc.now)
    with pytest.raises(OperatorExistsError):
        mc.controller.add(
            Operator(
                RegionId(1),
                "x",
                OperatorKind.REPLICA,
                (RemovePeer(mc.peer(1, 3)),),
                RegionEpoch(1, 1),
            ),
            mc.now,
        )


def test_a_split_operator_finishes_when_the_version_moves() -> None:
    mc = three_stores().region(1, voters=(1, 2, 3))
    region = mc.region_of(1)
    op = mc.controller.split_region(mc.cluster, 1, [b"r0001m"], mc.now)
    # The next heartbeat carries the split order, with the keys.
    order = mc.heartbeat(region)
    assert order is not None and order.split_region == pdpb.SplitRegion((b"r0001m",))
    assert order.region_epoch == region.epoch
    # The leader splits: the left part keeps the id, its version moved.
    mc.heartbeat(region.with_range(key(1), b"r0001m").with_epoch(RegionEpoch(1, 2)))
    assert op.status == OperatorStatus.SUCCESS


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([b"r0001"], "not inside region 1"),  # the start key itself
        ([b"r0002"], "not inside region 1"),  # the end key
        ([b"r0001b", b"r0001a"], "strictly increasing"),
        ([b"a"], "not inside region 1"),
    ],
)
def test_split_keys_must_be_increasing_and_inside_the_region(
    keys: list[bytes], message: str
) -> None:
    mc = three_stores().region(1, voters=(1, 2, 3))
    with pytest.raises(PdRequestError, match=message) as e:
        mc.controller.split_region(mc.cluster, 1, keys, mc.now)
    assert e.value.code == PdErrorCode.INVALID_ARGUMENT
    assert mc.operator(1) is None


def test_splitting_an_unknown_region_is_region_not_found() -> None:
    mc = three_stores().region(1, voters=(1, 2, 3))
    with pytest.raises(PdRequestError) as e:
        mc.controller.split_region(mc.cluster, 99, [], mc.now)
    assert e.value.code == PdErrorCode.REGION_NOT_FOUND


def test_the_replica_schedule_limit_caps_checker_operators_but_not_admin_ones() -> None:
    mc = three_stores(replica_schedule_limit=2)
    for r in range(1, 6):
        mc.region(r, voters=(1,))
    # A patrol starts two operators, not five.
    assert [op.region_id for op in mc.patrol()] == [1, 2]
    # Heartbeats of the others get nothing either.
    assert mc.heartbeat(mc.region_of(3)) is None
    # An administrator's split is not limited.
    mc.controller.split_region(mc.cluster, 4, [], mc.now)
    assert len(mc.controller.running()) == 3
    # Limit 0 turns the checker off.
    mc.cluster.set_config({"replica_schedule_limit": "0"})
    assert mc.patrol() == [] and mc.heartbeat(mc.region_of(5)) is None


def test_max_snapshot_count_spreads_new_learners_over_stores() -> None:
    mc = three_stores(max_snapshot_count=1).store(4)
    for r in range(1, 5):
        mc.region(r, voters=(1,))
    # One learner at a time per store: regions 1, 2, 3 go to stores 2, 3, 4; 4 waits.
    ops = mc.patrol()
    assert [describe(op)[0] for op in ops] == [
        "add learner peer 1001 on store 2",
        "add learner peer 1002 on store 3",
        "add learner peer 1003 on store 4",
    ]


def test_the_history_keeps_only_the_newest_operators() -> None:
    mc = three_stores().operators(history_size=3).region(1, voters=(1, 2, 3))
    # Five split operators, each canceled by the next administrator order.
    for i in range(5):
        mc.controller.split_region(mc.cluster, 1, [b"r0001%d" % i], mc.now)
        mc.controller.cancel(1, mc.now, f"test {i}")
    history = mc.controller.history()
    assert [op.reason for op in history] == ["test 2", "test 3", "test 4"]
    assert mc.controller.latest(1) is history[-1]


def test_a_patrol_cancels_operators_of_regions_gone_from_the_tree() -> None:
    mc = three_stores().region(1, voters=(1, 2, 3))
    op = mc.controller.split_region(mc.cluster, 1, [b"r0001m"], mc.now)
    # Region 2, newer, is reported over region 1's whole range: region 1 is gone.
    mc.report(
        factories.region(2, key(1), key(2), version=2, peers=(factories.peer(201, 1),)),
        leader=1,
    )
    assert mc.cluster.region_by_id(1) is None
    # The next patrol cancels its operator.
    result = mc.controller.patrol(mc.cluster, mc.now)
    assert result.finished == (op,) and op.status == OperatorStatus.CANCELED
    assert op.reason == "the region is gone from the region tree"


def test_a_patrol_buries_offline_stores_that_hold_no_region() -> None:
    # Store 5 keeps 3 stores Up (max_replicas) when 3 and 4 are decommissioned.
    mc = three_stores().store(4).store(5).region(1, voters=(1, 2, 3))
    # Store 4 holds nothing and is decommissioned: the next patrol removes it.
    mc.cluster.set_store_state(4, StoreState.OFFLINE, mc.now)
    # Store 3 holds region 1: it stays Offline until its peer is replaced.
    mc.cluster.set_store_state(3, StoreState.OFFLINE, mc.now)
    result = mc.controller.patrol(mc.cluster, mc.now)
    assert result.buried == (4,)
    assert mc.cluster.get_store(4).state == StoreState.TOMBSTONE
    assert mc.cluster.get_store(3).state == StoreState.OFFLINE


def test_influence_counts_the_steps_still_to_come() -> None:
    mc = three_stores().store(4).region(1, voters=(1, 2, 3)).down(3)
    op = mc.patrol()[0]
    influence = mc.controller.influence(mc.cluster)
    # A learner to add on store 4 (one snapshot in), a peer to remove on store 3.
    assert influence.region_delta == {4: 1, 3: -1}
    assert influence.snapshots_in == {4: 1}
    assert isinstance(op.steps[0], AddLearner) and isinstance(op.steps[1], ChangePeers)


def test_a_region_whose_new_operator_no_heartbeat_answered_is_asked_for() -> None:
    # A patrol makes the operator; its first step can only travel in the
    # answer to a region heartbeat, so the leader's store is asked for one
    # (in its store heartbeat's answer) until that heartbeat came.
    mc = MockCluster().store(1).store(2).store(3).region(1, voters=(1,))
    assert mc.controller.regions_waiting(mc.cluster, StoreId(1)) == ()
    created = mc.patrol()
    assert [op.region_id for op in created] == [1]
    assert mc.controller.regions_waiting(mc.cluster, StoreId(1)) == (1,)
    assert mc.controller.regions_waiting(mc.cluster, StoreId(2)) == ()
    order = mc.heartbeat(mc.region_of(1))
    assert order is not None and order.change_peer is not None
    assert mc.controller.regions_waiting(mc.cluster, StoreId(1)) == ()

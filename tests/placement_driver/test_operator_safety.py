"""Operator safety: a running operator stops instead of hurting the region
when the world changed under it (its target store left, someone else
changed the membership, the leadership came back to a peer it demotes).
The MockCluster plays the region's leader with the store's own membership
rules; time is explicit. One narrative comment per step."""

from __future__ import annotations

import pytest

from kvproto import pdpb
from kvproto.metapb import PeerId, StoreId, StoreState
from kvproto.raft_cmdpb import ChangePeer, ChangePeerRequest, ChangePeerType
from placement_driver.operators import OperatorStatus
from tests.placement_driver.mock_cluster import (
    MockCluster,
    apply_order,
    describe,
    learners,
    leave_joint,
    voters,
)


def four_stores(**config: object) -> MockCluster:
    return MockCluster(**config).store(1).store(2).store(3).store(4)


def five_stores(**config: object) -> MockCluster:
    """Four stores and a spare (5): with max_replicas 4, store 4 can be
    drained while 4 others stay Up."""
    return four_stores(**config).store(5)


def only_change(order: pdpb.RegionHeartbeatResponse | None) -> ChangePeer:
    assert order is not None and order.change_peer is not None, order
    (change,) = order.change_peer.changes
    return change


def orders_for_store(order: pdpb.RegionHeartbeatResponse | None, store_id: int) -> list[str]:
    """What `order` tells the leader to do on `store_id` (conf changes and
    leader transfers), as text; empty if nothing."""
    if order is None:
        return []
    found = []
    if order.change_peer is not None:
        for c in order.change_peer.changes:
            if c.peer.store_id == store_id:
                found.append(f"{c.change_type.name} peer {c.peer.id}")
    if order.transfer_leader is not None and order.transfer_leader.store_id == store_id:
        found.append(f"transfer leader to peer {order.transfer_leader.id}")
    return found


def make_unavailable(mc: MockCluster, store_id: int, state: StoreState) -> None:
    if state == StoreState.DOWN:
        mc.down(store_id)
        return
    mc.cluster.set_store_state(store_id, StoreState.OFFLINE, mc.now)
    if state == StoreState.TOMBSTONE:
        mc.cluster.set_store_state(store_id, StoreState.TOMBSTONE, mc.now)
    assert mc.cluster.get_store(store_id).state == state


# -- bug 2: a step's target store is no longer Up ----------------------------------------


@pytest.mark.parametrize(
    "state",
    [StoreState.OFFLINE, StoreState.TOMBSTONE, StoreState.DOWN],
    ids=lambda s: s.name.lower(),
)
def test_an_add_learner_step_whose_target_store_left_is_canceled_not_sent(
    state: StoreState,
) -> None:
    mc = five_stores(max_replicas=4).region(1, voters=(1, 2, 3))
    region = mc.region_of(1)
    # A fourth replica is planned on store 4: the learner is ordered.
    order = mc.heartbeat(region)
    assert orders_for_store(order, 4) == ["ADD_LEARNER peer 1001"]
    op = mc.operator(1)
    assert op is not None
    # Before the leader acts on it, store 4 leaves (it holds no peer yet,
    # so even a Tombstone is possible: the core allows it; the admin API
    # refuses it while an operator targets the store).
    make_unavailable(mc, 4, state)
    # The next heartbeat cancels the operator, naming the store, and store 4
    # gets nothing more.
    order = mc.heartbeat(region)
    assert op.status == OperatorStatus.CANCELED
    assert "store 4" in op.reason and state.name.lower() in op.reason
    assert orders_for_store(order, 4) == []


def test_a_learner_on_a_store_that_went_offline_is_not_promoted() -> None:
    mc = five_stores(max_replicas=4).region(1, voters=(1, 2, 3))
    region = mc.region_of(1)
    # The learner on store 4 is added and catches up.
    region = apply_order(region, mc.heartbeat(region))
    op = mc.operator(1)
    assert op is not None and learners(region) == [4]
    # Store 4 is decommissioned meanwhile.
    mc.cluster.set_store_state(4, StoreState.OFFLINE, mc.now)
    # The learner is not made a voter: the operator stops at the promotion.
    order = mc.heartbeat(region)
    assert op.status == OperatorStatus.CANCELED
    assert op.reason == "step 2: target store 4 is offline"
    assert not any(o.startswith("ADD_VOTER") for o in orders_for_store(order, 4)), (
        "store 4's learner was promoted"
    )
    # The learner left over on the Offline store is removed by the next plan.
    assert orders_for_store(order, 4) == ["REMOVE peer 1001"]


def test_a_store_a_running_operator_targets_is_not_buried() -> None:
    mc = five_stores(max_replicas=4).region(1, voters=(1, 2, 3))
    region = mc.region_of(1)
    # The learner on store 4 is ordered; the region tree holds no peer there yet.
    mc.heartbeat(region)
    op = mc.operator(1)
    assert op is not None
    assert mc.cluster.store_region_count(4) == 0
    # Store 4 is decommissioned: a patrol leaves it Offline while the operator runs
    # (the learner may still land there).
    mc.cluster.set_store_state(4, StoreState.OFFLINE, mc.now)
    result = mc.controller.patrol(mc.cluster, mc.now)
    assert result.buried == ()
    assert mc.cluster.get_store(4).state == StoreState.OFFLINE
    # The region's next heartbeat ends the operator; then the store is buried.
    mc.heartbeat(region)
    assert not op.is_running
    result = mc.controller.patrol(mc.cluster, mc.now)
    assert result.buried == (4,)
    assert mc.cluster.get_store(4).state == StoreState.TOMBSTONE


# -- bug 3: someone else's conf change inside the current step's budget ------------------


def test_a_conf_change_by_someone_else_cancels_the_operator_before_a_second_removal() -> None:
    mc = four_stores(max_replicas=3).region(1, voters=(1, 2, 3, 4))
    region = mc.region_of(1)
    # One voter too many: store 4's peer (the highest store id) is to be removed.
    order = mc.heartbeat(region)
    assert only_change(order) == ChangePeer(ChangePeerType.REMOVE, mc.peer(1, 4))
    op = mc.operator(1)
    assert op is not None
    # An old order (of an operator a PD restart forgot) removes peer 103 first.
    stale = pdpb.RegionHeartbeatResponse(
        pdpb.ResponseHeader(),
        region_id=1,
        region_epoch=region.epoch,
        change_peer=ChangePeerRequest((ChangePeer(ChangePeerType.REMOVE, mc.peer(1, 3)),)),
    )
    region = apply_order(region, stale)
    assert voters(region) == [1, 2, 4]
    # The leader reports it: conf_ver moved by one, but not through the
    # operator's step (peer 104 is still there). The operator is canceled
    # instead of removing a second voter.
    order = mc.heartbeat(region)
    assert op.status == OperatorStatus.CANCELED
    assert "conf_ver moved from 1 to 2" in op.reason
    assert orders_for_store(order, 4) == []
    if order is not None and order.change_peer is not None:
        region = apply_order(region, order)
    assert voters(region) == [1, 2, 4]


def test_the_operators_own_changes_in_flight_are_explained() -> None:
    """The other side of the rule: a step's change that the region shows
    under way (a joint configuration entered) is the operator's own."""
    mc = four_stores().region(1, voters=(1, 2, 3)).down(3)
    region = mc.region_of(1)
    down = region.peer_on_store(StoreId(3))
    assert down is not None
    # The learner on store 4 is added and catches up; the joint change follows.
    region = apply_order(region, mc.heartbeat(region, down=(down,)))
    region = apply_order(region, mc.heartbeat(region, down=(down,)))
    op = mc.operator(1)
    assert op is not None
    # In the joint configuration (conf_ver moved by 2 of the plan's 4): still running.
    assert mc.heartbeat(region, down=(down,)) is None
    assert op.is_running
    region = leave_joint(region)
    region = apply_order(region, mc.heartbeat(region, down=(down,)))
    assert mc.heartbeat(region) is None
    assert op.status == OperatorStatus.SUCCESS
    assert voters(region) == [1, 2, 4]


# -- bug 5: the joint step would demote the leader ---------------------------------------


def test_the_joint_step_moves_the_leadership_away_before_demoting_the_leader() -> None:
    mc = four_stores().region(1, voters=(1, 2, 3), leader=3)
    mc.cluster.set_store_state(3, StoreState.OFFLINE, mc.now)
    region = mc.region_of(1)
    # Store 3 is decommissioned and leads: the leadership moves first.
    order = mc.heartbeat(region)
    assert order is not None and order.transfer_leader == mc.peer(1, 1)
    assert describe(mc.operator(1)) == [
        "transfer leader to peer 101 on store 1",
        "add learner peer 1001 on store 4",
        "joint: promote peer 1001 on store 4, demote peer 103 on store 3",
        "remove peer 103 on store 3",
    ]
    op = mc.operator(1)
    assert op is not None
    # Store 1's peer leads: the learner is added.
    order = mc.heartbeat(region, leader=1)
    assert orders_for_store(order, 4) == ["ADD_LEARNER peer 1001"]
    region = apply_order(region, order)
    # The leadership comes back to peer 103 (an election) as the learner catches up.
    order = mc.heartbeat(region, leader=3)
    assert op.is_running and op.current == 2
    # No joint change demoting the leader: the leadership is moved away again.
    assert order is not None and order.change_peer is None
    assert order.transfer_leader == mc.peer(1, 1)
    # With store 1's peer leading, the joint change goes out.
    order = mc.heartbeat(region, leader=1)
    assert order is not None and order.change_peer is not None
    assert len(order.change_peer.changes) == 2
    region = leave_joint(apply_order(region, order))
    # Then the demoted peer is removed, and the operator succeeds.
    region = apply_order(region, mc.heartbeat(region))
    assert mc.heartbeat(region) is None
    assert op.status == OperatorStatus.SUCCESS
    assert voters(region) == [1, 2, 4] and learners(region) == []


def test_the_joint_step_is_canceled_when_no_other_voter_can_lead() -> None:
    mc = four_stores().region(1, voters=(1, 2, 3), leader=3)
    mc.cluster.set_store_state(3, StoreState.OFFLINE, mc.now)
    region = mc.region_of(1)
    # The leadership moves to store 1's peer, and the learner is added.
    mc.heartbeat(region)
    op = mc.operator(1)
    assert op is not None
    region = apply_order(region, mc.heartbeat(region, leader=1))
    # Peer 103 leads again, while the other voters are catching up: none can lead.
    others = [mc.peer(1, 1), mc.peer(1, 2)]
    order = mc.heartbeat(region, leader=3, pending=others)
    assert op.status == OperatorStatus.CANCELED
    assert op.reason == (
        "step 3: peer 103 to demote is the leader, and no other healthy voter can take over"
    )
    assert (
        order is None
        or order.change_peer is None
        or all(c.peer.id != PeerId(103) for c in order.change_peer.changes)
    )

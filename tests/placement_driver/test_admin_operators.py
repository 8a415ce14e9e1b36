"""The administrator's operators (transfer-leader, add-peer, remove-peer,
transfer-peer) against the builder-style MockCluster: no trio, explicit
time. Peer ids: region r's peer on store s is r * 100 + s; new peers get
1001, 1002, ... The replica checker is off (replica_schedule_limit 0):
an administrator's operators are not limited."""

from __future__ import annotations

import pytest

from kvproto.metapb import Region, RegionEpoch
from kvproto.pdpb import PdErrorCode
from placement_driver.errors import OperatorExistsError, PdRequestError
from placement_driver.operators import Operator, OperatorKind, OperatorStatus
from tests.factories import peer, region
from tests.placement_driver.mock_cluster import (
    MockCluster,
    apply_order,
    describe,
    learners,
    leave_joint,
    voters,
)


def stores(count: int) -> MockCluster:
    mc = MockCluster(replica_schedule_limit=0)
    for s in range(1, count + 1):
        mc.store(s)
    return mc


def order(mc: MockCluster, name: str, region_id: int = 1, **store_ids: int) -> Operator:
    return mc.controller.admin_operator(mc.cluster, name, region_id, store_ids, mc.now)


def refused(code: PdErrorCode, match: str) -> pytest.RaisesExc[PdRequestError]:
    return pytest.raises(PdRequestError, match=match, check=lambda e: e.code == code)


def run_to_the_end(mc: MockCluster, op: Operator) -> Region:
    """Carry out the operator's orders as the store would, until it ends."""
    region = mc.region_of(op.region_id)
    for _ in range(10):
        answer = mc.heartbeat(region)
        if not op.is_running:
            return region
        if answer is not None and answer.transfer_leader is not None:
            region = mc.region_of(op.region_id)
            mc.heartbeat(region, leader=answer.transfer_leader.store_id)
        elif answer is not None:
            region = apply_order(region, answer)
        else:
            region = leave_joint(region)
    raise AssertionError(f"operator still running: {op.describe()}")


def test_transfer_leader_moves_the_leadership_to_the_voter_on_the_store() -> None:
    mc = stores(3).region(1, voters=(1, 2, 3))
    op = order(mc, "transfer-leader", to_store_id=2)
    assert (op.desc, op.kind) == ("transfer-leader", OperatorKind.ADMIN)
    assert describe(op) == ["transfer leader to peer 102 on store 2"]
    answer = mc.heartbeat(mc.region_of(1))
    assert answer is not None and answer.transfer_leader == mc.peer(1, 2)
    mc.heartbeat(mc.region_of(1), leader=2)
    assert op.status == OperatorStatus.SUCCESS


def test_add_peer_adds_a_learner_then_promotes_it() -> None:
    mc = stores(4).region(1, voters=(1, 2, 3))
    op = order(mc, "add-peer", store_id=4)
    assert describe(op) == [
        "add learner peer 1001 on store 4",
        "promote learner peer 1001 on store 4",
    ]
    region = run_to_the_end(mc, op)
    assert op.status == OperatorStatus.SUCCESS and voters(region) == [1, 2, 3, 4]


def test_remove_peer_hands_the_leadership_off_first() -> None:
    mc = stores(3).region(1, voters=(1, 2, 3), leader=1)
    op = order(mc, "remove-peer", store_id=1)
    assert describe(op) == ["transfer leader to peer 102 on store 2", "remove peer 101 on store 1"]
    region = run_to_the_end(mc, op)
    assert op.status == OperatorStatus.SUCCESS and voters(region) == [2, 3]


def test_transfer_peer_moves_a_voter_through_a_joint_change() -> None:
    mc = stores(4).region(1, voters=(1, 2, 3), leader=1)
    op = order(mc, "transfer-peer", from_store_id=3, to_store_id=4)
    assert describe(op) == [
        "add learner peer 1001 on store 4",
        "joint: promote peer 1001 on store 4, demote peer 103 on store 3",
        "remove peer 103 on store 3",
    ]
    region = run_to_the_end(mc, op)
    assert op.status == OperatorStatus.SUCCESS
    assert voters(region) == [1, 2, 4] and learners(region) == []
    # Moving the leader's peer hands the leadership off first.
    lead = order(mc, "transfer-peer", from_store_id=1, to_store_id=3)
    assert describe(lead)[0] == "transfer leader to peer 102 on store 2"


def test_transfer_peer_moves_a_learner_without_a_vote() -> None:
    mc = stores(5).region(1, voters=(1, 2, 3), learners=(4,))
    op = order(mc, "transfer-peer", from_store_id=4, to_store_id=5)
    assert describe(op) == ["add learner peer 1001 on store 5", "remove peer 104 on store 4"]


@pytest.mark.parametrize(
    ("name", "store_ids", "code", "match"),
    [
        ("add-peer", {"store_id": 9}, PdErrorCode.STORE_NOT_FOUND, "store 9 is not known"),
        ("add-peer", {"store_id": 2}, PdErrorCode.FAILED_PRECONDITION, "already holds peer 102"),
        ("add-peer", {"store_id": 5}, PdErrorCode.FAILED_PRECONDITION, "store 5 is Down"),
        ("transfer-leader", {"to_store_id": 1}, PdErrorCode.FAILED_PRECONDITION, "already leads"),
        ("transfer-leader", {"to_store_id": 4}, PdErrorCode.FAILED_PRECONDITION, "not a voter"),
        ("transfer-leader", {"to_store_id": 3}, PdErrorCode.FAILED_PRECONDITION, "catching up"),
        ("transfer-leader", {"to_store_id": 6}, PdErrorCode.FAILED_PRECONDITION, "no peer on"),
        ("transfer-leader", {"to_store_id": 9}, PdErrorCode.STORE_NOT_FOUND, "not known"),
        ("remove-peer", {"store_id": 6}, PdErrorCode.FAILED_PRECONDITION, "no peer on store 6"),
        (
            "transfer-peer",
            {"from_store_id": 2, "to_store_id": 2},
            PdErrorCode.INVALID_ARGUMENT,
            "the same store",
        ),
        (
            "transfer-peer",
            {"from_store_id": 2, "to_store_id": 3},
            PdErrorCode.FAILED_PRECONDITION,
            "store 3 already holds",
        ),
    ],
)
def test_orders_the_region_or_the_stores_cannot_take_are_refused(
    name: str, store_ids: dict[str, int], code: PdErrorCode, match: str
) -> None:
    mc = stores(6).region(1, voters=(1, 2, 3), learners=(4,), pending=(3,)).down(5)
    with refused(code, match):
        order(mc, name, **store_ids)
    assert mc.operator(1) is None


def test_no_order_may_leave_the_region_without_a_healthy_majority() -> None:
    # Store 3 is Down: removing another voter leaves 1 healthy of 2.
    mc = stores(4).region(1, voters=(1, 2, 3)).down(3)
    with refused(PdErrorCode.FAILED_PRECONDITION, "without a majority of healthy voters"):
        order(mc, "remove-peer", store_id=2)
    # The refused plans took no peer id: the next new peer still gets 1001.
    with refused(PdErrorCode.FAILED_PRECONDITION, "store 3 is Down"):
        order(mc, "transfer-peer", from_store_id=2, to_store_id=3)
    assert describe(order(mc, "add-peer", store_id=4))[0] == "add learner peer 1001 on store 4"
    # The last voter cannot go: nobody could lead.
    mc = stores(2).region(1, voters=(1,))
    with refused(PdErrorCode.FAILED_PRECONDITION, "no other healthy voter"):
        order(mc, "remove-peer", store_id=1)


def test_a_region_without_a_known_leader_or_with_an_operator_is_refused() -> None:
    mc = stores(3).region(1, voters=(1, 2, 3))
    with pytest.raises(PdRequestError, check=lambda e: e.code == PdErrorCode.REGION_NOT_FOUND):
        order(mc, "add-peer", region_id=77, store_id=3)
    # A split reported before the new region's leader: no leader known yet.
    left = mc.region_of(1).with_range(b"r0001", b"r0001m").with_epoch(RegionEpoch(1, 2))
    right = region(2, b"r0001m", b"r0002", version=2, peers=(peer(201, 1), peer(202, 2)))
    mc.cluster.report_batch_split([left, right], mc.now)
    with refused(PdErrorCode.FAILED_PRECONDITION, "region 2 has no known leader"):
        order(mc, "transfer-leader", region_id=2, to_store_id=2)
    # One operator per region, whoever asks.
    running = order(mc, "transfer-leader", to_store_id=2)
    with pytest.raises(OperatorExistsError):
        order(mc, "transfer-leader", to_store_id=3)
    assert mc.operator(1) is running

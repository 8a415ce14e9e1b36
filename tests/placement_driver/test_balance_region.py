"""balance-region against the builder-style MockCluster (no trio, explicit
time). Region r's peer on store s is r * 100 + s; peers the PD adds get
1001, 1002, ...; a region without a reported size weighs 1 (MiB), and the
adaptive tolerance is 1 here: a region of weight w moves while the two
stores' scores differ by more than 2 * w."""

from __future__ import annotations

import pytest

from kvproto.metapb import PeerRole, StoreState
from placement_driver.operators import AddLearner, OperatorKind, TransferLeader
from placement_driver.schedulers import SchedulerController
from tests.placement_driver.mock_cluster import MockCluster, TiB, describe, learners, voters

MiB = 1 << 20


def full_three_stores(regions: int = 12, **config: object) -> MockCluster:
    """Stores 1-3 hold every region (voters 1, 2, 3; leaders spread); only
    balance-region runs."""
    mc = MockCluster(**config).store(1).store(2).store(3)
    for r in range(1, regions + 1):
        mc.region(r, voters=(1, 2, 3), leader=1 + r % 3)
    mc.schedulers = SchedulerController()
    mc.schedulers.remove("balance-leader")
    return mc


def assert_well_placed(mc: MockCluster) -> None:
    """Every region: 3 voters on 3 distinct stores, no learner."""
    for record in mc.cluster.regions():
        region = record.region
        assert len(voters(region)) == 3 and learners(region) == [], region
        assert len({p.store_id for p in region.peers}) == len(region.peers), region


def test_a_new_empty_store_receives_regions_until_balanced() -> None:
    mc = full_three_stores()
    mc.store(4)
    mc.settle()
    counts = mc.region_counts((1, 2, 3, 4))
    assert sum(counts.values()) == 36
    assert max(counts.values()) - min(counts.values()) <= 2
    assert counts[4] >= 8
    assert_well_placed(mc)
    ops = [op for op in mc.controller.history() if op.desc == "balance-region"]
    assert ops and all(op.kind == OperatorKind.REGION for op in ops)
    # Balanced: nothing more (no flapping).
    assert mc.schedule() == []


def test_a_move_adds_a_learner_swaps_it_in_and_removes_the_old_voter() -> None:
    mc = full_three_stores(regions=3).store(4)
    first = mc.schedule()[0]
    # Store 1 (score 3, ties to the lowest id) gives region 1, where it is a
    # follower (region 1 is led on store 2): no leader transfer.
    assert describe(first) == [
        "add learner peer 1001 on store 4",
        "joint: promote peer 1001 on store 4, demote peer 101 on store 1",
        "remove peer 101 on store 1",
    ]


def test_a_leader_on_the_source_is_moved_away_first() -> None:
    mc = MockCluster().store(1).store(2).store(3).store(4)
    for r in (1, 2, 3):
        mc.region(r, voters=(1, 2, 3), leader=1)
    mc.schedulers.remove("balance-leader")
    op = mc.schedule()[0]
    assert isinstance(op.steps[0], TransferLeader) and op.steps[0].to.store_id != 1
    assert isinstance(op.steps[1], AddLearner) and op.steps[1].peer.store_id == 4


def test_region_size_counts_in_the_score() -> None:
    # Store 1 holds one 64 MiB region; stores 2 and 3 hold 16 small ones.
    mc = MockCluster().store(1).store(2).store(3).store(4)
    mc.region(1, voters=(1, 2, 3), size=64 * MiB)
    for r in range(2, 18):
        mc.region(r, voters=(2, 3, 4))
    mc.schedulers.remove("balance-leader")
    scores = {s: mc.cluster.store_region_size(s) for s in (1, 2, 3, 4)}
    assert scores == {1: 64, 2: 80, 3: 80, 4: 16}
    ops = mc.schedule()
    # Small regions go from 2 and 3 to store 1... (the big one would overshoot).
    assert ops and all(op.region_id != 1 for op in ops)
    mc.settle()
    assert_well_placed(mc)
    # The 64 MiB region never moved: 2 * 64 is above any difference left.
    assert voters(mc.region_of(1)) == [1, 2, 3]


@pytest.mark.parametrize(
    "unfit",
    [
        {"state": StoreState.DISCONNECTED},
        {"state": StoreState.DOWN},
        {"state": StoreState.OFFLINE},
        {"busy": True},
        {"available": TiB // 10},  # 90% used
        {"heartbeat": False},
    ],
)
def test_a_store_that_cannot_take_peers_gets_none(unfit: dict[str, object]) -> None:
    mc = full_three_stores().store(4, **unfit)  # type: ignore[arg-type]
    assert mc.schedule() == []


def test_the_region_schedule_limit_and_per_store_snapshot_limit_are_honoured() -> None:
    mc = full_three_stores(region_schedule_limit=2)
    mc.store(4)
    assert len(mc.schedule()) == 2
    assert mc.schedule() == []  # two running: at the limit
    mc.settle()
    assert max(mc.region_counts((1, 2, 3, 4)).values()) <= 10
    # One snapshot at a time to the new store, however high the region limit.
    mc = full_three_stores(max_snapshot_count=1).store(4)
    assert len(mc.schedule()) == 1
    assert mc.controller.influence(mc.cluster).snapshots_in == {4: 1}


def test_a_region_with_a_running_operator_is_not_proposed() -> None:
    mc = full_three_stores(regions=6)
    for r in range(1, 6):
        mc.controller.split_region(mc.cluster, r, (), mc.now)
    mc.store(4)
    ops = mc.schedule()
    assert [op.region_id for op in ops] == [6]


def test_unhealthy_or_incomplete_regions_are_not_moved() -> None:
    mc = MockCluster().store(1).store(2).store(3).store(4).store(5)
    # Every region on stores 1-3, each unfit in its own way.
    mc.region(1, voters=(1, 2, 3), pending=(2,))
    mc.region(2, voters=(1, 2), learners=(3,))  # the replica checker's first
    mc.region(3, voters=(1, 2))
    mc.region(4, voters=(1, 2, 3))
    mc.report(mc.region_of(4), down=(mc.peer(4, 3),))
    mc.schedulers.remove("balance-leader")
    assert mc.schedule() == []


def test_a_region_whose_move_would_lose_its_healthy_quorum_is_not_moved() -> None:
    # Stores 2 and 3 went Down before their peers were reported down: the
    # region has one healthy voter of three.
    mc = MockCluster().store(1).store(2).store(3).store(4).store(5)
    for r in (1, 2, 3):
        mc.region(r, voters=(1, 2, 3))
    mc.down(2).down(3)
    mc.schedulers.remove("balance-leader")
    assert mc.schedule() == []
    # Store 2 is back: still a voter on a Down store, so not moved either.
    revive(mc, 2)
    assert mc.schedule() == []
    # Both back: every voter healthy, and the regions spread to stores 4 and 5.
    revive(mc, 3)
    ops = mc.schedule()
    added = {s.peer.store_id for op in ops for s in op.steps if isinstance(s, AddLearner)}
    assert ops and added <= {4, 5}


def revive(mc: MockCluster, store_id: int) -> None:
    """The store heartbeats again: Up."""
    stats = mc.cluster.get_store(store_id).stats
    assert stats is not None
    mc.cluster.store_heartbeat(stats, now=mc.now)
    mc.cluster.update_store_states(mc.now)


def test_a_region_never_gets_two_replicas_on_one_store() -> None:
    # Store 4 already holds a peer of every region but region 1.
    mc = MockCluster().store(1).store(2).store(3).store(4)
    mc.region(1, voters=(1, 2, 3))
    for r in range(2, 9):
        mc.region(r, voters=(1, 2, 4))
    mc.schedulers.remove("balance-leader")
    mc.settle()
    assert_well_placed(mc)
    for record in mc.cluster.regions():
        assert len({p.store_id for p in record.region.peers}) == 3
        assert all(p.role == PeerRole.VOTER for p in record.region.peers)


def test_the_leadership_moved_off_a_source_never_goes_to_an_evicting_store() -> None:
    mc = MockCluster().store(1).store(2).store(3).store(4)
    for r in (1, 2, 3):
        mc.region(r, voters=(1, 2, 3), leader=1)
    mc.schedulers.remove("balance-leader")
    mc.schedulers.add(mc.cluster, "evict-leader", 2)
    ops = [op for op in mc.schedule() if op.desc == "balance-region"]
    assert ops
    for op in ops:
        assert isinstance(op.steps[0], TransferLeader) and op.steps[0].to.store_id == 3


def test_the_influence_of_running_moves_counts_sizes_and_leaders() -> None:
    mc = MockCluster(region_schedule_limit=1).store(1).store(2).store(3).store(4)
    mc.region(1, voters=(1, 2, 3), leader=1, size=2 * MiB)
    for r in range(2, 12):
        mc.region(r, voters=(1, 2, 3), leader=1)
    mc.schedulers.remove("balance-leader")
    (op,) = mc.schedule()
    assert op.region_id == 1  # scores 12, 12, 12, 0: its 2 MiB can go
    influence = mc.controller.influence(mc.cluster)
    # The leader leaves store 1 for store 2; 2 MiB arrive on 4 and leave 1.
    assert influence.leader_delta == {1: -1, 2: 1}
    assert influence.size_delta == {4: 2, 1: -2}
    assert influence.region_delta == {4: 1, 1: -1}

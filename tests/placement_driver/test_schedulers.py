"""The scheduler controller: the active set, its refusals, persistence,
pauses under an explicit clock, limits and counters (MockCluster, no trio)."""

from __future__ import annotations

import pytest

from kvproto.metapb import StoreState
from kvproto.pdpb import PdErrorCode
from placement_driver.errors import (
    PdRequestError,
    SchedulerExistsError,
    SchedulerNotFoundError,
)
from placement_driver.operators import OperatorKind
from placement_driver.schedulers import BATCH, Outcome, SchedulerController
from placement_driver.storage import MemoryMetaStorage
from tests.placement_driver.mock_cluster import MockCluster


def imbalanced(**config: object) -> MockCluster:
    """Stores 1-4; 8 regions, every one led on store 1 (and more regions on
    store 1 than elsewhere: region moves are off, region_schedule_limit 0)."""
    mc = MockCluster(**{"region_schedule_limit": 0, **config})
    mc.store(1).store(2).store(3).store(4)
    for r in range(1, 9):
        mc.region(r, voters=(1, 2 + r % 3, 2 + (r + 1) % 3))
    return mc


def names(controller: SchedulerController) -> list[str]:
    return [e.name for e in controller.active()]


def test_balance_leader_and_balance_region_are_on_by_default() -> None:
    assert names(SchedulerController()) == ["balance-leader", "balance-region"]


def test_add_remove_and_their_refusals() -> None:
    # (Store 3 keeps max_replicas stores Up while 9 is drained.)
    mc = MockCluster().store(1).store(2).store(3).store(9, state=StoreState.OFFLINE)
    mc.store(9, state=StoreState.TOMBSTONE)
    c = SchedulerController()
    entry = c.add(mc.cluster, "evict-leader", 2)
    assert (entry.name, entry.scheduler.store_id, entry.paused_until) == ("evict-leader-2", 2, None)
    # Evict-leader schedulers run first, in store order.
    c.add(mc.cluster, "evict-leader-1")
    assert names(c) == ["evict-leader-1", "evict-leader-2", "balance-leader", "balance-region"]
    with pytest.raises(SchedulerExistsError, match="evict-leader-2 already exists"):
        c.add(mc.cluster, "evict-leader-2")
    with pytest.raises(SchedulerExistsError):
        c.add(mc.cluster, "balance-leader")
    bad: list[tuple[str, int | None, PdErrorCode, str]] = [
        ("balance-everything", None, PdErrorCode.INVALID_ARGUMENT, "unknown scheduler"),
        ("evict-leader", None, PdErrorCode.INVALID_ARGUMENT, "needs a store_id"),
        ("balance-leader", 1, PdErrorCode.INVALID_ARGUMENT, "takes no store_id"),
        ("evict-leader-1", 2, PdErrorCode.INVALID_ARGUMENT, "names store 1, not store 2"),
        ("evict-leader", 77, PdErrorCode.STORE_NOT_FOUND, "store 77 is not known"),
        ("evict-leader", 9, PdErrorCode.STORE_TOMBSTONE, "store 9 is a tombstone"),
    ]
    for name, store_id, code, reason in bad:
        with pytest.raises(PdRequestError, match=reason) as e:
            c.add(mc.cluster, name, store_id)
        assert e.value.code == code
    assert c.remove("evict-leader-2").name == "evict-leader-2"
    with pytest.raises(SchedulerNotFoundError, match="no scheduler evict-leader-2"):
        c.remove("evict-leader-2")
    assert c.evicting() == {1}


def test_the_active_set_survives_a_restart_and_pauses_do_not() -> None:
    mc = MockCluster().store(1).store(2)
    storage = MemoryMetaStorage()
    c = SchedulerController(storage)
    c.remove("balance-region")
    c.add(mc.cluster, "evict-leader", 2)
    c.pause("balance-leader", 60, now=0.0)
    again = SchedulerController(storage)
    assert names(again) == ["evict-leader-2", "balance-leader"]
    assert all(e.paused_until is None for e in again.active())
    # Even an empty set is kept as such, not replaced by the defaults.
    again.remove("evict-leader-2")
    again.remove("balance-leader")
    assert names(SchedulerController(storage)) == []


def test_a_failed_write_changes_nothing() -> None:
    mc = MockCluster().store(1)
    storage = MemoryMetaStorage()
    c = SchedulerController(storage)
    storage.fail_writes = True
    with pytest.raises(OSError, match="injected"):
        c.add(mc.cluster, "evict-leader", 1)
    with pytest.raises(OSError, match="injected"):
        c.remove("balance-leader")
    assert names(c) == ["balance-leader", "balance-region"]


def test_a_stored_name_no_longer_known_is_skipped() -> None:
    storage = MemoryMetaStorage()
    storage.save_schedulers(["balance-leader", "shuffle-everything"])
    assert names(SchedulerController(storage)) == ["balance-leader"]


def test_a_paused_scheduler_proposes_nothing_until_its_pause_ends() -> None:
    mc = imbalanced()
    mc.schedulers.pause("balance-leader", 30, mc.now)
    entry = mc.schedulers.get("balance-leader")
    assert entry.paused_until == mc.now + 30
    assert mc.schedule() == []
    mc.tick(29.9)
    assert mc.schedule() == []
    mc.tick(0.1)
    assert len(mc.schedule()) == BATCH
    # Paused again: the transfers under way finish, no more start.
    mc.schedulers.pause("balance-leader", 3600, mc.now)
    mc.settle()
    assert mc.cluster.store_leader_count(1) == 8 - BATCH
    # Resumed at once with 0.
    mc.schedulers.pause("balance-leader", 0, mc.now)
    assert mc.schedulers.get("balance-leader").paused_until is None
    assert mc.schedule() != []


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf"), 1e12])
def test_a_bad_pause_is_refused(seconds: float) -> None:
    c = SchedulerController()
    with pytest.raises(PdRequestError, match="a pause lasts") as e:
        c.pause("balance-leader", seconds, now=0.0)
    assert e.value.code == PdErrorCode.INVALID_ARGUMENT
    with pytest.raises(SchedulerNotFoundError):
        c.pause("evict-leader-1", 10, now=0.0)


def test_the_leader_schedule_limit_caps_leader_operators() -> None:
    mc = imbalanced(leader_schedule_limit=2)
    assert len(mc.schedule()) == 2
    assert mc.schedule() == []  # both still running
    assert mc.controller.running_count(OperatorKind.LEADER) == 2
    for op in mc.controller.running():
        mc.step(op.region_id)  # the transfer
        mc.step(op.region_id)  # its success
    assert len(mc.schedule()) == 2
    # 0 turns leader scheduling off.
    mc.cluster.set_config({"leader_schedule_limit": "0"})
    mc.settle()
    assert mc.schedule() == []


def test_a_run_fills_the_leader_limits_room_but_moves_replicas_a_few_at_a_time() -> None:
    # Leader transfers are cheap and a run's cost is its pass over the
    # regions: with room for 64, one run plans every transfer balance needs
    # (8 leaders on store 1 of 4: 5 move, to 3/2/2/1, within the tolerance
    # of 2), not 4 a run.
    mc = imbalanced(leader_schedule_limit=64)
    first = mc.schedule()
    assert len(first) == 5 and {op.kind for op in first} == {OperatorKind.LEADER}
    mc.settle()
    counts = mc.leader_counts((1, 2, 3, 4)).values()
    assert max(counts) - min(counts) <= 2
    assert mc.schedule() == []
    # Replica moves (a snapshot each) stay BATCH a run whatever the room.
    mc = MockCluster(leader_schedule_limit=0, region_schedule_limit=64)
    for store in (1, 2, 3, 4, 5, 6):
        mc.store(store)
    for r in range(1, 21):
        mc.region(r, voters=(1, 2, 3))
    assert len(mc.schedule()) == BATCH


def test_the_replica_checker_comes_first() -> None:
    # Region 1 lacks a voter; the patrol plans it, so balance-region leaves it.
    mc = MockCluster().store(1).store(2).store(3).store(4)
    mc.region(1, voters=(1, 2))
    for r in range(2, 6):
        mc.region(r, voters=(1, 2, 3))
    (repair,) = mc.patrol()
    assert (repair.region_id, repair.kind) == (1, OperatorKind.REPLICA)
    assert all(op.region_id != 1 for op in mc.schedule())


def test_decisions_are_counted_per_scheduler() -> None:
    mc = imbalanced()
    mc.schedulers.add(mc.cluster, "evict-leader", 4)
    mc.schedule()
    stats = mc.schedulers.stats
    assert mc.controller.scheduler_counts == {"balance-leader": BATCH}
    assert stats.runs[("balance-leader", Outcome.SCHEDULED)] == 1
    assert stats.runs[("evict-leader-4", Outcome.BALANCED)] == 1  # it leads nothing
    assert stats.runs[("balance-region", Outcome.LIMITED)] == 1
    mc.schedulers.pause("balance-region", 5, mc.now)
    mc.schedule()
    assert stats.runs[("balance-region", Outcome.PAUSED)] == 1
    assert mc.schedulers.get("balance-leader").operators_created == BATCH

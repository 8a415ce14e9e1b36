"""Operators through a real PdServer, with fake stores answering region
heartbeats (tests/placement_driver/fake_stores.py) under trio's MockClock.

Rules: the PD is reached over in-memory streams (`connect_in_memory`), so
virtual time only moves when every task waits on a timer; tests await
conditions (`FakeStores.wait_until`), never sleep for them; every test runs
under `trio.fail_after` (virtual seconds). TEST_CLUSTER_CONFIG: stores are
Disconnected after 2 s and Down after 6 s without heartbeat.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from kvproto import pdpb
from kvproto.metapb import RegionEpoch, StoreId, StoreState
from placement_driver.operators import OperatorKind, OperatorStatus, OperatorTimeouts
from placement_driver.server import MAX_ORDER_WAIT, PdServer
from placement_driver.testing import TEST_CLUSTER_CONFIG, connect_in_memory, open_pd
from plumbing.nursery import open_background_nursery
from tests.factories import learner
from tests.placement_driver.fake_stores import FakeStores
from tests.placement_driver.helpers import PdCaller
from tests.placement_driver.mock_cluster import learners, voters

LIMIT = 120  # virtual seconds


@asynccontextmanager
async def cluster(
    tmp_path: Path,
    stores: int,
    config: Mapping[str, object] | None = None,
    *,
    stuck: tuple[int, ...] = (),
    operator_history_size: int = 256,
    operator_timeouts: OperatorTimeouts | None = None,
) -> AsyncIterator[tuple[PdServer, FakeStores]]:
    """A PD and `stores` fake stores heartbeating every second; the first
    region has one voter, on the first store. Stores at `stuck` positions
    (1-based) never let a new learner catch up."""
    async with (
        open_pd(
            tmp_path / "pd",
            config={**TEST_CLUSTER_CONFIG, **(config or {})},
            id_alloc_step=10,
            seed=7,
            operator_history_size=operator_history_size,
            operator_timeouts=operator_timeouts,
        ) as pd,
        connect_in_memory(pd) as conn,
    ):
        fake = FakeStores(PdCaller(conn))
        await fake.bootstrap(stores, stuck=stuck)
        async with open_background_nursery() as nursery:
            nursery.start_soon(fake.run)
            try:
                yield pd, fake
            finally:
                nursery.cancel_scope.cancel()


def first_region_id(fake: FakeStores) -> int:
    return min(fake.regions)


def settled(pd: PdServer) -> bool:
    """No operator running (the last step's success is seen on the
    heartbeat after the leader carried it out)."""
    return not pd.operator_controller.running()


async def set_config(fake: FakeStores, **items: object) -> None:
    await fake.pd.ok(
        pdpb.SetConfigRequest(
            fake.pd.header(), tuple(pdpb.ConfigItem(k, str(v)) for k, v in items.items())
        ),
        pdpb.SetConfigResponse,
    )


async def test_an_under_replicated_region_grows_to_three_voters_on_three_stores(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=3) as (pd, fake):
            rid = first_region_id(fake)
            # The first region has one voter; the PD adds learners and promotes them.
            await fake.wait_until(lambda: len(voters(fake.region(rid))) == 3 and settled(pd))
            region = fake.region(rid)
            assert voters(region) == sorted(fake.stores) and learners(region) == []
            # Two add-replica operators, one after the other, both done.
            history = pd.operator_controller.history()
            assert [(op.desc, op.status) for op in history] == [
                ("add-replica", OperatorStatus.SUCCESS)
            ] * 2
            # Each: add learner, promote: conf_ver 1 -> 5.
            assert region.epoch == RegionEpoch(5, 1)
            assert fake.refused == []
            # The PD's tree agrees, and nothing more is planned.
            await fake.heartbeat(rid)
            assert pd.cluster.region_by_id(rid).region == region  # type: ignore[union-attr]
            assert pd.operator_controller.running() == []


async def test_a_down_stores_peer_is_replaced_on_a_fourth_store(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=3) as (pd, fake):
            rid = first_region_id(fake)
            s1, s2, s3 = fake.stores
            await fake.wait_until(lambda: len(voters(fake.region(rid))) == 3)
            # A fourth store joins; store 3 dies.
            s4 = await fake.add_store()
            fake.kill(s3)
            t0 = trio.current_time()
            # Once store 3 is Down, its peer is replaced on store 4.
            await fake.wait_until(lambda: voters(fake.region(rid)) == sorted([s1, s2, s4]))
            await fake.wait_until(lambda: learners(fake.region(rid)) == [] and settled(pd))
            assert trio.current_time() - t0 >= 6.0  # max_store_down_time
            assert pd.cluster.get_store(s3).state == StoreState.DOWN
            op = pd.operator_controller.history()[-1]
            assert (op.desc, op.status) == ("replace-down-peer", OperatorStatus.SUCCESS)
            assert [s.kind for s in op.steps] == ["add_learner", "change_peers", "remove_peer"]
            assert fake.refused == []


async def test_an_over_replicated_region_shrinks_without_removing_its_leader(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=3) as (pd, fake):
            rid = first_region_id(fake)
            s1, _, s3 = fake.stores
            await fake.wait_until(lambda: len(voters(fake.region(rid))) == 3)
            # An election moves the leadership to store 3.
            fr = fake.regions[rid]  # type: ignore[index]
            new_leader = fr.region.peer_on_store(s3)
            assert new_leader is not None
            fr.leader, fr.term = new_leader.id, fr.term + 1
            # One replica is enough now.
            await set_config(fake, max_replicas=1)
            await fake.wait_until(lambda: len(voters(fake.region(rid))) == 1 and settled(pd))
            # Store 3 (highest id, leader) was removed after a leader transfer, then store 2.
            assert voters(fake.region(rid)) == [s1]
            assert [op.desc for op in pd.operator_controller.history()[-2:]] == [
                "remove-extra-replica"
            ] * 2
            transfers = [o for _, o in fake.orders if o.startswith("transfer")]
            assert len(transfers) == 1
            assert fake.refused == []  # never ordered to remove its leader


async def test_the_replica_schedule_limit_is_respected(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, 3, {"replica_schedule_limit": 0}) as (pd, fake):
            # With the checker off, the first region is split in four.
            rid = first_region_id(fake)
            pd.split_region(rid, (b"b", b"c", b"d"))
            await fake.wait_until(lambda: len(fake.regions) == 4)
            assert all(len(voters(fr.region)) == 1 for fr in fake.regions.values())
            # One replica operator at a time.
            await set_config(fake, replica_schedule_limit=1)
            peak = 0

            def all_replicated() -> bool:
                nonlocal peak
                running = pd.operator_controller.running_count(OperatorKind.REPLICA)
                peak = max(peak, running)
                return settled(pd) and all(
                    len(voters(fr.region)) == 3 for fr in fake.regions.values()
                )

            await fake.wait_until(all_replicated)
            assert peak == 1
            # The split and 8 adds (balance-leader moves leaders meanwhile).
            kinds = Counter(op.kind for op in pd.operator_controller.history())
            assert (kinds[OperatorKind.ADMIN], kinds[OperatorKind.REPLICA]) == (1, 4 * 2)


async def test_max_snapshot_count_limits_learners_per_store(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = {"replica_schedule_limit": 0, "max_snapshot_count": 1}
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, 3, config, operator_history_size=64) as (pd, fake):
            rid = first_region_id(fake)
            pd.split_region(rid, (b"b", b"c", b"d"))
            await fake.wait_until(lambda: len(fake.regions) == 4)
            # Learners take 3 heartbeat rounds to catch up: snapshots pile up.
            fake.catch_up = 3
            await set_config(fake, replica_schedule_limit=64)
            peak = 0

            def all_replicated() -> bool:
                nonlocal peak
                influence = pd.operator_controller.influence(pd.cluster)
                peak = max(peak, *influence.snapshots_in.values(), 0)
                return settled(pd) and all(
                    len(voters(fr.region)) == 3 for fr in fake.regions.values()
                )

            await fake.wait_until(all_replicated)
            # At most one snapshot on its way to each store, yet every region made it.
            assert peak == 1


async def test_a_learner_that_never_catches_up_times_its_operator_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    timeouts = OperatorTimeouts(step=5, snapshot=20)
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=2, stuck=(2,), operator_timeouts=timeouts) as (
            pd,
            fake,
        ):
            rid = first_region_id(fake)
            # The learner on store 2 stays pending: the add-learner step outlives its deadline.
            await fake.wait_until(lambda: pd.operator_controller.history() != [])
            (op,) = pd.operator_controller.history()
            assert op.status == OperatorStatus.TIMEOUT
            assert op.finished_at is not None and 20 <= op.finished_at - op.created_at < 22
            assert op.reason.startswith("step 1 (add learner peer")
            # The learner it left is still catching up: the checker waits for it.
            assert learners(fake.region(rid)) == [fake.stores[1]]
            await trio.sleep(10)
            assert pd.operator_controller.running() == []


async def test_an_unexpected_epoch_change_cancels_the_operator(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=3, stuck=(2,)) as (pd, fake):
            rid = first_region_id(fake)
            _, s2, s3 = fake.stores
            # The learner on store 2 joins and keeps catching up.
            await fake.wait_until(lambda: learners(fake.region(rid)) == [s2])
            op = pd.operator_controller.get(rid)
            assert op is not None and op.is_running
            # Behind the PD's back, a learner is added on store 3 too.
            fr = fake.regions[rid]  # type: ignore[index]
            extra = learner(9999, s3)
            fr.region = fr.region.with_peer(extra).with_epoch(
                RegionEpoch(fr.region.epoch.conf_ver + 1, fr.region.epoch.version)
            )
            fr.pending[extra.id] = float("inf")
            await fake.heartbeat(rid)
            # The plan no longer explains the epoch: canceled.
            assert op.status == OperatorStatus.CANCELED
            assert "conf_ver moved from 1 to 3" in op.reason
            assert pd.operator_controller.history()[-1] is op


async def test_the_history_keeps_the_newest_operators(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=3, operator_history_size=2) as (pd, fake):
            rid = first_region_id(fake)
            # Two add-replica operators, then a split: three operators, two kept.
            await fake.wait_until(lambda: len(voters(fake.region(rid))) == 3 and settled(pd))
            op = pd.split_region(rid, (b"m",))
            await fake.wait_until(lambda: not op.is_running)
            history = pd.operator_controller.history()
            assert [o.desc for o in history] == ["add-replica", "split-region"]
            assert history[-1] is op and op.status == OperatorStatus.SUCCESS


async def test_a_split_ordered_in_process_reaches_the_leader(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=1) as (pd, fake):
            rid = first_region_id(fake)
            # The test orders a split at two keys.
            op = pd.split_region(rid, (b"g", b"p"))
            # The leader gets it with its next heartbeat and splits in three.
            await fake.wait_until(lambda: not op.is_running)
            assert op.status == OperatorStatus.SUCCESS
            ranges = [(r.region.start_key, r.region.end_key) for r in pd.cluster.regions()]
            assert ranges == [(b"", b"g"), (b"g", b"p"), (b"p", b"")]


async def test_an_offline_store_is_drained_then_becomes_a_tombstone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=4) as (pd, fake):
            rid = first_region_id(fake)
            s1, s2, s3, s4 = fake.stores
            await fake.wait_until(lambda: voters(fake.region(rid)) == [s1, s2, s3] and settled(pd))
            # Store 2 is decommissioned.
            pd.set_store_state(s2, StoreState.OFFLINE)
            # Its peer moves to store 4, and then it is removed for good.
            await fake.wait_until(lambda: voters(fake.region(rid)) == [s1, s3, s4])
            await fake.wait_until(lambda: pd.cluster.get_store(s2).state == StoreState.TOMBSTONE)
            assert pd.operator_controller.history()[-1].desc == "replace-offline-peer"
            assert learners(fake.region(rid)) == []


async def test_a_new_store_fills_with_regions_and_leaders_until_balanced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT * 2):
        async with cluster(tmp_path, stores=3) as (pd, fake):
            # Twelve regions with three voters each (leaders spread over stores 1-3).
            rid = first_region_id(fake)
            await fake.wait_until(lambda: len(voters(fake.region(rid))) == 3 and settled(pd))
            pd.split_region(rid, tuple(b"%c" % c for c in b"bcdefghijkl"))

            def replicated() -> bool:
                return len(fake.regions) == 12 and all(
                    len(voters(fr.region)) == 3 for fr in fake.regions.values()
                )

            await fake.wait_until(replicated)
            s4 = await fake.add_store()

            def spread(counts: list[int]) -> int:
                return max(counts) - min(counts)

            def balanced() -> bool:
                c = pd.cluster
                regions = [c.store_region_count(s) for s in fake.stores]
                leaders = [c.store_leader_count(s) for s in fake.stores]
                return settled(pd) and spread(regions) <= 2 and spread(leaders) <= 2

            await fake.wait_until(balanced)
            assert pd.cluster.store_region_count(s4) >= 8
            assert pd.cluster.store_leader_count(s4) >= 2
            assert replicated() and fake.refused == []
            for fr in fake.regions.values():
                assert len({p.store_id for p in fr.region.peers}) == len(fr.region.peers) == 3
            descs = {op.desc for op in pd.operator_controller.history()}
            assert {"balance-region", "balance-leader"} <= descs


async def wait_orders(fake: FakeStores, store_id: int, wait: float) -> pdpb.WaitOrdersResponse:
    request = pdpb.WaitOrdersRequest(fake.pd.header(), StoreId(store_id), float(wait))
    response = await fake.pd.conn.call(request, timeout=(wait if wait >= 0 else 0) + 70)
    assert isinstance(response, pdpb.WaitOrdersResponse) and response.header.error is None
    return response


async def test_a_stores_long_poll_is_answered_when_an_operator_starts_for_its_region(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # One store: nothing to do, so the poll is held its whole wait.
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, stores=1) as (_pd, fake):
            rid = first_region_id(fake)
            (s1,) = fake.stores
            t0 = trio.current_time()
            assert (await wait_orders(fake, s1, 20)).report_regions == ()
            assert trio.current_time() - t0 == 20
            # An unusable wait is the PD's longest.
            t0 = trio.current_time()
            assert (await wait_orders(fake, s1, float("nan"))).report_regions == ()
            assert trio.current_time() - t0 == MAX_ORDER_WAIT
            # Two more stores: the next patrol (every second) starts an
            # add-replica operator, and the held poll answers with the region
            # then, not when its 30 s are over.
            answer: list[pdpb.WaitOrdersResponse] = []

            async def poll() -> None:
                answer.append(await wait_orders(fake, s1, 30))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.sleep(5)
                assert answer == []
                t0 = trio.current_time()
                await fake.add_store()
                await fake.add_store()
            assert answer[0].report_regions == (rid,)
            assert trio.current_time() - t0 <= 2


async def test_schedulers_run_again_soon_while_they_find_work(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # 30 regions led on store 1 of 3: balance-leader has ~20 leaders to move.
    # Run once per patrol (1 s) with 4 operators a run, it started 4 a
    # second; run again 50 ms after a run that started some, it starts all
    # it may (the limit, 64 here, bounds how many run at once) well within
    # the first second.
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, 3, {"leader_schedule_limit": 64}) as (pd, fake):
            pd.schedulers.pause("balance-leader", 3600, trio.current_time())
            rid = first_region_id(fake)
            await fake.wait_until(lambda: len(voters(fake.region(rid))) == 3 and settled(pd))
            op = pd.split_region(rid, tuple(b"k%02d" % i for i in range(1, 30)))
            await fake.wait_until(lambda: not op.is_running)
            await fake.wait_until(
                lambda: (
                    all(r.leader is not None for r in pd.cluster.regions())
                    and len(fake.regions) == 30
                    and settled(pd)
                )
            )
            s1 = fake.stores[0]
            assert all(fr.leader_peer.store_id == s1 for fr in fake.regions.values())
            before = pd.schedulers.get("balance-leader").operators_created
            pd.schedulers.pause("balance-leader", 0, trio.current_time())
            await trio.sleep(1.0)
            made = pd.schedulers.get("balance-leader").operators_created - before
            assert made >= 16, made
            await fake.wait_until(lambda: settled(pd))
            led = Counter(fr.leader_peer.store_id for fr in fake.regions.values())
            assert max(led.values()) - min(led.values()) <= 2, led

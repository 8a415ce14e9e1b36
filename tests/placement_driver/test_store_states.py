"""Store states over time, under trio's MockClock (autojump).

Rules: the PD is reached over in-memory streams (`connect_in_memory`), never
sockets, so virtual time only moves when every task waits on a timer;
`trio.sleep` is how a test lets virtual time pass; every test runs under
`trio.fail_after` (virtual seconds).
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from kvproto.metapb import StoreState
from placement_driver.server import PdServer
from placement_driver.testing import connect_in_memory, open_pd
from tests.placement_driver.helpers import PdCaller, bootstrap_cluster

# TEST_CLUSTER_CONFIG: Disconnected after 2 s, Down after 6 s.
DISCONNECT, DOWN = 2.0, 6.0


async def state(pd: PdCaller, store_id: int) -> StoreState:
    r = await pd.get_store(store_id)
    assert r.store is not None
    return r.store.state


async def test_a_silent_store_goes_disconnected_then_down_and_comes_back_up(
    pd: PdServer, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with connect_in_memory(pd) as conn:
            caller = PdCaller(conn)
            s1, s2 = await bootstrap_cluster(caller, store_count=2)
            await caller.store_heartbeat(s1.id)
            await caller.store_heartbeat(s2.id)
            t0 = trio.current_time()

            async def keep_s1_alive() -> None:
                while True:
                    await trio.sleep(0.5)
                    await caller.store_heartbeat(s1.id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_s1_alive)
                await trio.sleep_until(t0 + DISCONNECT - 0.01)
                assert await state(caller, s2.id) == StoreState.UP
                await trio.sleep_until(t0 + DISCONNECT + 0.01)
                assert await state(caller, s2.id) == StoreState.DISCONNECTED
                await trio.sleep_until(t0 + DOWN - 0.01)
                assert await state(caller, s2.id) == StoreState.DISCONNECTED
                await trio.sleep_until(t0 + DOWN + 0.01)
                assert await state(caller, s2.id) == StoreState.DOWN
                assert await state(caller, s1.id) == StoreState.UP  # it kept talking

                await caller.store_heartbeat(s2.id)
                assert await state(caller, s2.id) == StoreState.UP
                assert pd.cluster.get_store(s2.id).state == StoreState.UP
                nursery.cancel_scope.cancel()


async def test_a_down_store_that_returns_is_watched_again(
    pd: PdServer, autojump_clock: trio.testing.MockClock
) -> None:
    """Once every store is Down nothing is due; a heartbeat must re-arm
    the deadline, or the store would stay Up forever."""
    with trio.fail_after(60):
        async with connect_in_memory(pd) as conn:
            caller = PdCaller(conn)
            (s1,) = await bootstrap_cluster(caller)
            await trio.sleep(DOWN + 1)
            assert await state(caller, s1.id) == StoreState.DOWN
            await caller.store_heartbeat(s1.id)
            t = trio.current_time()
            await trio.sleep_until(t + DISCONNECT + 0.01)
            assert await state(caller, s1.id) == StoreState.DISCONNECTED


async def test_a_shorter_disconnect_time_set_over_rpc_applies_at_once(
    pd: PdServer, autojump_clock: trio.testing.MockClock
) -> None:
    from kvproto import pdpb

    with trio.fail_after(60):
        async with connect_in_memory(pd) as conn:
            caller = PdCaller(conn)
            (s1,) = await bootstrap_cluster(caller)
            await caller.store_heartbeat(s1.id)
            t0 = trio.current_time()
            await caller.ok(
                pdpb.SetConfigRequest(
                    caller.header(), (pdpb.ConfigItem("store_disconnect_time", "500ms"),)
                ),
                pdpb.SetConfigResponse,
            )
            await trio.sleep_until(t0 + 0.51)
            assert await state(caller, s1.id) == StoreState.DISCONNECTED


async def test_a_restarted_pd_gives_stores_a_full_grace_period(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with open_pd(tmp_path / "pd") as pd, connect_in_memory(pd) as conn:
            caller = PdCaller(conn)
            (s1,) = await bootstrap_cluster(caller)
            await trio.sleep(DOWN + 1)
            assert await state(caller, s1.id) == StoreState.DOWN
        async with open_pd(tmp_path / "pd") as pd, connect_in_memory(pd) as conn:
            caller = PdCaller(conn, caller.cluster_id)
            assert await state(caller, s1.id) == StoreState.UP
            await trio.sleep(DISCONNECT + 0.01)
            assert await state(caller, s1.id) == StoreState.DISCONNECTED

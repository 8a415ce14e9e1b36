"""The store's PD worker (store_node.pd_worker) against a fake PD under
trio's MockClock: heartbeats of many regions go out together, bounded,
rather than one round trip after another."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kvproto import pdpb
from store_node.config import StoreConfig
from store_node.pd_worker import HEARTBEATS_IN_FLIGHT, PdWorker
from tests.factories import region


class SlowPd:
    """Answers each region heartbeat after 50 ms, counting how many wait at
    once."""

    def __init__(self) -> None:
        self.waiting = 0
        self.most_waiting = 0
        self.answered: list[int] = []

    async def region_heartbeat(
        self, req: pdpb.RegionHeartbeatRequest
    ) -> pdpb.RegionHeartbeatResponse:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        await trio.sleep(0.05)
        self.waiting -= 1
        self.answered.append(req.region.id)
        return pdpb.RegionHeartbeatResponse(pdpb.ResponseHeader(), region_id=req.region.id)


def heartbeat(region_id: int) -> pdpb.RegionHeartbeatRequest:
    r = region(region_id, stores=(1, 2, 3))
    return pdpb.RegionHeartbeatRequest(pdpb.RequestHeader(), r, r.peers[0])


async def test_heartbeats_of_many_regions_are_in_flight_together_and_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pd = SlowPd()
    worker = PdWorker(None, pd, StoreConfig(data_dir="unused"))  # type: ignore[arg-type]
    t0 = trio.current_time()
    with trio.fail_after(10):
        await worker.send_region_heartbeats([heartbeat(r) for r in range(1, 65)])
    assert sorted(pd.answered) == list(range(1, 65))
    assert pd.most_waiting == HEARTBEATS_IN_FLIGHT
    # 64 round trips of 50 ms, 16 at a time: 0.2 s, not 3.2 s.
    assert trio.current_time() - t0 == pytest.approx(64 // HEARTBEATS_IN_FLIGHT * 0.05)

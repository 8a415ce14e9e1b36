"""Fake stores for scheduling tests through a real PdServer.

They are nothing but heartbeats: every store sends store heartbeats, every
region's leader sends region heartbeats (every `interval`, and at once
after it carried out an order, as a real leader does after an epoch or
leader change), and a leader carries out the step it is answered with on
its region, by the store's own rules (`mock_cluster.apply_order`: the
epoch must match, one conf change at a time, joint changes left right after
the joint state was reported once).

A learner the leader adds is reported pending for `catch_up` rounds of
heartbeats (forever on a store in `stuck`): the snapshot. A store taken
down (`kill`) stops heartbeating; peers on it are reported down. A split
asks the PD for ids (AskBatchSplit), reports the parts (ReportBatchSplit)
and lets their leaders (on the old leader's store) heartbeat.

A consistency check the PD orders is "applied" at once: every replica's
store that is up and not `silent` reports its digest (`digests`, by store;
`DIGEST` otherwise) at the next index of the region.

`wait_until(predicate)` returns once the predicate holds, checked after
every heartbeat answer: tests await conditions instead of sleeping.

`admin_cluster` is a running PD and its fake stores for tests of the admin
API and `shardkv ctl`: only an administrator starts operators there.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from kvproto import pdpb
from kvproto.epoch import AdminCmdType, bumped
from kvproto.metapb import Peer, PeerId, PeerRole, Region, RegionId, StoreId
from kvproto.pdpb import PeerStats, StoreStats
from kvproto.rpc import connect
from placement_driver.operators import in_joint
from placement_driver.server import PdServer
from placement_driver.testing import open_pd
from tests.factories import store
from tests.placement_driver.helpers import PdCaller, bootstrap_cluster
from tests.placement_driver.mock_cluster import Refused, apply_order, leave_joint

TiB = 1 << 40
DIGEST = b"\x11" * 16


@dataclass(slots=True)
class FakeRegion:
    region: Region
    leader: PeerId
    term: int = 1
    index: int = 5  # the applied index consistency checks run at
    # Peer id -> heartbeat rounds until it has caught up.
    pending: dict[PeerId, float] = field(default_factory=dict)

    @property
    def leader_peer(self) -> Peer:
        p = self.region.find_peer(self.leader)
        assert p is not None
        return p


class FakeStores:
    def __init__(self, pd: PdCaller, *, interval: float = 1.0, catch_up: int = 1) -> None:
        self.pd = pd
        self.interval = interval
        self.catch_up = catch_up
        self.stores: list[StoreId] = []
        self.up: set[StoreId] = set()
        self.stuck: set[StoreId] = set()
        self.regions: dict[RegionId, FakeRegion] = {}
        self.orders: list[tuple[int, str]] = []  # (region id, what) carried out
        self.refused: list[tuple[int, str]] = []
        # Consistency checks: a store's digest (default DIGEST), stores that
        # never report one.
        self.digests: dict[StoreId, bytes] = {}
        self.silent: set[StoreId] = set()
        self._changed = trio.Event()
        self._lock = trio.Lock()

    # -- setting up --------------------------------------------------------------

    async def bootstrap(self, store_count: int, *, stuck: tuple[int, ...] = ()) -> None:
        """A cluster of `store_count` stores; the first region, on the
        first store, has one voter. Stores at `stuck` positions (1-based)
        never let a new learner catch up."""
        for i, s in enumerate(await bootstrap_cluster(self.pd, store_count), start=1):
            if i in stuck:
                self.stuck.add(s.id)
            self.stores.append(s.id)
            self.up.add(s.id)
            await self.store_heartbeat(s.id)
        first = (await self.pd.get_region(b"")).region
        assert first is not None
        self.regions[first.id] = FakeRegion(first, first.peers[0].id)
        await self.heartbeat(first.id)

    async def add_store(self) -> StoreId:
        s = store(await self.pd.alloc_id())
        await self.pd.put_store(s)
        self.stores.append(s.id)
        self.up.add(s.id)
        await self.store_heartbeat(s.id)
        return s.id

    def kill(self, store_id: StoreId) -> None:
        assert all(fr.leader_peer.store_id != store_id for fr in self.regions.values())
        self.up.discard(store_id)

    async def run(self) -> None:
        """Heartbeats every `interval` until cancelled."""
        while True:
            await trio.sleep(self.interval)
            for s in sorted(self.up):
                await self.store_heartbeat(s)
            for fr in self.regions.values():
                for p in list(fr.pending):
                    fr.pending[p] -= 1
                    if fr.pending[p] <= 0:
                        del fr.pending[p]
            for rid in sorted(self.regions):
                await self.heartbeat(rid)

    async def store_heartbeat(self, store_id: StoreId) -> None:
        count = sum(
            1 for fr in self.regions.values() if fr.region.peer_on_store(store_id) is not None
        )
        stats = StoreStats(store_id, capacity=TiB, available=TiB // 2, region_count=count)
        resp = await self.pd.call(
            pdpb.StoreHeartbeatRequest(self.pd.header(), stats), pdpb.StoreHeartbeatResponse
        )
        if resp.header.error is not None:
            # A removed (Tombstone) store stops, as a real one does.
            assert resp.header.error.code == pdpb.PdErrorCode.STORE_TOMBSTONE, resp.header.error
            self.up.discard(store_id)

    # -- waiting -----------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def region(self, region_id: int) -> Region:
        return self.regions[RegionId(region_id)].region

    # -- the leader's side -------------------------------------------------------

    async def heartbeat(self, region_id: int) -> None:
        """The leader reports its region, carries out the answer, and
        reports again at once while that changed something."""
        async with self._lock:
            for _ in range(16):
                fr = self.regions.get(RegionId(region_id))
                if fr is None or fr.leader_peer.store_id not in self.up:
                    return
                region = fr.region
                down = tuple(
                    PeerStats(p)
                    for p in region.peers
                    if p.store_id not in self.up and p.id != fr.leader
                )
                pending = tuple(p for p in region.peers if p.id in fr.pending)
                resp = await self.pd.region_heartbeat(
                    region, fr.leader_peer, term=fr.term, down_peers=down, pending_peers=pending
                )
                changed = await self._carry_out(fr, resp)
                if not changed and in_joint(fr.region):
                    # The joint state was reported once: leave it.
                    fr.region = leave_joint(fr.region)
                    self.orders.append((region_id, "leave joint"))
                    changed = True
                self._notify()
                if not changed:
                    return

    async def _carry_out(self, fr: FakeRegion, resp: pdpb.RegionHeartbeatResponse) -> bool:
        rid = fr.region.id
        if resp.consistency_check:
            await self._report_digests(fr, resp.consistency_check)
        if resp.change_peer is not None:
            removed = {c.peer.id for c in resp.change_peer.changes}
            if fr.leader in removed:  # the PD must move the leadership first
                self.refused.append((rid, "an order to remove or demote the leader"))
                return False
            try:
                new = apply_order(fr.region, resp)
            except Refused as e:
                self.refused.append((rid, str(e)))
                return False
            for p in new.peers:
                if fr.region.find_peer(p.id) is None:
                    fr.pending[p.id] = math.inf if p.store_id in self.stuck else self.catch_up
            fr.region = new
            self.orders.append((rid, f"change peers {resp.change_peer.changes}"))
            return True
        if resp.transfer_leader is not None:
            target = fr.region.find_peer(resp.transfer_leader.id)
            if target is None or target.role != PeerRole.VOTER or target.store_id not in self.up:
                self.refused.append((rid, f"transfer to {resp.transfer_leader}"))
                return False
            fr.leader = target.id
            fr.term += 1
            self.orders.append((rid, f"transfer leader to {target.id}"))
            return True
        if resp.split_region is not None:
            await self._split(fr, resp.split_region.keys)
            return True
        return False

    async def _report_digests(self, fr: FakeRegion, check_id: int) -> None:
        fr.index += 1
        for p in fr.region.peers:
            if p.store_id not in self.up or p.store_id in self.silent:
                continue
            req = pdpb.ReportRegionHashRequest(
                self.pd.header(),
                fr.region,
                check_id,
                fr.index,
                p.store_id,
                self.digests.get(p.store_id, DIGEST),
            )
            await self.pd.ok(req, pdpb.ReportRegionHashResponse)
        self.orders.append((fr.region.id, f"consistency check {check_id}"))

    async def _split(self, fr: FakeRegion, keys: tuple[bytes, ...]) -> None:
        assert keys, "fake stores split at given keys only"
        region = fr.region
        answer = await self.pd.ok(
            pdpb.AskBatchSplitRequest(self.pd.header(), region, len(keys)),
            pdpb.AskBatchSplitResponse,
        )
        epoch = bumped(region.epoch, AdminCmdType.BATCH_SPLIT, len(keys))
        bounds = [region.start_key, *keys, region.end_key]
        parts = [region.with_range(bounds[0], bounds[1]).with_epoch(epoch)]
        leader_index = region.peers.index(fr.leader_peer)
        for i, ids in enumerate(answer.ids):
            peers = tuple(
                Peer(pid, p.store_id, p.role)
                for pid, p in zip(ids.new_peer_ids, region.peers, strict=True)
            )
            new = Region(ids.new_region_id, bounds[i + 1], bounds[i + 2], epoch, peers)
            parts.append(new)
            self.regions[new.id] = FakeRegion(new, peers[leader_index].id)
        fr.region = parts[0]
        await self.pd.ok(
            pdpb.ReportBatchSplitRequest(self.pd.header(), tuple(parts)),
            pdpb.ReportBatchSplitResponse,
        )
        self.orders.append((region.id, f"split at {keys}"))


# The replica checker and the schedulers off (only an administrator starts
# operators), and store timeouts no test on a busy machine reaches (no store
# turns Disconnected while the fakes stay quiet).
ADMIN_CONFIG: Mapping[str, object] = {
    "replica_schedule_limit": 0,
    "leader_schedule_limit": 0,
    "region_schedule_limit": 0,
    "store_disconnect_time": "1h",
    "max_store_down_time": "2h",
}


@asynccontextmanager
async def admin_cluster(
    data_dir: str | os.PathLike[str],
    store_count: int = 4,
    *,
    id_alloc_step: int = 1000,
    admin_token_file: str | os.PathLike[str] | None = None,
) -> AsyncIterator[tuple[PdServer, FakeStores]]:
    """A PD on ADMIN_CONFIG with `store_count` fake stores; the first region
    has one voter, on the first store. `FakeStores.run` is the test's to
    start."""
    async with (
        open_pd(
            data_dir,
            config=ADMIN_CONFIG,
            seed=7,
            id_alloc_step=id_alloc_step,
            admin_token_file=admin_token_file,
        ) as pd,
        connect(pd.addresses.rpc, connect_timeout=5) as conn,
    ):
        fake = FakeStores(PdCaller(conn), interval=0.02, catch_up=1)
        await fake.bootstrap(store_count)
        yield pd, fake

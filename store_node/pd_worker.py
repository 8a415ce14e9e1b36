"""The store's side of the PD conversation: store heartbeats every few
seconds, region heartbeats from each leader periodically and at once when a
region's leader or epoch changes (each with the region's client traffic
since the previous one).

A heartbeat that fails is logged and retried on the next interval: the PD
being away must never stop the store from serving.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar

import trio

from kvproto import pdpb
from kvproto.metapb import PeerId, Region
from kvproto.pd_client import PdClient, PdClusterMismatchError, PdServerError
from kvproto.rpc import RpcCallError
from store_node.config import StoreConfig
from store_node.core import StoreCore
from store_node.disk import DiskMonitor
from store_node.peer import Flow, Peer

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a PD call may fail with while the PD is away, restarting or behind:
# logged and retried at the next interval. Anything else is a bug and
# surfaces.
PD_UNAVAILABLE = (RpcCallError, PdServerError, PdClusterMismatchError)


class StoreLoop(Protocol):
    """What the PD worker needs of the store (`StoreNode` has it): the core
    is reached only through the store loop, between rounds; the free space
    reported is its disk monitor's (a full disk tells the PD to place no
    replica there)."""

    @property
    def disk(self) -> DiskMonitor: ...

    async def submit(self, event: Callable[[StoreCore], None]) -> None: ...

    async def call_core(self, fn: Callable[[StoreCore], T]) -> T: ...

    async def pd_work_due(self) -> None: ...

    async def split_region(self, region_id: int, keys: tuple[bytes, ...]) -> None: ...

    def used_bytes(self) -> int: ...


def _ignore_latency(kind: str, seconds: float) -> None:
    pass


class PdWorker:
    """`observe_latency(kind, seconds)` is told how long each heartbeat the
    PD answered took ("store" or "region"; the store's metrics)."""

    def __init__(
        self,
        store: StoreLoop,
        pd: PdClient,
        config: StoreConfig,
        observe_latency: Callable[[str, float], None] = _ignore_latency,
    ) -> None:
        self.store = store
        self.pd = pd
        self.config = config
        self._observe_latency = observe_latency

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_store_heartbeats)
            nursery.start_soon(self._run_periodic_region_heartbeats)
            nursery.start_soon(self._run_due_region_heartbeats)
            nursery.start_soon(self._run_order_watch)

    # -- store -----------------------------------------------------------------

    async def store_stats(self) -> pdpb.StoreStats:
        store_id, regions, leaders = await self.store.call_core(
            lambda core: (core.store_id, len(core.peers), len(core.leader_regions()))
        )
        space = self.store.disk.space
        if space is None:  # not measured yet
            space = await trio.to_thread.run_sync(self.store.disk.sample)
        return pdpb.StoreStats(
            store_id=store_id,
            capacity=space.total,
            available=space.free,
            used_size=self.store.used_bytes(),
            region_count=regions,
            leader_count=leaders,
        )

    async def _run_store_heartbeats(self) -> None:
        while True:
            try:
                stats = await self.store_stats()
                started = time.perf_counter()
                resp = await self.pd.store_heartbeat(stats)
                self._observe_latency("store", time.perf_counter() - started)
                if resp.region_max_size and resp.region_max_keys:
                    await self.store.submit(
                        _learn_limits((resp.region_max_size, resp.region_max_keys))
                    )
                if resp.report_regions:
                    await self._report_now(resp.report_regions)
                if resp.report_leaders:
                    await self._report_all_leaders()
            except PD_UNAVAILABLE as e:  # the PD being away must not stop the store
                log.warning("store heartbeat failed: %s", e)
            await trio.sleep(self.config.store_heartbeat_interval)

    # -- regions ---------------------------------------------------------------

    def _requests(
        self, core: StoreCore, peers: Sequence[Peer]
    ) -> list[pdpb.RegionHeartbeatRequest]:
        """Heartbeats of the leaders among `peers`, built in the store loop
        (one consistent view of each region)."""
        return [
            region_heartbeat_request(
                p,
                core.heard_ticks(p),
                core.ticks,
                self.config.tick_interval,
                down_after_ticks=2 * self.config.election_ticks,
            )
            for p in peers
            if p.is_leader() and p.initialized
        ]

    async def _run_order_watch(self) -> None:
        """Long-poll the PD for the regions it holds a new operator for, and
        report them at once: an operator's first step then goes out in
        about a round trip rather than with the next store heartbeat's
        answer (which still carries them, for a PD without WaitOrders)."""
        store_id = await self.store.call_core(lambda core: core.store_id)
        while True:
            try:
                region_ids = await self.pd.wait_orders(store_id, ORDER_WAIT)
            except PD_UNAVAILABLE as e:
                log.debug("waiting for PD orders failed: %s", e)
                await trio.sleep(self.config.store_heartbeat_interval)
                continue
            if region_ids:
                await self._report_now(region_ids)

    async def _report_now(self, region_ids: Sequence[int]) -> None:
        """Heartbeats of the regions the PD asked to hear from (it holds an
        operator step for them)."""

        def take(core: StoreCore) -> list[pdpb.RegionHeartbeatRequest]:
            peers = [p for rid in region_ids if (p := core.peers.get(rid)) is not None]
            return self._requests(core, peers)

        await self.send_region_heartbeats(await self.store.call_core(take))

    async def _report_all_leaders(self) -> None:
        """Heartbeats of every region led here, asleep or not: the PD has
        just (re)started and knows none of our leaders. Without this, a
        sleeping region's leader stayed unknown to it, to its schedulers
        and to clients' routing for up to asleep_region_heartbeat_interval
        (`shardkv chaos` found a cluster not serving a minute after a PD
        restart)."""

        def take(core: StoreCore) -> list[pdpb.RegionHeartbeatRequest]:
            return self._requests(core, list(core.peers.values()))

        requests = await self.store.call_core(take)
        log.info("the PD asked for our leaders: reporting %d regions", len(requests))
        await self.send_region_heartbeats(requests)

    async def send_region_heartbeats(self, requests: Sequence[pdpb.RegionHeartbeatRequest]) -> None:
        """Send heartbeats of distinct regions, up to HEARTBEATS_IN_FLIGHT at
        once on the PD connection (they leave in batched frames). One at a
        time, the new leaders of 64 transferred regions waited for each
        other's round trips to a busy PD: about 3 s at 10,000 regions."""
        if len(requests) == 1:
            await self.region_heartbeat(requests[0])
            return
        limiter = trio.CapacityLimiter(HEARTBEATS_IN_FLIGHT)

        async def one(req: pdpb.RegionHeartbeatRequest) -> None:
            async with limiter:
                await self.region_heartbeat(req)

        async with trio.open_nursery() as nursery:
            for req in requests:
                nursery.start_soon(one, req)

    async def _run_periodic_region_heartbeats(self) -> None:
        cfg = self.config
        asleep_ticks = max(1, round(cfg.asleep_region_heartbeat_interval / cfg.tick_interval))
        share = min(1.0, cfg.region_heartbeat_interval / cfg.asleep_region_heartbeat_interval)

        def due(core: StoreCore) -> list[int]:
            return periodic_heartbeats_due(core.leader_regions(), core.ticks, asleep_ticks, share)

        def take(ids: list[int], core: StoreCore) -> list[pdpb.RegionHeartbeatRequest]:
            return self._requests(core, [p for r in ids if (p := core.peers.get(r)) is not None])

        while True:
            await trio.sleep(cfg.region_heartbeat_interval)
            region_ids = await self.store.call_core(due)
            # A slice at a time, spread over half the interval: ten thousand
            # heartbeats sent back to back held the trio thread for seconds,
            # the store's liveness pings went out late, and the other stores
            # woke every region led here.
            slices = range(0, len(region_ids), HEARTBEAT_SLICE)
            pause = cfg.region_heartbeat_interval / 2 / max(1, len(slices))
            for start in slices:
                ids = region_ids[start : start + HEARTBEAT_SLICE]
                await self.send_region_heartbeats(await self.store.call_core(partial(take, ids)))
                await trio.sleep(pause)

    async def _run_due_region_heartbeats(self) -> None:
        def take(
            core: StoreCore,
        ) -> tuple[
            list[tuple[Region, ...]],
            list[pdpb.RegionHeartbeatRequest],
            list[pdpb.ReportRegionHashRequest],
            bool,
        ]:
            reports = core.take_split_reports()
            requests = self._requests(core, core.take_heartbeat_due())
            digests = core.consistency.take_reports()
            return reports, requests, digests, bool(core.heartbeat_due or core.split_reports)

        while True:
            reports, requests, digests, more = await self.store.call_core(take)
            for regions in reports:
                try:
                    await self.pd.report_batch_split(regions)
                except PD_UNAVAILABLE as e:  # heartbeats of the new regions follow anyway
                    log.warning("split report failed: %s", e)
            await self.send_region_heartbeats(requests)
            await self.report_digests(digests)
            if not more:
                await self.store.pd_work_due()

    async def report_digests(self, digests: Sequence[pdpb.ReportRegionHashRequest]) -> None:
        """Replicas' digests at consistency checks (`store_node.consistency`);
        one the PD misses leaves that check unfinished there, nothing more."""
        for req in digests:
            try:
                await self.pd.report_region_hash(req)
            except PD_UNAVAILABLE as e:
                log.warning(
                    "region %d: digest at %d not reported to the PD: %s",
                    req.region.id,
                    req.index,
                    e,
                )

    async def region_heartbeat(self, req: pdpb.RegionHeartbeatRequest) -> None:
        region_id = req.region.id
        started = time.perf_counter()
        try:
            resp = await self.pd.region_heartbeat(req)
        except PD_UNAVAILABLE as e:  # the PD being away must not stop the store
            log.warning("region %d heartbeat failed: %s", region_id, e)
            return
        self._observe_latency("region", time.perf_counter() - started)
        log.debug(
            "region %d v%d/c%d heartbeat: %s",
            region_id,
            req.region.epoch.version,
            req.region.epoch.conf_ver,
            "no step" if resp.region_epoch is None else "step",
        )
        await self._execute(region_id, resp)

    async def _execute(self, region_id: int, resp: pdpb.RegionHeartbeatResponse) -> None:
        """Carry out the operator step the PD answered with, if any."""
        if resp.split_region is not None:
            await self.store.split_region(region_id, resp.split_region.keys)
        if has_core_order(resp):
            await self.store.submit(partial(execute_order, region_id=region_id, resp=resp))


def has_core_order(resp: pdpb.RegionHeartbeatResponse) -> bool:
    """Whether the answer holds an order `execute_order` carries out."""
    return bool(
        resp.change_peer is not None or resp.transfer_leader is not None or resp.consistency_check
    )


def execute_order(core: StoreCore, region_id: int, resp: pdpb.RegionHeartbeatResponse) -> None:
    """Carry out the PD's orders that need nothing but the core: a
    membership change (if planned on the region's epoch) or a leader
    transfer, and a consistency check. (A split order needs a size scan and
    ids first.)"""
    if resp.consistency_check:
        not_started = core.check_consistency(region_id, resp.consistency_check)
        if not_started is not None:
            log.info("region %d: consistency check not proposed: %s", region_id, not_started)
    if resp.change_peer is not None and resp.region_epoch is not None:
        refused = core.change_peer(PD_ORDER, region_id, resp.region_epoch, resp.change_peer)
        if refused is not None:
            log.info("region %d: PD conf change not proposed: %s", region_id, refused)
    elif resp.transfer_leader is not None:
        core.transfer_leader(region_id, resp.transfer_leader.id)


def _learn_limits(limits: tuple[int, int]) -> Callable[[StoreCore], None]:
    def learn(core: StoreCore) -> None:
        core.split_limits = limits

    return learn


# How long one long poll for PD orders waits (the PD answers sooner when
# it has some).
ORDER_WAIT = 30.0

# Region heartbeats in flight at once (one store to the PD).
HEARTBEATS_IN_FLIGHT = 16

# Periodic region heartbeats built per call into the store loop.
HEARTBEAT_SLICE = 64


def periodic_heartbeats_due(
    leaders: Sequence[Peer], now_tick: int, asleep_ticks: int, share: float = 1.0
) -> list[int]:
    """The regions among `leaders` whose periodic heartbeat is due: every
    awake one, and sleeping ones once `asleep_ticks` passed since their last
    heartbeat (`Flow.since_tick`, which every heartbeat resets), the longest
    unreported first and at most `share` of the sleeping leaders (regions
    that fell asleep together are then reported over several passes rather
    than all in one). A sleeping region has nothing new to tell: a write, a
    read round, a conf change, a leader change or a silent follower store
    wakes it first (`hibernate`), and the PD hears of those as they happen.
    TiKV's leaders report every 60 s whatever their state; awake ones here
    report more often."""
    awake = [p.region_id for p in leaders if not p.asleep]
    asleep = [p for p in leaders if p.asleep]
    quota = math.ceil(len(asleep) * share)
    stale = sorted(
        (p for p in asleep if now_tick - p.flow.since_tick >= asleep_ticks),
        key=lambda p: (p.flow.since_tick, p.region_id),
    )
    return awake + [p.region_id for p in stale[:quota]]


# The token of orders from the PD: nobody waits for their replies.
PD_ORDER = "pd-order"


def region_heartbeat_request(
    peer: Peer,
    heard: dict[PeerId, int],
    now_tick: int,
    tick_interval: float,
    down_after_ticks: int,
) -> pdpb.RegionHeartbeatRequest:
    """What the leader of a region tells the PD about it: a follower not heard
    from for `down_after_ticks` (by `heard`, `StoreCore.heard_ticks`: a
    sleeping leader hears its followers' stores) is down (for how long, in
    seconds); one
    catching up by snapshot, or behind the truncated log, is pending; the
    client traffic since the previous heartbeat (`Peer.flow`), which starts
    again from zero. The interval is in store ticks, as down times are: in
    the same tick as the previous heartbeat no time has passed, so the
    counts wait for the next one."""
    status = peer.node.status()
    down: list[pdpb.PeerStats] = []
    for node_id in status.progress:
        if node_id == status.id:
            continue
        meta = peer.region.find_peer(PeerId(node_id))
        if meta is None:
            continue
        silent = now_tick - heard.setdefault(meta.id, now_tick)
        if silent >= down_after_ticks:
            down.append(pdpb.PeerStats(meta, down_seconds=int(silent * tick_interval)))
    pending = peer.pending_peers()
    peer.reported_pending = frozenset(p.id for p in pending)
    flow = peer.flow
    if now_tick > flow.since_tick:
        peer.flow = Flow(since_tick=now_tick)  # the next heartbeat counts from here
    else:  # no tick since: report an empty interval, keep counting
        flow = Flow(since_tick=now_tick)
    return pdpb.RegionHeartbeatRequest(
        header=pdpb.RequestHeader(),
        region=peer.region,
        leader=peer.meta,
        term=peer.node.term,
        approximate_size=peer.approximate_size or 0,
        approximate_keys=peer.approximate_keys or 0,
        down_peers=tuple(down),
        pending_peers=tuple(pending),
        written_bytes=flow.written_bytes,
        written_keys=flow.written_keys,
        read_bytes=flow.read_bytes,
        read_keys=flow.read_keys,
        interval_seconds=float((now_tick - flow.since_tick) * tick_interval),
    )

"""A store's split checks, off its loop: regions are measured (and split
keys chosen) in a worker thread one at a time, ids for the new regions come
from the PD, and the split is proposed in the loop. The core decides which
regions are due (`SplitControl`); this drives the I/O.

One region at a time (the scans share one thread anyway): ten thousand
regions due at once were ten thousand tasks, whose answers to the loop
stalled it for seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol, TypeVar

import trio

from kvproto.metapb import Region
from kvproto.pd_client import PdClient
from store_node.core import StoreCore
from store_node.engine import Engine
from store_node.split import scan_region

__all__ = ["SPLIT_ORDER", "SplitHost", "SplitWorker"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# The token of a split the store decided on: nobody waits for its reply.
SPLIT_ORDER = "split-order"


class SplitHost(Protocol):
    """What the worker needs of its store."""

    core: StoreCore | None
    pd: PdClient | None
    engine: Engine

    async def submit(self, event: Callable[[StoreCore], None]) -> None: ...

    async def call_core(self, fn: Callable[[StoreCore], T]) -> T: ...


class SplitWorker:
    def __init__(self, host: SplitHost, interval: float, scans: trio.CapacityLimiter) -> None:
        self._host = host
        self._interval = interval
        # Shared with snapshot generation: both read whole regions.
        self._scans = scans
        # Regions to measure, in the order their checks came due (each is
        # marked split_checking in the core, so it is queued at most once).
        self._send, self._recv = trio.open_memory_channel[Region](math.inf)

    def due(self, region: Region) -> None:
        self._send.send_nowait(region)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_scanner)
            async for region in self._recv:
                await self._check(region, ())

    async def split_region(self, region_id: int, keys: tuple[bytes, ...]) -> None:
        """Split on an order of the PD (at `keys`, or where a scan says)."""
        core = self._host.core
        assert core is not None
        peer = core.peers.get(region_id)
        if peer is None or not peer.is_leader():
            return
        await self._check(peer.region, keys)

    async def _run_scanner(self) -> None:
        """Measure every leader's region now and then: the sizes kept at apply
        only grow, this corrects them (deletes, overwrites)."""
        while True:
            await trio.sleep(self._interval)
            await self._host.submit(StoreCore.schedule_split_checks)

    async def _check(self, region: Region, forced_keys: tuple[bytes, ...]) -> None:
        """Measure a region (choosing split keys) or, with `forced_keys`, split
        it there; then ask the PD for ids and propose the split."""
        host = self._host
        core, pd = host.core, host.pd
        assert core is not None and pd is not None
        limits = core.split_limits or (1 << 62, 1 << 62)
        rid = region.id
        try:
            res = await trio.to_thread.run_sync(
                scan_region, host.engine, region, limits[0], limits[1], limiter=self._scans
            )
        except Exception:
            log.exception("region %d: split check failed", rid)
            await host.call_core(lambda c: c.on_split_checked(rid, 0, 0, (), -1))
            return
        split_keys = forced_keys or res.split_keys
        target = await host.call_core(
            lambda c: c.on_split_checked(rid, res.size, res.keys, split_keys, region.epoch.version)
        )
        if target is None:
            return
        try:
            ids = await pd.ask_batch_split(target, len(split_keys))
        except Exception as e:  # the PD being away: the next check retries
            log.warning("region %d: cannot get ids for a split: %s", rid, e)
            return
        id_pairs = [(i.new_region_id, tuple(i.new_peer_ids)) for i in ids]

        def propose(c: StoreCore) -> None:
            refused = c.propose_split(SPLIT_ORDER, rid, target.epoch, split_keys, id_pairs)
            if refused is not None:
                log.info("region %d: split not proposed: %s", rid, refused)

        await host.submit(propose)

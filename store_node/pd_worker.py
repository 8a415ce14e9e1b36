"""The store's side of the PD conversation: store heartbeats every few
seconds, region heartbeats from each leader periodically and at once when a
region's leader or epoch changes.

A heartbeat that fails is logged and retried on the next interval: the PD
being away must never stop the store from serving.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from kvproto import pdpb
from kvproto.metapb import Peer as PeerMeta
from kvproto.metapb import PeerId
from kvproto.pd_client import PdClient
from raft.progress import ProgressState
from store_node.config import StoreConfig
from store_node.core import StoreCore
from store_node.peer import Peer

if TYPE_CHECKING:
    from store_node.node import StoreNode

log = logging.getLogger(__name__)


class PdWorker:
    def __init__(self, node: StoreNode, pd: PdClient, config: StoreConfig) -> None:
        self.node = node
        self.pd = pd
        self.config = config

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_store_heartbeats)
            nursery.start_soon(self._run_periodic_region_heartbeats)
            nursery.start_soon(self._run_due_region_heartbeats)

    # -- store -----------------------------------------------------------------

    def store_stats(self) -> pdpb.StoreStats:
        core = self.node.core
        assert core is not None
        usage = shutil.disk_usage(self.config.data_dir)
        return pdpb.StoreStats(
            store_id=core.store_id,
            capacity=usage.total,
            available=usage.free,
            used_size=self.node.engine.used_bytes(),
            region_count=len(core.peers),
            leader_count=sum(1 for p in core.peers.values() if p.is_leader()),
        )

    async def _run_store_heartbeats(self) -> None:
        while True:
            try:
                resp = await self.pd.store_heartbeat(self.store_stats())
                if resp.region_max_size and resp.region_max_keys:
                    await self.node.submit(
                        _learn_limits((resp.region_max_size, resp.region_max_keys))
                    )
            except Exception as e:  # the PD being away must not stop the store
                log.warning("store heartbeat failed: %s", e)
            await trio.sleep(self.config.store_heartbeat_interval)

    # -- regions ---------------------------------------------------------------

    async def _run_periodic_region_heartbeats(self) -> None:
        while True:
            await trio.sleep(self.config.region_heartbeat_interval)
            core = self.node.core
            assert core is not None
            for peer in core.leader_regions():
                await self.region_heartbeat(peer)

    async def _run_due_region_heartbeats(self) -> None:
        core = self.node.core
        assert core is not None
        while True:
            for regions in core.take_split_reports():
                try:
                    await self.pd.report_batch_split(regions)
                except Exception as e:  # heartbeats of the new regions follow anyway
                    log.warning("split report failed: %s", e)
            for peer in core.take_heartbeat_due():
                await self.region_heartbeat(peer)
            if not core.heartbeat_due and not core.split_reports:
                await self.node.pd_work_due()

    async def region_heartbeat(self, peer: Peer) -> None:
        if not peer.is_leader() or not peer.initialized:
            return
        try:
            core = self.node.core
            assert core is not None
            req = region_heartbeat_request(
                peer,
                core.ticks,
                self.config.tick_interval,
                down_after_ticks=2 * self.config.election_ticks,
            )
            resp = await self.pd.region_heartbeat(req)
            log.debug(
                "region %d v%d/c%d heartbeat: %s",
                peer.region_id,
                req.region.epoch.version,
                req.region.epoch.conf_ver,
                "no step" if resp.region_epoch is None else "step",
            )
        except Exception as e:  # the PD being away must not stop the store
            log.warning("region %d heartbeat failed: %s", peer.region_id, e)
            return
        await self._execute(peer.region_id, resp)

    async def _execute(self, region_id: int, resp: pdpb.RegionHeartbeatResponse) -> None:
        """Carry out the operator step the PD answered with, if any."""
        if resp.split_region is not None:
            await self.node.split_region(region_id, resp.split_region.keys)
        elif resp.change_peer is not None or resp.transfer_leader is not None:
            await self.node.submit(partial(execute_order, region_id=region_id, resp=resp))


def execute_order(core: StoreCore, region_id: int, resp: pdpb.RegionHeartbeatResponse) -> None:
    """Carry out a PD operator step that needs nothing but the core: a
    membership change (if planned on the region's epoch) or a leader
    transfer. (A split order needs a size scan and ids first.)"""
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


# The token of orders from the PD: nobody waits for their replies.
PD_ORDER = "pd-order"


def region_heartbeat_request(
    peer: Peer, now_tick: int, tick_interval: float, down_after_ticks: int
) -> pdpb.RegionHeartbeatRequest:
    """What the leader of a region tells the PD about it: a follower not heard
    from for `down_after_ticks` is down (for how long, in seconds); one
    catching up by snapshot, or behind the truncated log, is pending."""
    raft = peer.node.raft
    down: list[pdpb.PeerStats] = []
    pending: list[PeerMeta] = []
    truncated = peer.storage.apply_state.truncated_index
    for node_id, pr in raft.trk.items():
        if node_id == raft.id:
            continue
        meta = peer.region.find_peer(PeerId(node_id))
        if meta is None:
            continue
        silent = now_tick - peer.last_heard.setdefault(meta.id, now_tick)
        if silent >= down_after_ticks:
            down.append(pdpb.PeerStats(meta, down_seconds=int(silent * tick_interval)))
        if pr.state == ProgressState.SNAPSHOT or pr.match < truncated:
            pending.append(meta)
    return pdpb.RegionHeartbeatRequest(
        header=pdpb.RequestHeader(),
        region=peer.region,
        leader=peer.meta,
        term=peer.node.term,
        approximate_size=peer.approximate_size or 0,
        approximate_keys=peer.approximate_keys or 0,
        down_peers=tuple(down),
        pending_peers=tuple(pending),
    )

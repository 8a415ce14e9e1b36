"""The fake PD: a real `kvproto.rpc.RpcServer` answering region and store
lookups from the cluster's truth, or from a frozen copy of it
(`FakeCluster.freeze_pd`: a PD that lags behind the stores), with errors
a test queues."""

from __future__ import annotations

from kvproto import pdpb
from kvproto.metapb import Peer, Region, ranges_overlap
from kvproto.rpc import RequestContext, RpcServer
from tests.client.fakes.cluster import FakeCluster
from tests.factories import store


class FakePd:
    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster
        self.unknown_stores: set[int] = set()
        # Errors the next calls answer with, in order.
        self.errors: list[pdpb.PdError] = []

    def _view(self) -> tuple[dict[int, Region], dict[int, Peer | None]]:
        c = self.cluster
        return c.pd_view if c.pd_view is not None else (c.regions, c.leaders)

    def _header(self) -> pdpb.ResponseHeader:
        error = self.errors.pop(0) if self.errors else None
        return pdpb.ResponseHeader(cluster_id=7, error=error)

    def server(self) -> RpcServer:
        return RpcServer(
            {
                pdpb.GetRegionRequest: self.get_region,
                pdpb.GetRegionByIdRequest: self.get_region_by_id,
                pdpb.ScanRegionsRequest: self.scan_regions,
                pdpb.GetStoreRequest: self.get_store,
            }
        )

    async def get_region(self, req: pdpb.GetRegionRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_region"] += 1
        regions, leaders = self._view()
        for r in regions.values():
            if r.contains(req.key):
                return pdpb.GetRegionResponse(self._header(), r, leaders.get(r.id))
        return pdpb.GetRegionResponse(self._header())

    async def get_region_by_id(self, req: pdpb.GetRegionByIdRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_region_by_id"] += 1
        regions, leaders = self._view()
        r = regions.get(req.region_id)
        return pdpb.GetRegionResponse(self._header(), r, None if r is None else leaders.get(r.id))

    async def scan_regions(self, req: pdpb.ScanRegionsRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["scan_regions"] += 1
        regions, leaders = self._view()
        found = sorted(
            (
                r
                for r in regions.values()
                if ranges_overlap(r.start_key, r.end_key, req.start_key, req.end_key)
            ),
            key=lambda r: r.start_key,
        )
        if req.limit:
            found = found[: req.limit]
        return pdpb.ScanRegionsResponse(
            self._header(), tuple(pdpb.RegionInfo(r, leaders.get(r.id)) for r in found)
        )

    async def get_store(self, req: pdpb.GetStoreRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_store"] += 1
        address = self.cluster.addresses.get(req.store_id)
        if address is None or req.store_id in self.unknown_stores:
            return pdpb.GetStoreResponse(self._header())
        return pdpb.GetStoreResponse(self._header(), store(req.store_id, address=address))

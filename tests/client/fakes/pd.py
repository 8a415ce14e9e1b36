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

CLUSTER_ID = 7


class FakePd:
    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster
        self.unknown_stores: set[int] = set()
        # Errors the next calls answer with, in order.
        self.errors: list[pdpb.PdError] = []

    def _view(self) -> tuple[dict[int, Region], dict[int, Peer | None]]:
        c = self.cluster
        return c.pd_view if c.pd_view is not None else (c.regions, c.leaders)

    def _header(self, req: object) -> pdpb.ResponseHeader:
        """As the real PD's: a request must name cluster 7 (a client learns
        it from IsBootstrapped first); else the queued error, if any."""
        sent = req.header.cluster_id  # type: ignore[attr-defined]
        if sent != CLUSTER_ID:
            error = pdpb.PdError(pdpb.PdErrorCode.CLUSTER_MISMATCH, f"cluster {sent}, not 7")
            return pdpb.ResponseHeader(CLUSTER_ID, error)
        error = self.errors.pop(0) if self.errors else None
        return pdpb.ResponseHeader(cluster_id=CLUSTER_ID, error=error)

    def server(self) -> RpcServer:
        return RpcServer(
            {
                pdpb.IsBootstrappedRequest: self.is_bootstrapped,
                pdpb.GetRegionRequest: self.get_region,
                pdpb.GetRegionByIdRequest: self.get_region_by_id,
                pdpb.ScanRegionsRequest: self.scan_regions,
                pdpb.GetStoreRequest: self.get_store,
            }
        )

    async def is_bootstrapped(self, req: pdpb.IsBootstrappedRequest, _: RequestContext) -> object:
        return pdpb.IsBootstrappedResponse(pdpb.ResponseHeader(CLUSTER_ID), bootstrapped=True)

    async def get_region(self, req: pdpb.GetRegionRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_region"] += 1
        regions, leaders = self._view()
        for r in regions.values():
            if r.contains(req.key):
                return pdpb.GetRegionResponse(self._header(req), r, leaders.get(r.id))
        return pdpb.GetRegionResponse(self._header(req))

    async def get_region_by_id(self, req: pdpb.GetRegionByIdRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_region_by_id"] += 1
        regions, leaders = self._view()
        r = regions.get(req.region_id)
        return pdpb.GetRegionResponse(
            self._header(req), r, None if r is None else leaders.get(r.id)
        )

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
            self._header(req), tuple(pdpb.RegionInfo(r, leaders.get(r.id)) for r in found)
        )

    async def get_store(self, req: pdpb.GetStoreRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_store"] += 1
        address = self.cluster.addresses.get(req.store_id)
        if address is None or req.store_id in self.unknown_stores:
            return pdpb.GetStoreResponse(self._header(req))
        return pdpb.GetStoreResponse(self._header(req), store(req.store_id, address=address))

"""The PD's RPC contract (kvproto.pdpb) mapped onto `Cluster`: pure.

`PdService.handle(request, now)` answers one pdpb request. It checks the
request header's cluster id (0 only where a fresh store needs it,
`pdpb.CLUSTER_ID_OPTIONAL`), calls the cluster, and turns a refusal
(`PdRequestError`) into a `PdError` in the response header: a bad request
never becomes an exception that would close the connection. Other
exceptions (a storage failure) propagate: the RPC server answers them with
an internal error, and the cluster is unchanged (it persists first).

Randomness (the cluster id) comes from an injected `random.Random`.

Scheduling slots in through `OperatorHook`: after a region heartbeat is
accepted, the hook may return the next operator step for the region as a
RegionHeartbeatResponse (its header is filled here). The PD's hook is
`operator_controller.OperatorController` (operators, the replica checker);
`NoOperators` answers none. Consistency checks (`consistency.ConsistencyChecks`)
ride on the same answers: an ordered check goes out with the region's next
heartbeat answer, and the replicas' digests come in as ReportRegionHash.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from kvproto import pdpb
from kvproto.metapb import RegionId, StoreId
from kvproto.pdpb import PdError, PdErrorCode, ResponseHeader
from placement_driver.cluster import Cluster
from placement_driver.consistency import ConsistencyChecks
from placement_driver.errors import PdRequestError, invalid_argument
from placement_driver.regions import RegionRecord

__all__ = ["RESPONSE_TYPES", "NoOperators", "OperatorHook", "PdService"]


class OperatorHook(Protocol):
    def on_region_heartbeat(
        self, cluster: Cluster, record: RegionRecord, now: float
    ) -> pdpb.RegionHeartbeatResponse | None:
        """The next operator step for the region just reported (at most one
        step field set, `region_epoch` the epoch it was planned on), or None.
        The header of the returned response is replaced."""
        ...

    def regions_waiting(self, cluster: Cluster, store_id: StoreId) -> tuple[RegionId, ...]:
        """Regions led on `store_id` with an operator step waiting to be
        sent, which the store is asked to report at once."""
        ...


class NoOperators:
    """The hook of a PD without schedulers: never an operator step."""

    def on_region_heartbeat(
        self, cluster: Cluster, record: RegionRecord, now: float
    ) -> pdpb.RegionHeartbeatResponse | None:
        return None

    def regions_waiting(self, cluster: Cluster, store_id: StoreId) -> tuple[RegionId, ...]:
        return ()


# Request type -> response type. Every response's fields but the header
# have defaults, so an error answer is `response_type(header=...)`.
RESPONSE_TYPES: Final[Mapping[type, type]] = {
    pdpb.IsBootstrappedRequest: pdpb.IsBootstrappedResponse,
    pdpb.BootstrapRequest: pdpb.BootstrapResponse,
    pdpb.AllocIdRequest: pdpb.AllocIdResponse,
    pdpb.PutStoreRequest: pdpb.PutStoreResponse,
    pdpb.ReplaceStoreRequest: pdpb.ReplaceStoreResponse,
    pdpb.GetStoreRequest: pdpb.GetStoreResponse,
    pdpb.GetAllStoresRequest: pdpb.GetAllStoresResponse,
    pdpb.StoreHeartbeatRequest: pdpb.StoreHeartbeatResponse,
    pdpb.WaitOrdersRequest: pdpb.WaitOrdersResponse,
    pdpb.RegionHeartbeatRequest: pdpb.RegionHeartbeatResponse,
    pdpb.GetRegionRequest: pdpb.GetRegionResponse,
    pdpb.GetRegionByIdRequest: pdpb.GetRegionResponse,
    pdpb.ScanRegionsRequest: pdpb.ScanRegionsResponse,
    pdpb.AskBatchSplitRequest: pdpb.AskBatchSplitResponse,
    pdpb.ReportBatchSplitRequest: pdpb.ReportBatchSplitResponse,
    pdpb.GetConfigRequest: pdpb.GetConfigResponse,
    pdpb.SetConfigRequest: pdpb.SetConfigResponse,
    pdpb.ReportRegionHashRequest: pdpb.ReportRegionHashResponse,
}


class PdService:
    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        operators: OperatorHook | None = None,
        checks: ConsistencyChecks | None = None,
    ) -> None:
        self.cluster = cluster
        self._rng = rng
        self.operators: OperatorHook = operators or NoOperators()
        self.checks = checks or ConsistencyChecks()
        self._handlers: dict[type, Callable[[Any, float], object]] = {
            pdpb.IsBootstrappedRequest: self._is_bootstrapped,
            pdpb.BootstrapRequest: self._bootstrap,
            pdpb.AllocIdRequest: self._alloc_id,
            pdpb.PutStoreRequest: self._put_store,
            pdpb.ReplaceStoreRequest: self._replace_store,
            pdpb.GetStoreRequest: self._get_store,
            pdpb.GetAllStoresRequest: self._get_all_stores,
            pdpb.StoreHeartbeatRequest: self._store_heartbeat,
            pdpb.WaitOrdersRequest: self._wait_orders,
            pdpb.RegionHeartbeatRequest: self._region_heartbeat,
            pdpb.GetRegionRequest: self._get_region,
            pdpb.GetRegionByIdRequest: self._get_region_by_id,
            pdpb.ScanRegionsRequest: self._scan_regions,
            pdpb.AskBatchSplitRequest: self._ask_batch_split,
            pdpb.ReportBatchSplitRequest: self._report_batch_split,
            pdpb.GetConfigRequest: self._get_config,
            pdpb.SetConfigRequest: self._set_config,
            pdpb.ReportRegionHashRequest: self._report_region_hash,
        }
        assert self._handlers.keys() == RESPONSE_TYPES.keys()

    def handle(self, request: object, now: float) -> object:
        """The response to `request` (a pdpb request type) at time `now`."""
        handler = self._handlers[type(request)]
        try:
            self._check_header(request)
            return handler(request, now)
        except PdRequestError as e:
            response_type = RESPONSE_TYPES[type(request)]
            return response_type(header=self._header(e.to_pb()))

    def _check_header(self, request: Any) -> None:
        """CLUSTER_MISMATCH unless the request names our cluster; 0 passes
        only in the requests a fresh store sends before it can know the id
        (`pdpb.CLUSTER_ID_OPTIONAL`), and before bootstrap (there is no id
        to name yet)."""
        sent = request.header.cluster_id
        ours = self.cluster.cluster_id
        if sent == ours or (sent == 0 and type(request) in pdpb.CLUSTER_ID_OPTIONAL):
            return
        runs = f"cluster {ours}" if ours else "no cluster yet (not bootstrapped)"
        if sent == 0:
            raise PdRequestError(
                PdErrorCode.CLUSTER_MISMATCH,
                f"the request names no cluster (id 0), which only a fresh store's "
                f"IsBootstrapped, Bootstrap and AllocId may; this PD runs {runs}",
            )
        raise PdRequestError(
            PdErrorCode.CLUSTER_MISMATCH, f"the request is for cluster {sent}, this PD runs {runs}"
        )

    def _header(self, error: PdError | None = None) -> ResponseHeader:
        return ResponseHeader(self.cluster.cluster_id, error)

    # -- handlers ----------------------------------------------------------------

    def _is_bootstrapped(
        self, req: pdpb.IsBootstrappedRequest, now: float
    ) -> pdpb.IsBootstrappedResponse:
        return pdpb.IsBootstrappedResponse(self._header(), self.cluster.is_bootstrapped)

    def _bootstrap(self, req: pdpb.BootstrapRequest, now: float) -> pdpb.BootstrapResponse:
        cluster_id = self._rng.randrange(1, 2**63)
        self.cluster.bootstrap(req.store, req.region, cluster_id, now)
        return pdpb.BootstrapResponse(self._header())

    def _alloc_id(self, req: pdpb.AllocIdRequest, now: float) -> pdpb.AllocIdResponse:
        (new_id,) = self.cluster.alloc_ids(1)
        return pdpb.AllocIdResponse(self._header(), new_id)

    def _put_store(self, req: pdpb.PutStoreRequest, now: float) -> pdpb.PutStoreResponse:
        self.cluster.put_store(req.store, now)
        return pdpb.PutStoreResponse(self._header())

    def _replace_store(
        self, req: pdpb.ReplaceStoreRequest, now: float
    ) -> pdpb.ReplaceStoreResponse:
        self.cluster.replace_store(req.store, req.replaced, now)
        return pdpb.ReplaceStoreResponse(self._header())

    def _get_store(self, req: pdpb.GetStoreRequest, now: float) -> pdpb.GetStoreResponse:
        self.cluster.check_bootstrapped()
        info = self.cluster.get_store(req.store_id)
        return pdpb.GetStoreResponse(self._header(), info.meta, info.stats)

    def _get_all_stores(
        self, req: pdpb.GetAllStoresRequest, now: float
    ) -> pdpb.GetAllStoresResponse:
        self.cluster.check_bootstrapped()
        stores = self.cluster.stores(exclude_tombstone=req.exclude_tombstone)
        return pdpb.GetAllStoresResponse(self._header(), tuple(s.meta for s in stores))

    def _store_heartbeat(
        self, req: pdpb.StoreHeartbeatRequest, now: float
    ) -> pdpb.StoreHeartbeatResponse:
        known = self.cluster.find_store(req.stats.store_id)
        first = known is None or known.last_heartbeat is None
        self.cluster.store_heartbeat(req.stats, now)
        config = self.cluster.config
        waiting = self._regions_waiting(req.stats.store_id)
        return pdpb.StoreHeartbeatResponse(
            self._header(),
            config.region_max_size,
            config.region_max_keys,
            waiting,
            # A PD that just started knows no leaders until they report.
            report_leaders=first,
        )

    def _wait_orders(self, req: pdpb.WaitOrdersRequest, now: float) -> pdpb.WaitOrdersResponse:
        """What a store's long poll gets now; the server holds the answer
        while it is empty (`PdServer`)."""
        self.cluster.check_bootstrapped()
        return pdpb.WaitOrdersResponse(self._header(), self._regions_waiting(req.store_id))

    def _regions_waiting(self, store_id: StoreId) -> tuple[RegionId, ...]:
        """Regions led on the store with an operator step or a consistency
        check to send: the store reports them at once."""
        waiting = self.operators.regions_waiting(self.cluster, store_id)
        checks = self.checks.regions_waiting(self.cluster, store_id)
        if not checks:
            return waiting
        return tuple(sorted(set(waiting) | set(checks)))

    def _region_heartbeat(
        self, req: pdpb.RegionHeartbeatRequest, now: float
    ) -> pdpb.RegionHeartbeatResponse:
        record = self.cluster.region_heartbeat(req, now)
        step = self.operators.on_region_heartbeat(self.cluster, record, now)
        check = self.checks.order_for(req.region.id, now)
        if step is None:
            step = pdpb.RegionHeartbeatResponse(self._header())
        return dataclasses.replace(
            step, header=self._header(), region_id=req.region.id, consistency_check=check
        )

    def _get_region(self, req: pdpb.GetRegionRequest, now: float) -> pdpb.GetRegionResponse:
        return self._region_response(self.cluster.get_region(req.key))

    def _get_region_by_id(
        self, req: pdpb.GetRegionByIdRequest, now: float
    ) -> pdpb.GetRegionResponse:
        return self._region_response(self.cluster.get_region_by_id(req.region_id))

    def _region_response(self, record: RegionRecord | None) -> pdpb.GetRegionResponse:
        if record is None:
            return pdpb.GetRegionResponse(self._header())
        return pdpb.GetRegionResponse(self._header(), record.region, record.leader)

    def _scan_regions(self, req: pdpb.ScanRegionsRequest, now: float) -> pdpb.ScanRegionsResponse:
        records = self.cluster.scan_regions(req.start_key, req.end_key, req.limit)
        return pdpb.ScanRegionsResponse(
            self._header(), tuple(pdpb.RegionInfo(r.region, r.leader) for r in records)
        )

    def _ask_batch_split(
        self, req: pdpb.AskBatchSplitRequest, now: float
    ) -> pdpb.AskBatchSplitResponse:
        ids = self.cluster.ask_batch_split(req.region, req.split_count)
        return pdpb.AskBatchSplitResponse(self._header(), tuple(ids))

    def _report_batch_split(
        self, req: pdpb.ReportBatchSplitRequest, now: float
    ) -> pdpb.ReportBatchSplitResponse:
        self.cluster.report_batch_split(req.regions, now)
        return pdpb.ReportBatchSplitResponse(self._header())

    def _report_region_hash(
        self, req: pdpb.ReportRegionHashRequest, now: float
    ) -> pdpb.ReportRegionHashResponse:
        self.cluster.check_bootstrapped()
        self.checks.report(self.cluster, req, now)
        return pdpb.ReportRegionHashResponse(self._header())

    def _get_config(self, req: pdpb.GetConfigRequest, now: float) -> pdpb.GetConfigResponse:
        return pdpb.GetConfigResponse(self._header(), _config_items(self.cluster.config.items()))

    def _set_config(self, req: pdpb.SetConfigRequest, now: float) -> pdpb.SetConfigResponse:
        items: dict[str, str] = {}
        for item in req.items:
            if item.name in items:
                raise invalid_argument(f"config key {item.name!r} is given twice")
            items[item.name] = item.value
        config = self.cluster.set_config(items)
        return pdpb.SetConfigResponse(self._header(), _config_items(config.items()))


def _config_items(items: Mapping[str, str]) -> tuple[pdpb.ConfigItem, ...]:
    return tuple(pdpb.ConfigItem(k, v) for k, v in items.items())

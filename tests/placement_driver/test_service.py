"""PdService (pure): headers, error answers and the operator hook."""

from __future__ import annotations

import random

from kvproto import pdpb
from kvproto.metapb import RegionId
from placement_driver.cluster import Cluster
from placement_driver.regions import RegionRecord
from placement_driver.service import RESPONSE_TYPES, PdService
from placement_driver.storage import MemoryMetaStorage
from tests.factories import peer, region, store

H = pdpb.RequestHeader()  # no cluster id: before bootstrap


class TransferToSecondPeer:
    """A stand-in scheduler: always asks to move the leader."""

    def __init__(self) -> None:
        self.seen: list[RegionRecord] = []

    def on_region_heartbeat(
        self, cluster: Cluster, record: RegionRecord, now: float
    ) -> pdpb.RegionHeartbeatResponse | None:
        self.seen.append(record)
        return pdpb.RegionHeartbeatResponse(
            pdpb.ResponseHeader(),
            region_epoch=record.region.epoch,
            transfer_leader=record.region.peers[1],
        )


def test_the_operator_hook_answers_region_heartbeats() -> None:
    hook = TransferToSecondPeer()
    service = PdService(Cluster(MemoryMetaStorage(), 0.0), random.Random(1), hook)
    first = region(1, peers=(peer(100, 1),))
    service.handle(pdpb.BootstrapRequest(H, store(1), first), now=0.0)
    cluster_id = service.cluster.cluster_id
    named = pdpb.RequestHeader(cluster_id)
    service.handle(pdpb.PutStoreRequest(named, store(2)), now=0.0)  # id 2 < bootstrap's skip
    two = first.with_peer(peer(101, 2))
    two = two.with_epoch(pdpb.RegionEpoch(2, 1))
    answer = service.handle(pdpb.RegionHeartbeatRequest(named, two, two.peers[0]), now=1.0)
    assert isinstance(answer, pdpb.RegionHeartbeatResponse)
    assert answer.header == pdpb.ResponseHeader(cluster_id)
    assert answer.region_id == 1 and answer.region_epoch == two.epoch
    assert answer.transfer_leader == two.peers[1]
    assert [r.region for r in hook.seen] == [two]


def test_a_refused_request_is_answered_with_its_own_response_type() -> None:
    service = PdService(Cluster(MemoryMetaStorage(), 0.0), random.Random(1))
    other = pdpb.RequestHeader(5)
    for request in [
        pdpb.IsBootstrappedRequest(other),
        pdpb.AllocIdRequest(other),
        pdpb.GetAllStoresRequest(other),
        pdpb.GetRegionByIdRequest(other, RegionId(1)),
        pdpb.ScanRegionsRequest(other, b""),
        pdpb.SetConfigRequest(other, ()),
    ]:
        answer = service.handle(request, now=0.0)
        assert type(answer) is RESPONSE_TYPES[type(request)]
        error = answer.header.error  # type: ignore[attr-defined]
        assert error is not None and error.code == pdpb.PdErrorCode.CLUSTER_MISMATCH


def test_the_cluster_id_comes_from_the_injected_random() -> None:
    ids = []
    for _ in range(2):
        service = PdService(Cluster(MemoryMetaStorage(), 0.0), random.Random(42))
        service.handle(
            pdpb.BootstrapRequest(H, store(1), region(1, peers=(peer(100, 1),))), now=0.0
        )
        ids.append(service.cluster.cluster_id)
    assert ids[0] == ids[1] != 0


def bootstrapped() -> PdService:
    service = PdService(Cluster(MemoryMetaStorage(), 0.0), random.Random(1))
    service.handle(pdpb.BootstrapRequest(H, store(1), region(1, peers=(peer(100, 1),))), now=0.0)
    assert service.cluster.cluster_id != 0
    return service


def test_cluster_id_0_is_refused_after_bootstrap_but_where_a_fresh_store_needs_it() -> None:
    """Issue 15: 0 passed the cluster check on every request. A fresh store
    sends IsBootstrapped, AllocId and Bootstrap before it can know the id
    (store_node.identity); nothing else may name no cluster."""
    service = bootstrapped()
    first = region(1, peers=(peer(100, 1),))
    grown = first.with_epoch(pdpb.RegionEpoch(1, 2))
    refused = [
        pdpb.SetConfigRequest(H, (pdpb.ConfigItem("max_replicas", "1"),)),
        pdpb.RegionHeartbeatRequest(H, grown, first.peers[0], term=9),
        pdpb.ReportBatchSplitRequest(H, (grown,)),
        pdpb.StoreHeartbeatRequest(H, pdpb.StoreStats(store_id=1)),
        pdpb.PutStoreRequest(H, store(1, address="elsewhere:1")),
        pdpb.AskBatchSplitRequest(H, first, 1),
        pdpb.GetRegionRequest(H, b""),
        pdpb.GetAllStoresRequest(H),
        pdpb.GetConfigRequest(H),
    ]
    for request in refused:
        answer = service.handle(request, now=1.0)
        assert type(answer) is RESPONSE_TYPES[type(request)]
        error = answer.header.error  # type: ignore[attr-defined]
        assert error is not None and error.code == pdpb.PdErrorCode.CLUSTER_MISMATCH, request
        assert "id 0" in error.message
    assert service.cluster.config.max_replicas == 3
    record = service.cluster.get_region_by_id(RegionId(1))
    assert record is not None and record.region == first
    # What a fresh store sends before it knows the id is answered, with the
    # id in the header to learn.
    ours = service.cluster.cluster_id
    asked = service.handle(pdpb.IsBootstrappedRequest(H), now=1.0)
    assert asked == pdpb.IsBootstrappedResponse(pdpb.ResponseHeader(ours), True)
    allocated = service.handle(pdpb.AllocIdRequest(H), now=1.0)
    assert isinstance(allocated, pdpb.AllocIdResponse) and allocated.header.error is None
    late = service.handle(pdpb.BootstrapRequest(H, store(2), region(7)), now=1.0)
    assert isinstance(late, pdpb.BootstrapResponse) and late.header.cluster_id == ours
    assert late.header.error is not None
    assert late.header.error.code == pdpb.PdErrorCode.ALREADY_BOOTSTRAPPED
    # With the id, the same requests pass.
    named = pdpb.RequestHeader(ours)
    answer = service.handle(
        pdpb.SetConfigRequest(named, (pdpb.ConfigItem("max_replicas", "5"),)), now=1.0
    )
    assert isinstance(answer, pdpb.SetConfigResponse) and answer.header.error is None
    assert service.cluster.config.max_replicas == 5


def test_before_bootstrap_there_is_no_id_to_name() -> None:
    service = PdService(Cluster(MemoryMetaStorage(), 0.0), random.Random(1))
    answer = service.handle(pdpb.GetConfigRequest(H), now=0.0)
    assert isinstance(answer, pdpb.GetConfigResponse) and answer.header.error is None

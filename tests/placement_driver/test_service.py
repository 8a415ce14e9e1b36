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

H = pdpb.RequestHeader()


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
    service.handle(pdpb.PutStoreRequest(H, store(2)), now=0.0)  # id 2 < bootstrap's skip
    two = first.with_peer(peer(101, 2))
    two = two.with_epoch(pdpb.RegionEpoch(2, 1))
    answer = service.handle(pdpb.RegionHeartbeatRequest(H, two, two.peers[0]), now=1.0)
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

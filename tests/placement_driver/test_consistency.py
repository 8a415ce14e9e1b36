"""The PD's side of consistency checks (placement_driver.consistency, pure):
an administrator's order reaches the region's leader in a heartbeat answer,
the replicas' digests are compared, the admin API shows the result and
answers bad input with typed 4xx, never 500."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from kvproto import pdpb
from kvproto.metapb import Region, RegionId, StoreId
from placement_driver.consistency import (
    MAX_ORDERS,
    ORDER_TTL,
    RESEND_AFTER,
    CheckState,
    ConsistencyChecks,
    RegionCheck,
)
from placement_driver.errors import PdRequestError
from placement_driver.http_api import API_PREFIX, AdminApi
from placement_driver.service import PdService
from tests.placement_driver.mock_cluster import MockCluster

A, B = b"a" * 16, b"b" * 16


@pytest.fixture
def mc() -> MockCluster:
    mc = MockCluster().store(1).store(2).store(3).store(4)
    return mc.region(1, voters=(1, 2, 3)).region(2, voters=(2, 3, 4), leader=3)


def digest(
    mc: MockCluster,
    checks: ConsistencyChecks,
    store: int,
    value: bytes,
    *,
    region_id: int = 1,
    index: int = 10,
    check_id: int = 0,
    region: Region | None = None,
) -> RegionCheck | None:
    req = pdpb.ReportRegionHashRequest(
        pdpb.RequestHeader(),
        region or mc.region_of(region_id),
        check_id,
        index,
        StoreId(store),
        value,
    )
    return checks.report(mc.cluster, req, mc.now)


def test_a_check_matches_once_every_replica_reported_the_same_digest(mc: MockCluster) -> None:
    checks = ConsistencyChecks()
    check = digest(mc, checks, 1, A)
    assert check is not None and check.state is CheckState.PENDING
    assert check.missing() == [2, 3]
    digest(mc, checks, 2, A)
    check = digest(mc, checks, 3, A)
    assert check is not None and check.state is CheckState.MATCH
    assert check.missing() == [] and check.differing() == []
    assert checks.find(1) is check and checks.latest() == [check]


def test_a_mismatch_names_the_minority_and_is_logged_once(
    mc: MockCluster, caplog: pytest.LogCaptureFixture
) -> None:
    checks = ConsistencyChecks()
    digest(mc, checks, 1, A)
    check = digest(mc, checks, 3, B)
    assert check is not None and check.state is CheckState.MISMATCH
    assert check.differing() == [1, 3]  # one against one: no majority
    digest(mc, checks, 2, A)
    assert check.differing() == [3]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    expected = (
        "consistency check of region 1 at applied index 10: replicas differ: "
        f"store 1 {A.hex()}, store 3 {B.hex()}"
    )
    assert errors == [expected]


def test_reports_that_cannot_be_a_replicas_are_ignored(mc: MockCluster) -> None:
    checks = ConsistencyChecks()
    assert digest(mc, checks, 4, A) is None  # no replica of region 1 there
    unknown = Region(RegionId(9), b"x", b"y", mc.region_of(1).epoch, mc.region_of(1).peers)
    assert digest(mc, checks, 1, A, region=unknown) is None  # a region the PD does not know
    assert digest(mc, checks, 1, b"x" * 65) is None
    for index in (20, 30, 40, 50):
        digest(mc, checks, 1, A, index=index)
    assert digest(mc, checks, 1, A, index=10) is None  # older than every check kept
    assert [c.index for c in checks._checks[1]] == [20, 30, 40, 50]


def test_an_order_goes_out_with_the_leaders_heartbeat_answer(mc: MockCluster) -> None:
    service = PdService(mc.cluster, random.Random(1))
    header = pdpb.RequestHeader(mc.cluster.cluster_id)
    checks = service.checks
    check = checks.request(mc.cluster, 2, mc.now)
    assert check.state is CheckState.REQUESTED and check.check_id > 0
    assert checks.request(mc.cluster, 2, mc.now) is check  # one order per region
    # The leader's store is asked to report the region at once.
    for store_id, waiting in [(3, (2,)), (2, ())]:
        answer = service.handle(pdpb.WaitOrdersRequest(header, StoreId(store_id), 0.0), mc.now)
        assert isinstance(answer, pdpb.WaitOrdersResponse)
        assert answer.report_regions == waiting
    leader = mc.region_of(2).peer_on_store(StoreId(3))
    heartbeat = pdpb.RegionHeartbeatRequest(header, mc.region_of(2), leader)
    answer = service.handle(heartbeat, mc.now)
    assert isinstance(answer, pdpb.RegionHeartbeatResponse)
    assert answer.consistency_check == check.check_id
    # Sent: not again until RESEND_AFTER without a report.
    again = service.handle(heartbeat, mc.now + 1)
    assert isinstance(again, pdpb.RegionHeartbeatResponse) and again.consistency_check == 0
    later = service.handle(heartbeat, mc.now + RESEND_AFTER)
    assert isinstance(later, pdpb.RegionHeartbeatResponse)
    assert later.consistency_check == check.check_id
    # The first report takes the order: the check is the ordered one.
    req = pdpb.ReportRegionHashRequest(header, mc.region_of(2), check.check_id, 77, StoreId(4), A)
    assert isinstance(service.handle(req, mc.now), pdpb.ReportRegionHashResponse)
    assert checks.find(2, check.check_id) is check
    assert (check.index, check.state) == (77, CheckState.PENDING)
    late = service.handle(heartbeat, mc.now + 2 * RESEND_AFTER)
    assert isinstance(late, pdpb.RegionHeartbeatResponse) and late.consistency_check == 0


def test_orders_are_refused_with_reasons_and_expire(mc: MockCluster) -> None:
    checks = ConsistencyChecks()
    with pytest.raises(PdRequestError, match="region 99 not found"):
        checks.request(mc.cluster, 99, mc.now)
    for region_id in range(10, 10 + MAX_ORDERS):
        mc.region(region_id, voters=(1, 2, 3))
        checks.request(mc.cluster, region_id, mc.now)
    mc.region(500, voters=(1, 2, 3))
    with pytest.raises(PdRequestError, match="are waiting"):
        checks.request(mc.cluster, 500, mc.now)
    # Orders nobody answered are given up.
    assert checks.request(mc.cluster, 500, mc.now + ORDER_TTL + 1).check_id > 0


def request_json(api: AdminApi, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.respond(method, (API_PREFIX + path).encode(), raw)


def test_the_admin_api_orders_and_shows_checks(mc: MockCluster) -> None:
    checks = ConsistencyChecks()
    ordered: list[bool] = []
    api = AdminApi(
        mc.cluster, lambda: mc.now, checks=checks, on_check_ordered=lambda: ordered.append(True)
    )
    status, doc = request_json(api, "POST", "/regions/check", {"region_id": 1})
    assert status == 200 and ordered == [True]
    check_id = doc["check_id"]
    assert doc == {
        "region_id": 1,
        "check_id": check_id,
        "index": 0,
        "state": "requested",
        "stores": [],
        "differing": [],
        "missing": [],
        "requested_ago": 0.0,
        "reported_ago": None,
    }
    status, doc = request_json(api, "GET", f"/region/id/1/check?check_id={check_id}")
    assert status == 200 and doc["state"] == "requested"
    digest(mc, checks, 1, A, check_id=check_id)
    digest(mc, checks, 2, B, check_id=check_id)
    mc.now += 2
    status, doc = request_json(api, "GET", f"/region/id/1/check?check_id={check_id}")
    assert status == 200
    assert doc["state"] == "mismatch" and doc["index"] == 10
    assert doc["stores"] == [
        {"store_id": 1, "digest": A.hex()},
        {"store_id": 2, "digest": B.hex()},
        {"store_id": 3, "digest": None},
    ]
    assert doc["differing"] == [1, 2] and doc["missing"] == [3]
    assert doc["requested_ago"] == 2.0 and doc["reported_ago"] == 2.0
    status, doc = request_json(api, "GET", "/region/id/1/check")  # the latest
    assert status == 200 and doc["check_id"] == check_id
    digest(mc, checks, 2, A, region_id=2, index=5)
    status, doc = request_json(api, "GET", "/regions/check")
    assert status == 200 and [c["region_id"] for c in doc["checks"]] == [1, 2]
    status, doc = request_json(api, "GET", "/regions/check?state=mismatch")
    assert status == 200 and doc["count"] == 1 and doc["checks"][0]["region_id"] == 1
    status, doc = request_json(api, "GET", "/regions/check?state=PENDING")
    assert status == 200 and [c["region_id"] for c in doc["checks"]] == [2]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("POST", "/regions/check", {"region_id": 99}, 404, "region 99 not found"),
        ("POST", "/regions/check", {}, 400, "region_id must be a positive integer"),
        ("POST", "/regions/check", {"region_id": "1"}, 400, "region_id must be"),
        ("POST", "/regions/check", {"region_id": True}, 400, "region_id must be"),
        ("POST", "/regions/check", {"region_id": 1, "x": 1}, 400, "unknown field 'x'"),
        ("POST", "/regions/check", b"[1]", 400, "must be a JSON object"),
        ("GET", "/regions/check?state=odd", None, 400, "unknown state 'odd'"),
        ("GET", "/regions/check?state=match&state=mismatch", None, 400, "at most once"),
        ("GET", "/region/id/99/check", None, 404, "region 99 not found"),
        ("GET", "/region/id/1/check", None, 404, "no consistency check of region 1"),
        ("GET", "/region/id/1/check?check_id=5", None, 404, "no consistency check 5"),
        ("GET", "/region/id/1/check?check_id=x", None, 400, "bad check id"),
        ("GET", "/region/id/x/check", None, 400, "bad region id"),
        ("DELETE", "/regions/check", None, 405, "not allowed"),
        ("POST", "/region/id/1/check", None, 405, "read-only"),
    ],
)
def test_bad_input_gets_a_typed_answer(
    mc: MockCluster, method: str, path: str, body: Any, status: int, reason: str
) -> None:
    api = AdminApi(mc.cluster, lambda: mc.now)
    got, doc = request_json(api, method, path, body)
    assert (got, set(doc)) == (status, {"error"}), doc
    assert reason in doc["error"]


def test_an_order_for_a_region_without_a_known_leader_is_409() -> None:
    mc = MockCluster().store(1)  # the bootstrap placeholder region has no reported leader
    api = AdminApi(mc.cluster, lambda: mc.now)
    region_id = next(iter(mc.cluster.regions())).region.id
    got, doc = request_json(api, "POST", "/regions/check", {"region_id": region_id})
    assert got == 409, doc
    assert "no known leader" in doc["error"]


def test_orders_need_the_admin_token(mc: MockCluster) -> None:
    api = AdminApi(mc.cluster, lambda: mc.now, admin_token="secret")
    got, _ = request_json(api, "POST", "/regions/check", {"region_id": 1})
    assert got == 401
    got, _ = request_json(api, "GET", "/regions/check")
    assert got == 200

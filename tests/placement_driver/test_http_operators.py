"""The admin HTTP API's operator endpoints and orders, over a real HTTP
connection (h11 over trio), with a fake leader whose heartbeats the test
sends itself (no timers involved).

Rules: loopback only, port 0; every test runs under `trio.fail_after`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from kvproto.metapb import StoreState
from placement_driver.cluster import Cluster
from placement_driver.http_api import API_PREFIX, MAX_BODY, AdminApi, key_json
from placement_driver.server import PdServer
from placement_driver.storage import MemoryMetaStorage
from tests.placement_driver.fake_stores import FakeStores
from tests.placement_driver.helpers import PdCaller, http_request

TIMEOUT = 10


async def call(
    pd: PdServer, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    r = await http_request(pd.addresses.http_url + API_PREFIX + path, method, raw)
    assert r.headers["content-type"] == "application/json"
    return r.status, r.json()


async def one_store(caller: PdCaller) -> FakeStores:
    fake = FakeStores(caller)
    await fake.bootstrap(1)
    return fake


async def test_a_split_ordered_over_http_reaches_the_leader_and_shows_in_the_history(
    pd: PdServer, caller: PdCaller
) -> None:
    with trio.fail_after(TIMEOUT):
        fake = await one_store(caller)
        rid = min(fake.regions)
        # The administrator orders a split at "m" (text) and "\xff" (hex).
        status, op = await call(
            pd,
            "POST",
            "/regions/split",
            {"region_id": rid, "keys": [{"text": "m"}, {"hex": "ff"}]},
        )
        assert status == 200, op
        assert (op["region_id"], op["kind"], op["desc"], op["status"]) == (
            rid,
            "admin",
            "split-region",
            "running",
        )
        assert op["steps"] == [
            {
                "kind": "split_region",
                "description": "split at b'm', b'\\xff'",
                "keys": [key_json(b"m"), key_json(b"\xff")],
            }
        ]
        assert op["current_step"] == 0 and op["origin_epoch"] == {"conf_ver": 1, "version": 1}
        # It is the region's running operator.
        status, running = await call(pd, "GET", "/operators")
        assert status == 200 and running["count"] == 1
        assert running["operators"][0]["desc"] == "split-region"
        # The leader's next heartbeat carries it; the leader splits and reports again.
        await fake.heartbeat(rid)
        assert sorted((r.region.start_key, r.region.end_key) for r in pd.cluster.regions()) == [
            (b"", b"m"),
            (b"m", b"\xff"),
            (b"\xff", b""),
        ]
        # The operator succeeded and moved to the history.
        status, done = await call(pd, "GET", f"/operator/{rid}")
        assert status == 200
        assert (done["status"], done["current_step"], done["reason"]) == ("success", 1, None)
        assert done["seconds_since_finished"] is not None
        status, listing = await call(pd, "GET", "/operators")
        assert listing["count"] == 0
        assert [o["desc"] for o in listing["history"]] == ["split-region"]


async def test_split_orders_are_checked(pd: PdServer, caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        fake = await one_store(caller)
        rid = min(fake.regions)
        cases: list[tuple[Any, int, str]] = [
            (b"{not json", 400, "the body is not JSON"),
            ([1, 2], 400, "must be a JSON object"),
            ({"keys": []}, 400, "region_id must be a positive integer"),
            ({"region_id": 12345, "keys": []}, 404, "region 12345 is not known"),
            ({"region_id": rid, "keys": "m"}, 400, "keys must be a list"),
            ({"region_id": rid, "keys": [{"hex": "zz"}]}, 400, "bad hex key"),
            ({"region_id": rid, "keys": [{"hex": "61", "text": "a"}]}, 400, "a key is"),
            ({"region_id": rid, "keys": [{"text": ""}]}, 400, "not inside region"),
            ({"region_id": rid, "keys": [{"text": "b"}, {"text": "a"}]}, 400, "strictly"),
        ]
        for body, expected, reason in cases:
            status, answer = await call(pd, "POST", "/regions/split", body)
            assert (status, reason in answer["error"]) == (expected, True), (body, answer)
        # One operator per region: a second order is a conflict.
        order = {"region_id": rid, "keys": [{"text": "m"}]}
        assert (await call(pd, "POST", "/regions/split", order))[0] == 200
        status, answer = await call(pd, "POST", "/regions/split", order)
        assert status == 409 and "already has a running operator" in answer["error"]
        # Orders are POST only; reads are GET only.
        r = await http_request(pd.addresses.http_url + API_PREFIX + "/regions/split")
        assert r.status == 405 and r.headers["allow"] == "POST"
        r = await http_request(pd.addresses.http_url + API_PREFIX + "/operator/1", "POST", b"")
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
        # A huge body is refused before it is parsed.
        status, answer = await call(pd, "POST", "/regions/split", b" " * (MAX_BODY + 1))
        assert status == 413


async def test_an_unknown_region_has_no_operator(pd: PdServer, caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        await one_store(caller)
        status, answer = await call(pd, "GET", "/operator/777")
        assert status == 404 and answer == {"error": "no operator for region 777"}
        status, answer = await call(pd, "GET", "/operator/x")
        assert status == 400


async def test_a_store_is_marked_offline_and_back_up_over_http(
    pd: PdServer, caller: PdCaller
) -> None:
    with trio.fail_after(TIMEOUT):
        fake = await one_store(caller)
        s2 = await fake.add_store()
        for _ in range(2):  # 3 stores stay Up for max_replicas 3
            await fake.add_store()
        # Store 2 is decommissioned.
        status, store = await call(pd, "POST", f"/store/{s2}/state?state=Offline")
        assert (status, store["id"], store["state"]) == (200, s2, "Offline")
        assert pd.cluster.get_store(s2).state == StoreState.OFFLINE
        # Heartbeats do not bring it back...
        await fake.store_heartbeat(s2)
        assert pd.cluster.get_store(s2).state == StoreState.OFFLINE
        # ... the administrator does.
        status, store = await call(pd, "POST", f"/store/{s2}/state?state=up")
        assert (status, store["state"]) == (200, "Up")


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/store/1/state", 400, "give the new state once"),
        ("/store/1/state?state=Down", 400, "cannot set state 'Down'"),
        ("/store/1/state?state=Tombstone", 409, "must be made Offline before"),
        ("/store/999/state?state=Offline", 404, "store 999 is not known"),
        ("/store/x/state?state=Offline", 400, "bad store id"),
    ],
)
async def test_store_state_orders_are_checked(
    pd: PdServer, caller: PdCaller, path: str, status: int, reason: str
) -> None:
    with trio.fail_after(TIMEOUT):
        await one_store(caller)
        got, answer = await call(pd, "POST", path, b"")
        assert (got, reason in answer["error"]) == (status, True), answer


async def test_a_store_holding_regions_cannot_be_removed(pd: PdServer, caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        fake = await one_store(caller)
        (s1,) = fake.stores
        for _ in range(3):  # 3 stores stay Up for max_replicas 3
            await fake.add_store()
        assert (await call(pd, "POST", f"/store/{s1}/state?state=Offline"))[0] == 200
        status, answer = await call(pd, "POST", f"/store/{s1}/state?state=Tombstone")
        assert status == 409 and f"store {s1} still holds 1 regions" in answer["error"]


async def test_a_store_is_not_drained_while_too_few_others_are_up(
    pd: PdServer, caller: PdCaller
) -> None:
    with trio.fail_after(TIMEOUT):
        fake = await one_store(caller)
        s2, s3 = await fake.add_store(), await fake.add_store()
        # Three stores, max_replicas 3: draining one would leave its peers
        # nowhere to go. The cluster's state refuses it: 409, with the reason.
        status, answer = await call(pd, "POST", f"/store/{s2}/state?state=Offline")
        assert status == 409, answer
        assert answer["error"] == (
            f"store {s2} cannot be made Offline: 2 other stores are Up ({fake.stores[0]}, {s3}) "
            "and max_replicas is 3; its peers would have nowhere to go "
            "(add a store, or lower max_replicas, first)"
        )
        assert pd.cluster.get_store(s2).state == StoreState.UP
        # A fourth store makes room.
        await fake.add_store()
        assert (await call(pd, "POST", f"/store/{s2}/state?state=Offline"))[0] == 200


def test_a_pd_without_an_operator_controller_answers_503_on_operator_endpoints() -> None:
    api = AdminApi(Cluster(MemoryMetaStorage(), 0.0), lambda: 0.0)
    for method, path in [("GET", "/operators"), ("GET", "/operator/1"), ("POST", "/regions/split")]:
        status, answer = api.respond(method, (API_PREFIX + path).encode(), b'{"region_id": 1}')
        assert (status, answer) == (503, {"error": "this PD runs without an operator controller"})

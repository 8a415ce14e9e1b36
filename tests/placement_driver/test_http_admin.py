"""The admin API's orders (operators, config, store drain and removal,
regions per store) and the admin token, over a real HTTP connection (h11
over trio) to a PD whose stores are fakes (`FakeStores`: heartbeats that
carry out the steps they are answered with).

The PD here has the replica checker and the schedulers off (an administrator's operators are
not limited, and nothing else starts operators) and long store timeouts
(no store turns Disconnected while a test runs on a busy machine).

Rules: loopback only, port 0; every test runs under `trio.fail_after`;
tests await conditions (`FakeStores.wait_until`), never sleep.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from kvproto.metapb import PeerRole, StoreState
from placement_driver.cluster import Cluster
from placement_driver.http_api import API_PREFIX, AdminApi
from placement_driver.server import PdServer
from placement_driver.storage import MemoryMetaStorage
from placement_driver.testing import open_pd
from tests.placement_driver.fake_stores import ADMIN_CONFIG, FakeStores, admin_cluster
from tests.placement_driver.helpers import http_request

TIMEOUT = 20


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[PdServer, FakeStores]]:
    """Four fake stores; the first region has one voter, on the first."""
    async with admin_cluster(tmp_path / "pd", id_alloc_step=10) as running:
        yield running


@pytest.fixture
def admin_pd(cluster: tuple[PdServer, FakeStores]) -> PdServer:
    return cluster[0]


@pytest.fixture
def fake(cluster: tuple[PdServer, FakeStores]) -> FakeStores:
    return cluster[1]


async def call(
    pd: PdServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    url = pd.addresses.http_url + API_PREFIX + path
    r = await http_request(url, method, raw, headers)
    assert r.headers["content-type"] == "application/json"
    return r.status, r.json()


def voter_stores(fake: FakeStores, region_id: int) -> set[int]:
    return {p.store_id for p in fake.region(region_id).peers if p.role == PeerRole.VOTER}


async def test_operators_ordered_over_http_are_carried_out(
    admin_pd: PdServer, fake: FakeStores
) -> None:
    pd = admin_pd
    s1, s2, s3, _ = fake.stores
    rid = min(fake.regions)

    async def order(body: dict[str, Any]) -> dict[str, Any]:
        status, op = await call(pd, "POST", "/operators", {"region_id": rid, **body})
        assert status == 200, op
        assert (op["region_id"], op["kind"], op["desc"]) == (rid, "admin", body["name"])
        return op

    async def done() -> None:
        await fake.wait_until(lambda: pd.operator_controller.get(rid) is None)
        status, op = await call(pd, "GET", f"/operator/{rid}")
        assert (status, op["status"]) == (200, "success"), op

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.run)
            op = await order({"name": "add-peer", "store_id": s2})
            assert [s["kind"] for s in op["steps"]] == ["add_learner", "promote_learner"]
            await done()
            assert voter_stores(fake, rid) == {s1, s2}

            await order({"name": "transfer-leader", "to_store_id": s2})
            await done()
            assert fake.regions[rid].leader_peer.store_id == s2

            await order({"name": "transfer-peer", "from_store_id": s1, "to_store_id": s3})
            await done()
            assert voter_stores(fake, rid) == {s2, s3}

            await order({"name": "remove-peer", "store_id": s3})
            await done()
            assert voter_stores(fake, rid) == {s2}

            await order({"name": "split-region", "keys": [{"text": "m"}]})
            await done()
            assert len(fake.regions) == 2
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{", 400, "the body is not JSON"),
        ({"name": "teleport", "region_id": 0}, 400, "name must be one of transfer-leader,"),
        ({"name": "add-peer", "region_id": "R"}, 400, "region_id must be a positive integer"),
        ({"name": "add-peer", "region_id": "R"}, 400, "got 'R'"),
        ({"name": "add-peer", "region_id": "R1"}, 400, "store_id must be a positive integer"),
        ({"name": "add-peer", "region_id": "R1", "store_id": "S2", "to": 1}, 400, "field 'to'"),
        (
            {"name": "transfer-peer", "region_id": "R1", "from_store_id": 5, "to_store_id": 5},
            400,
            "from_store_id and to_store_id must be different stores",
        ),
        ({"name": "split-region", "region_id": "R1", "keys": [{"hex": "z"}]}, 400, "bad hex"),
        ({"name": "add-peer", "region_id": 999, "store_id": "S2"}, 404, "region 999 is not"),
        ({"name": "add-peer", "region_id": "R1", "store_id": 999}, 404, "store 999 is not"),
        ({"name": "add-peer", "region_id": "R1", "store_id": "S1"}, 409, "already holds peer"),
        ({"name": "remove-peer", "region_id": "R1", "store_id": "S1"}, 409, "no other healthy"),
        ({"name": "transfer-leader", "region_id": "R1", "to_store_id": "S2"}, 409, "no peer on"),
    ],
)
async def test_operator_orders_are_checked(
    admin_pd: PdServer, fake: FakeStores, body: Any, status: int, reason: str
) -> None:
    # "R1" is the region, "S1".."S4" the stores: their ids are known only now.
    names = {"R1": min(fake.regions)} | {f"S{i}": s for i, s in enumerate(fake.stores, start=1)}
    if isinstance(body, dict):
        body = {k: names.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    with trio.fail_after(TIMEOUT):
        got, answer = await call(admin_pd, "POST", "/operators", body)
        assert (got, reason in answer["error"]) == (status, True), answer
        assert admin_pd.operator_controller.running() == []


async def test_a_running_operator_blocks_another_and_is_canceled_by_delete(
    admin_pd: PdServer, fake: FakeStores
) -> None:
    pd = admin_pd
    rid = min(fake.regions)
    add = {"name": "add-peer", "region_id": rid, "store_id": fake.stores[1]}
    with trio.fail_after(TIMEOUT):
        assert (await call(pd, "POST", "/operators", add))[0] == 200
        status, answer = await call(pd, "POST", "/operators", add)
        assert status == 409 and "already has a running operator" in answer["error"]
        # The running operator shows under both paths.
        status, shown = await call(pd, "GET", f"/operators/{rid}")
        assert (status, shown["status"]) == (200, "running")
        status, canceled = await call(pd, "DELETE", f"/operators/{rid}")
        assert status == 200
        assert (canceled["status"], canceled["reason"]) == (
            "canceled",
            "canceled by an administrator",
        )
        assert pd.operator_controller.get(rid) is None
        status, answer = await call(pd, "DELETE", f"/operators/{rid}")
        assert (status, answer) == (404, {"error": f"no operator is running for region {rid}"})
        assert (await call(pd, "DELETE", "/operators/x"))[0] == 400


async def test_the_config_is_set_over_http_all_or_nothing(
    admin_pd: PdServer, fake: FakeStores
) -> None:
    pd = admin_pd
    with trio.fail_after(TIMEOUT):
        status, config = await call(
            pd, "POST", "/config", {"max_replicas": 5, "max_store_down_time": "3h"}
        )
        assert status == 200, config
        assert (config["max_replicas"], config["max_store_down_time"]) == (5, "3h")
        assert config == (await call(pd, "GET", "/config"))[1]
        assert pd.cluster.config.max_replicas == 5
        for body, reason in [
            ({"max_replica": 3}, "unknown config key 'max_replica'"),
            ({"max_replicas": "zero"}, "bad value for max_replicas"),
            ({"max_replicas": True}, "a number or a text, got True"),
            ({"max_replicas": 3, "store_disconnect_time": "4h"}, "must be shorter"),
            ({"data_dir": "/tmp"}, "start-up option of the PD process"),
            ([1], "must be a JSON object"),
        ]:
            status, answer = await call(pd, "POST", "/config", body)
            assert (status, reason in answer["error"]) == (400, True), (body, answer)
        assert pd.cluster.config.max_replicas == 5  # all or nothing


async def test_a_store_is_drained_by_delete_and_taken_off_the_list_once_tombstone(
    admin_pd: PdServer, fake: FakeStores
) -> None:
    pd = admin_pd
    s1, s2, _, s4 = fake.stores
    rid = min(fake.regions)
    with trio.fail_after(TIMEOUT):
        # The regions on a store.
        status, listing = await call(pd, "GET", f"/regions/store/{s1}")
        assert (status, [r["id"] for r in listing["regions"]]) == (200, [rid])
        assert (await call(pd, "GET", f"/regions/store/{s4}"))[1] == {"count": 0, "regions": []}
        assert (await call(pd, "GET", "/regions/store/999"))[0] == 404
        # Only a Tombstone leaves the list.
        status, answer = await call(pd, "DELETE", f"/stores/remove-tombstone?store_id={s2}")
        assert status == 409 and "only a Tombstone store" in answer["error"]
        # Store 4 is drained (DELETE), then buried by a patrol: it holds nothing.
        status, store = await call(pd, "DELETE", f"/store/{s4}")
        assert (status, store["state"]) == (200, "Offline")
        # Three stores left Up for max_replicas 3: no more draining.
        status, answer = await call(pd, "DELETE", f"/store/{s2}")
        assert status == 409 and "2 other stores are Up" in answer["error"]
        assert pd.patrol().buried == (s4,)
        status, removed = await call(pd, "DELETE", f"/stores/remove-tombstone?store_id={s4}")
        assert status == 200
        assert [(s["id"], s["state"]) for s in removed["removed"]] == [(s4, "Tombstone")]
        assert (await call(pd, "GET", f"/store/{s4}"))[0] == 404
        assert (await call(pd, "GET", "/stores"))[1]["count"] == 3
        # It never comes back.
        status, answer = await call(pd, "DELETE", f"/store/{s4}")
        assert status == 409 and "was removed" in answer["error"]
        assert await call(pd, "DELETE", "/stores/remove-tombstone") == (
            200,
            {"count": 0, "removed": []},
        )
        assert (await call(pd, "DELETE", "/stores/remove-tombstone?store_id=x"))[0] == 400
        assert pd.cluster.find_store(s1) is not None
        assert pd.cluster.get_store(s2).state == StoreState.UP


# -- the admin token -------------------------------------------------------------------


def test_orders_need_the_admin_token_and_reads_do_not() -> None:
    api = AdminApi(Cluster(MemoryMetaStorage(), 0.0), lambda: 0.0, admin_token="s3cret")

    def respond(method: str, path: str, authorization: bytes | None = None) -> tuple[int, Any]:
        return api.respond(method, (API_PREFIX + path).encode(), authorization=authorization)

    assert respond("GET", "/health")[0] == 200
    assert api.respond("GET", b"/metrics")[0] == 503  # open too (this one has no metrics)
    assert respond("HEAD", "/config")[0] == 200
    for method, path in [
        ("POST", "/config"),
        ("DELETE", "/store/1"),
        ("POST", "/schedulers"),  # endpoints added later are covered too
        ("PUT", "/nowhere"),
    ]:
        status, answer = respond(method, path)
        assert status == 401
        assert answer == {
            "error": f"{method} needs the admin token: send the header "
            "'Authorization: Bearer <token>' (shardkv ctl --token-file FILE)"
        }
        assert respond(method, path, b"Bearer guess") == (401, {"error": "wrong admin token"})
        assert respond(method, path, b"s3cret")[0] == 401  # the scheme is part of it
        assert respond(method, path, b"Basic s3cret")[0] == 401
    # With the token, the order goes through to its own checks.
    status, answer = respond("POST", "/config", b"Bearer s3cret")
    assert (status, answer["error"].startswith("the body is not JSON")) == (400, True)
    assert respond("POST", "/config", b"bearer s3cret")[0] == 400  # any case of the scheme
    # Without a token configured, nothing is asked.
    open_api = AdminApi(Cluster(MemoryMetaStorage(), 0.0), lambda: 0.0)
    assert open_api.respond("POST", f"{API_PREFIX}/config".encode(), b"{}")[0] == 200


async def test_the_admin_token_file_guards_the_orders_of_a_running_pd(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef\n")  # the final newline is not part of it
    with trio.fail_after(TIMEOUT):
        async with open_pd(tmp_path / "pd", config=ADMIN_CONFIG, admin_token_file=token_file) as pd:
            url = pd.addresses.http_url + API_PREFIX + "/config"
            r = await http_request(url, "POST", b'{"max_replicas": 2}')
            assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer")
            wrong = {"Authorization": "Bearer 0123456789abcdeF"}
            assert (await http_request(url, "POST", b"{}", wrong)).status == 401
            right = {"Authorization": "Bearer 0123456789abcdef"}
            r = await http_request(url, "POST", b'{"max_replicas": 2}', right)
            assert (r.status, r.json()["max_replicas"]) == (200, 2)
            assert (await http_request(url)).status == 200


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the admin token file"),
        ("\n", "is empty"),
        ("two words\n", "must be one word of printable ASCII"),
    ],
)
async def test_an_unusable_admin_token_file_stops_the_pd_at_start(
    tmp_path: Path, content: str | None, message: str
) -> None:
    from placement_driver.config import ConfigError

    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match=message):
        async with open_pd(tmp_path / "pd", admin_token_file=token_file):
            pass
    assert not (tmp_path / "pd").exists()  # refused before touching anything

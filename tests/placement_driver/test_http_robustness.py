"""The admin HTTP API answers malformed input with 400 (or 404, 405, 409),
never 500: ids of 5,000 digits, JSON nested 500,000 deep, numbers beyond
what an id or a duration can be, and whatever a short fuzz of paths and
bodies finds (issue 15, finding 4).

Pure: the app's `respond` (and its ASGI entry once), no socket.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement_driver.http_api import API_PREFIX, AdminApi
from tests.placement_driver.mock_cluster import MockCluster

DIGITS_5000 = "9" * 5000
DEEP = 500_000

# Every route, with {id} where an id goes (store or region).
ID_ROUTES = [
    ("GET", "/store/{id}"),
    ("DELETE", "/store/{id}"),
    ("POST", "/store/{id}/state?state=Offline"),
    ("GET", "/regions/store/{id}"),
    ("GET", "/region/id/{id}"),
    ("GET", "/region/id/{id}/check"),
    ("GET", "/region/id/1/check?check_id={id}"),
    ("GET", "/operators/{id}"),
    ("DELETE", "/operators/{id}"),
    ("GET", "/operator/{id}"),
    ("DELETE", "/stores/remove-tombstone?store_id={id}"),
]
BODY_ROUTES = [
    ("POST", "/config"),
    ("POST", "/operators"),
    ("POST", "/regions/split"),
    ("POST", "/regions/check"),
    ("POST", "/schedulers"),
    ("POST", "/schedulers/balance-leader"),
]
PATHS = [
    "/health",
    "/cluster",
    "/stores",
    "/stores/remove-tombstone",
    "/store/1",
    "/store/1/state",
    "/regions",
    "/regions/split",
    "/regions/store/1",
    "/region/id/1",
    "/region/id/1/check",
    "/regions/check",
    "/region/key/r0001",
    "/config",
    "/operators",
    "/operators/1",
    "/operator/1",
    "/schedulers",
    "/schedulers/balance-leader",
    "/schedulers/evict-leader-1",
]
METHODS = ["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH"]


def new_api() -> AdminApi:
    mc = MockCluster().store(1).store(2).store(3).store(4)
    mc.region(1, voters=(1, 2, 3)).region(2, voters=(1, 2, 3))
    return AdminApi(mc.cluster, lambda: mc.now, operators=mc.controller, schedulers=mc.schedulers)


@pytest.fixture
def api() -> AdminApi:
    return new_api()


def respond(api: AdminApi, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    status, document = api.respond(method, (API_PREFIX + path).encode(), body)
    assert status < 500, (method, path[:80], body[:80], document)
    if status >= 400:
        assert isinstance(document, dict) and set(document) == {"error"}
        # A reason, not an echo of the whole input.
        assert len(document["error"]) < 1000, document["error"][:200]
    return status, document


BAD_IDS = {
    "5000-digits": DIGITS_5000,
    "2**64": str(2**64),
    "10**30": "1" + "0" * 30,
    "negative": "-1",
    "zero": "0",
    "fraction": "1.5",
    "nul": "%00",
    "not-utf8": "%ff%fe",
    "superscript-one": "¹",
}


@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
@pytest.mark.parametrize("bad_id", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_a_malformed_or_out_of_range_id_is_400(
    api: AdminApi, method: str, route: str, bad_id: str
) -> None:
    status, _ = respond(api, method, route.format(id=bad_id))
    assert status == 400


@pytest.mark.parametrize(("method", "route"), BODY_ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        b"[" * DEEP,
        ('{"region_id": ' + DIGITS_5000 + "}").encode(),
        ('{"delay": ' + DIGITS_5000 + "}").encode(),
        b"\xff\xfe",
        b"",
        b"null",
        b'"text"',
    ],
    ids=[
        "arrays-500000-deep",
        "objects-500000-deep",
        "unclosed-500000-deep",
        "a-5000-digit-number",
        "a-5000-digit-delay",
        "not-utf8",
        "empty",
        "null",
        "a-string",
    ],
)
def test_a_malformed_body_is_400(api: AdminApi, method: str, route: str, body: bytes) -> None:
    status, _ = respond(api, method, route, body)
    assert status == 400


BIG = {"2**64": 2**64, "10**30": 10**30, "10**400": 10**400, "-(2**64)": -(2**64)}


@pytest.mark.parametrize("big", BIG.values(), ids=BIG.keys())
def test_numbers_out_of_range_in_bodies_are_400(api: AdminApi, big: int) -> None:
    for route, body in [
        ("/operators", {"name": "transfer-leader", "region_id": big, "to_store_id": 2}),
        ("/operators", {"name": "transfer-leader", "region_id": 1, "to_store_id": big}),
        ("/operators", {"name": "add-peer", "region_id": 1, "store_id": big}),
        ("/operators", {"name": "split-region", "region_id": big}),
        ("/regions/split", {"region_id": big, "keys": []}),
        ("/regions/check", {"region_id": big}),
        ("/schedulers", {"name": "evict-leader", "store_id": big}),
        ("/schedulers/balance-leader", {"delay": big}),
        ("/config", {"region_max_keys": big}),
        ("/config", {"max_store_down_time": big}),
        ("/config", {"tolerant_size_ratio": big}),
    ]:
        status, document = respond(api, "POST", route, json.dumps(body).encode())
        assert status == 400, (route, body, document)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_400(api: AdminApi, literal: str) -> None:
    for route, field in [
        ("/schedulers/balance-leader", "delay"),
        ("/config", "tolerant_size_ratio"),
        ("/config", "max_store_down_time"),
        ("/operators", "region_id"),
    ]:
        body = f'{{"name": "add-peer", "store_id": 4, "{field}": {literal}}}'
        if route != "/operators":
            body = f'{{"{field}": {literal}}}'
        status, _ = respond(api, "POST", route, body.encode())
        assert status == 400, (route, field, literal)


async def test_the_asgi_entry_answers_400_for_a_deep_body(api: AdminApi) -> None:
    """Through `__call__` as hypercorn calls it: a JSON answer, no traceback."""
    body = b"[" * DEEP + b"]" * DEEP
    sent: list[dict[str, Any]] = []
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": f"{API_PREFIX}/operators",
        "raw_path": f"{API_PREFIX}/operators".encode(),
        "query_string": b"",
        "headers": [],
    }
    with trio.fail_after(10):
        await api(scope, receive, send)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"].startswith("the body is not JSON")


# -- fuzz ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**64, 10**400, -(10**30)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "name",
    "region_id",
    "store_id",
    "to_store_id",
    "from_store_id",
    "keys",
    "delay",
    "max_replicas",
    "region_max_size",
    "max_store_down_time",
    "tolerant_size_ratio",
]
NAMES = ["transfer-leader", "transfer-peer", "add-peer", "remove-peer", "split-region"]
bodies = (
    st.dictionaries(
        st.sampled_from(FIELDS),
        json_values | st.sampled_from([*NAMES, "evict-leader", "balance-leader"]),
        max_size=4,
    ).map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=40)
    | st.tuples(st.integers(1, 100_000), st.sampled_from(["[]", '{"a":1}'])).map(
        lambda t: (t[1][:-1] * t[0] + t[1][-1] * t[0]).encode()
    )
)
segments = st.sampled_from(
    [
        "1",
        "2",
        "4",
        "0",
        "-1",
        "999",
        "1e3",
        "%00",
        "%ff",
        "..",
        "",
        "x" * 40,
        str(2**64),
        "9" * 5000,
    ]
) | st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#/"),
    max_size=10,
)
paths = st.one_of(
    st.sampled_from(PATHS),
    st.tuples(st.sampled_from(PATHS), segments).map("/".join),
    st.tuples(st.sampled_from([p.rsplit("/", 1)[0] for p in PATHS]), segments).map(
        lambda t: f"{t[0]}/{t[1]}"
    ),
    st.tuples(st.sampled_from(PATHS), st.sampled_from(["state", "store_id"]), segments).map(
        lambda t: f"{t[0]}?{t[1]}={t[2]}"
    ),
)


@settings(
    max_examples=int(os.environ.get("SHARDKV_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(method=st.sampled_from(METHODS), path=paths, body=bodies)
def test_fuzzed_requests_are_never_answered_500(method: str, path: str, body: bytes) -> None:
    # A fresh cluster per example would be slow; orders that succeed only
    # change the mock cluster, which every later example may then meet.
    respond(FUZZ_API, method, path, body)


FUZZ_API = new_api()

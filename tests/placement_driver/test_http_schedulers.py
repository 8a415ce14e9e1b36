"""The admin HTTP API's scheduler endpoints, over a real HTTP connection
(h11 over trio), on a real PdServer.

Rules: loopback only, port 0; every test runs under `trio.fail_after`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from placement_driver.cluster import Cluster
from placement_driver.http_api import API_PREFIX, AdminApi
from placement_driver.server import PdServer
from placement_driver.storage import MemoryMetaStorage
from placement_driver.testing import open_pd
from tests.placement_driver.helpers import PdCaller, http_request
from tests.placement_driver.test_http_operators import call, one_store

TIMEOUT = 10
DEFAULTS = [
    {"name": "balance-leader", "paused_until": None, "store_id": None, "operators_created": 0},
    {"name": "balance-region", "paused_until": None, "store_id": None, "operators_created": 0},
]


async def test_schedulers_are_listed_added_paused_and_removed(
    pd: PdServer, caller: PdCaller
) -> None:
    with trio.fail_after(TIMEOUT):
        fake = await one_store(caller)
        (s1,) = fake.stores
        assert await call(pd, "GET", "/schedulers") == (200, {"schedulers": DEFAULTS})
        # An evict-leader scheduler for store 1: listed first (it runs first).
        status, added = await call(
            pd, "POST", "/schedulers", {"name": "evict-leader", "store_id": s1}
        )
        evict = {
            "name": f"evict-leader-{s1}",
            "paused_until": None,
            "store_id": s1,
            "operators_created": 0,
        }
        assert (status, added) == (200, evict)
        assert await call(pd, "GET", "/schedulers") == (200, {"schedulers": [evict, *DEFAULTS]})
        # Paused for 30 s: the answer says how long is left.
        status, paused = await call(pd, "POST", "/schedulers/balance-region", {"delay": 30})
        assert status == 200 and 29 < paused["paused_until"] <= 30
        assert pd.schedulers.get("balance-region").is_paused(trio.current_time())
        # 0 resumes it.
        status, resumed = await call(pd, "POST", "/schedulers/balance-region/", {"delay": 0})
        assert (status, resumed) == (200, DEFAULTS[1])
        # Removed: answered with what it was, then gone.
        assert await call(pd, "DELETE", f"/schedulers/evict-leader-{s1}") == (200, evict)
        assert await call(pd, "DELETE", "/schedulers/balance-leader") == (200, DEFAULTS[0])
        assert await call(pd, "GET", "/schedulers") == (200, {"schedulers": DEFAULTS[1:]})
        # And added back by its name alone.
        status, _ = await call(pd, "POST", "/schedulers", {"name": "balance-leader"})
        assert status == 200 and pd.schedulers.evicting() == frozenset()


async def test_bad_scheduler_requests_get_a_4xx_with_a_reason(
    pd: PdServer, caller: PdCaller
) -> None:
    with trio.fail_after(TIMEOUT):
        fake = await one_store(caller)
        s2 = await fake.add_store()
        for _ in range(2):  # max_replicas stores stay Up while store 2 is drained
            await fake.add_store()
        # Store 2 becomes a tombstone (it holds nothing).
        for state in ("Offline", "Tombstone"):
            assert (await call(pd, "POST", f"/store/{s2}/state?state={state}", b""))[0] == 200
        cases: list[tuple[str, str, Any, int, str]] = [
            ("POST", "/schedulers", b"{not json", 400, "the body is not JSON"),
            ("POST", "/schedulers", [1], 400, "must be a JSON object"),
            ("POST", "/schedulers", {}, 400, "name must be a scheduler name"),
            ("POST", "/schedulers", {"name": 3}, 400, "name must be a scheduler name"),
            ("POST", "/schedulers", {"name": "shuffle"}, 400, "unknown scheduler 'shuffle'"),
            ("POST", "/schedulers", {"name": "evict-leader"}, 400, "needs a store_id"),
            (
                "POST",
                "/schedulers",
                {"name": "evict-leader", "store_id": "4"},
                400,
                "store_id must be a positive integer",
            ),
            (
                "POST",
                "/schedulers",
                {"name": "evict-leader", "store_id": True},
                400,
                "store_id must be a positive integer",
            ),
            (
                "POST",
                "/schedulers",
                {"name": "balance-leader", "store_id": 1},
                400,
                "takes no store_id",
            ),
            ("POST", "/schedulers", {"name": "balance-leader", "x": 1}, 400, "unknown field 'x'"),
            (
                "POST",
                "/schedulers",
                {"name": "evict-leader", "store_id": 999},
                404,
                "store 999 is not known",
            ),
            (
                "POST",
                "/schedulers",
                {"name": "evict-leader", "store_id": s2},
                409,
                f"store {s2} is a tombstone",
            ),
            ("POST", "/schedulers", {"name": "balance-leader"}, 409, "already exists"),
            ("POST", "/schedulers/balance-leader", {"delay": -1}, 400, "a pause lasts 0 to"),
            ("POST", "/schedulers/balance-leader", {"delay": 1e300}, 400, "a pause lasts 0 to"),
            ("POST", "/schedulers/balance-leader", {"delay": "10"}, 400, '{"delay": seconds}'),
            ("POST", "/schedulers/balance-leader", {"delay": True}, 400, '{"delay": seconds}'),
            ("POST", "/schedulers/balance-leader", {}, 400, '{"delay": seconds}'),
            ("POST", "/schedulers/balance-leader", b"[]", 400, "must be a JSON object"),
            ("POST", "/schedulers/nope", {"delay": 1}, 404, "no scheduler nope"),
            ("DELETE", "/schedulers/nope", None, 404, "no scheduler nope"),
            ("DELETE", "/schedulers", None, 405, "use GET, HEAD, POST"),
            ("GET", "/schedulers/balance-leader", None, 405, "use DELETE, POST"),
        ]
        for method, path, body, expected, reason in cases:
            status, answer = await call(pd, method, path, body)
            assert (status, reason in answer["error"]) == (expected, True), (path, body, answer)
        # Nothing changed.
        assert await call(pd, "GET", "/schedulers") == (200, {"schedulers": DEFAULTS})
        r = await http_request(pd.addresses.http_url + API_PREFIX + "/schedulers/x")
        assert r.status == 405 and r.headers["allow"] == "DELETE, POST"


async def test_the_active_set_survives_a_pd_restart(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_pd(tmp_path / "pd") as pd:
            assert (await call(pd, "DELETE", "/schedulers/balance-region"))[0] == 200
            assert (await call(pd, "POST", "/schedulers/balance-leader", {"delay": 60}))[0] == 200
        async with open_pd(tmp_path / "pd") as pd:
            # The set is kept; the pause is not.
            assert await call(pd, "GET", "/schedulers") == (200, {"schedulers": DEFAULTS[:1]})


def test_a_pd_without_an_operator_controller_answers_503_on_scheduler_endpoints() -> None:
    api = AdminApi(Cluster(MemoryMetaStorage(), 0.0), lambda: 0.0)
    for method, path in [
        ("GET", "/schedulers"),
        ("POST", "/schedulers"),
        ("POST", "/schedulers/balance-leader"),
        ("DELETE", "/schedulers/balance-leader"),
    ]:
        status, answer = api.respond(method, (API_PREFIX + path).encode(), b"{}")
        assert (status, answer) == (503, {"error": "this PD runs without an operator controller"})

"""The admin API's consistency checks (`placement_driver.consistency`): the
order, the views, the JSON document of a check. Routes are `http_api`'s.

    POST /regions/check            {"region_id": N}: order a check of the
                                   region; answers the check ("requested")
    GET  /regions/check[?state=S]  {"count": n, "checks": [check, ...]}: each
                                   region's latest reported check, by region
                                   id; S one of requested, pending, match,
                                   mismatch
    GET  /region/id/{id}/check[?check_id=C]   the region's check C (ordered
                                   or reported), else its latest reported one

A check: {"region_id", "check_id" (0: periodic), "index" (the applied index
hashed, 0 until a replica reports), "state", "stores": [{"store_id",
"digest": hex or null}] (the replicas at that index), "differing": [store
ids], "missing": [store ids not reported yet], "requested_ago",
"reported_ago" (seconds, null if not)}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from placement_driver.cluster import Cluster
from placement_driver.consistency import CheckState, ConsistencyChecks, RegionCheck
from placement_driver.http_json import (
    HttpError,
    JsonObject,
    Request,
    json_body,
    parse_id,
    positive_int,
    short,
)

__all__ = ["ConsistencyViews", "check_json"]

_STATES: Final = {s.value: s for s in CheckState}


def check_json(check: RegionCheck, now: float) -> JsonObject:
    def ago(t: float | None) -> float | None:
        return None if t is None else round(max(0.0, now - t), 3)

    return {
        "region_id": check.region_id,
        "check_id": check.check_id,
        "index": check.index,
        "state": check.state.value,
        "stores": [
            {"store_id": s, "digest": None if (d := check.digests.get(s)) is None else d.hex()}
            for s in check.stores
        ],
        "differing": check.differing(),
        "missing": check.missing(),
        "requested_ago": ago(check.requested_at),
        "reported_ago": ago(check.reported_at),
    }


class ConsistencyViews:
    """`on_order` is called after an order is taken (the PD's shell wakes
    the stores' long polls with it)."""

    def __init__(
        self,
        cluster: Cluster,
        checks: ConsistencyChecks,
        clock: Callable[[], float],
        on_order: Callable[[], None] | None = None,
    ) -> None:
        self._cluster = cluster
        self._checks = checks
        self._clock = clock
        self._on_order = on_order

    def order(self, req: Request) -> JsonObject:
        body = json_body(req.body)
        unknown = sorted(body.keys() - {"region_id"})
        if unknown:
            raise HttpError(400, f"unknown field {short(unknown[0])}; the body is {{region_id}}")
        region_id = positive_int(body, "region_id")
        now = self._clock()
        check = self._checks.request(self._cluster, region_id, now)
        if self._on_order is not None:
            self._on_order()
        return check_json(check, now)

    def list(self, req: Request) -> JsonObject:
        values = req.query.get("state", [])
        if len(values) > 1:
            raise HttpError(400, "give state at most once")
        wanted = None
        if values:
            wanted = _STATES.get(values[0].lower())
            if wanted is None:
                raise HttpError(
                    400, f"unknown state {short(values[0])}: one of {', '.join(_STATES)}"
                )
        now = self._clock()
        checks = [
            check_json(c, now) for c in self._checks.latest() if wanted is None or c.state is wanted
        ]
        return {"count": len(checks), "checks": checks}

    def one(self, req: Request) -> JsonObject:
        region_id = parse_id(req.match["id"], "region")
        values = req.query.get("check_id", [])
        if len(values) > 1:
            raise HttpError(400, "give check_id at most once")
        check_id = parse_id(values[0].encode(), "check") if values else None
        check = self._checks.find(region_id, check_id)
        if check is not None:
            return check_json(check, self._clock())
        if self._cluster.region_by_id(region_id) is None:
            raise HttpError(404, f"region {region_id} not found")
        if check_id is None:
            raise HttpError(404, f"no consistency check of region {region_id} reported yet")
        raise HttpError(404, f"no consistency check {check_id} of region {region_id}")

"""The orders of the PD's admin HTTP API: the views that change the
cluster (operators, store states, the store list, the config). The routes
are `http_api.AdminApi`'s; each view here parses its request (400 with the
reason for bad input), calls the core and answers what it did. The core's
refusals (`PdRequestError`, `OperatorExistsError`) are mapped to 404 / 409
by the dispatcher.

Every order is taken at once: an operator is answered once it is started,
not once the region shows it done (watch ``GET /operator/{region_id}``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from kvproto.metapb import StoreState
from placement_driver.admin_operators import ADMIN_OPERATORS
from placement_driver.cluster import Cluster
from placement_driver.http_json import (
    HttpError,
    JsonObject,
    Request,
    json_body,
    operator_json,
    parse_id,
    parse_key,
    positive_int,
    short,
    store_json,
)
from placement_driver.operator_controller import OperatorController
from placement_driver.stores import StoreInfo

__all__ = ["OPERATOR_NAMES", "AdminOrders"]

log = logging.getLogger(__name__)

_SETTABLE_STATES: Final = {
    "up": StoreState.UP,
    "offline": StoreState.OFFLINE,
    "tombstone": StoreState.TOMBSTONE,
}

# The operators POST /operators starts, by "name".
OPERATOR_NAMES: Final = (*ADMIN_OPERATORS, "split-region")


class AdminOrders:
    """The order views over one cluster. `operators` is the PD's operator
    controller (None: the operator orders answer 503); `on_change` is
    called after an order that may change store states (a store state, the
    store list, the config: the shell re-derives them)."""

    def __init__(
        self,
        cluster: Cluster,
        clock: Callable[[], float],
        operators: OperatorController | None,
        on_change: Callable[[], None] | None,
    ) -> None:
        self._cluster = cluster
        self._clock = clock
        self._operators = operators
        self._on_change = on_change

    def controller(self) -> OperatorController:
        if self._operators is None:
            raise HttpError(503, "this PD runs without an operator controller")
        return self._operators

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _store_json(self, info: StoreInfo, now: float) -> JsonObject:
        c = self._cluster
        return store_json(info, now, c.store_leader_flow(info.id), c.store_replacement(info.id))

    # -- operators ---------------------------------------------------------------------

    def split_region(self, req: Request) -> JsonObject:
        """POST /regions/split {"region_id": N, "keys": [key, ...]}."""
        body = json_body(req.body)
        return self._split(positive_int(body, "region_id"), body)

    def _split(self, region_id: int, body: dict[str, Any]) -> JsonObject:
        controller = self.controller()
        raw_keys = body.get("keys", [])
        if not isinstance(raw_keys, list):
            raise HttpError(400, 'keys must be a list of {"hex": ...} or {"text": ...}')
        keys = tuple(parse_key(k) for k in raw_keys)
        now = self._clock()
        return operator_json(controller.split_region(self._cluster, region_id, keys, now), now)

    def add_operator(self, req: Request) -> JsonObject:
        """POST /operators {"name": ..., "region_id": N, ...}: start an
        administrator's operator; answers it."""
        controller = self.controller()
        body = json_body(req.body)
        name = body.get("name")
        if not isinstance(name, str) or name not in OPERATOR_NAMES:
            raise HttpError(
                400, f"name must be one of {', '.join(OPERATOR_NAMES)}; got {short(name)}"
            )
        fields = ("keys",) if name == "split-region" else ADMIN_OPERATORS[name].store_fields
        unknown = sorted(body.keys() - {"name", "region_id", *fields})
        if unknown:
            raise HttpError(
                400,
                f"unknown field {short(unknown[0])} for {name}; "
                f"it takes region_id, {', '.join(fields)}",
            )
        region_id = positive_int(body, "region_id")
        if name == "split-region":
            return self._split(region_id, body)
        store_ids = {f: positive_int(body, f) for f in fields}
        if len(set(store_ids.values())) != len(store_ids):
            raise HttpError(400, f"{' and '.join(fields)} must be different stores")
        now = self._clock()
        op = controller.admin_operator(self._cluster, name, region_id, store_ids, now)
        return operator_json(op, now)

    def cancel_operator(self, req: Request) -> JsonObject:
        """DELETE /operators/{region_id}: cancel the region's running
        operator; answers it (404 if none runs)."""
        controller = self.controller()
        region_id = parse_id(req.match["id"], "region")
        now = self._clock()
        op = controller.cancel(region_id, now, "canceled by an administrator")
        if op is None:
            raise HttpError(404, f"no operator is running for region {region_id}")
        return operator_json(op, now)

    # -- stores ------------------------------------------------------------------------

    def set_store_state(self, req: Request) -> JsonObject:
        """POST /store/{id}/state?state=Up|Offline|Tombstone."""
        store_id = parse_id(req.match["id"], "store")
        values = req.query.get("state", [])
        if len(values) != 1:
            raise HttpError(400, "give the new state once: ?state=Up|Offline|Tombstone")
        state = _SETTABLE_STATES.get(values[0].lower())
        if state is None:
            raise HttpError(
                400,
                f"cannot set state {short(values[0])}: settable states are Up, Offline, Tombstone",
            )
        return self._set_state(store_id, state)

    def offline_store(self, req: Request) -> JsonObject:
        """DELETE /store/{id}: drain the store (Offline), as PD's API does."""
        return self._set_state(parse_id(req.match["id"], "store"), StoreState.OFFLINE)

    def _set_state(self, store_id: int, state: StoreState) -> JsonObject:
        now = self._clock()
        targeted = () if self._operators is None else self._operators.target_stores()
        info = self._cluster.set_store_state(store_id, state, now, targeted=targeted)
        self._changed()
        return self._store_json(info, now)

    def remove_tombstones(self, req: Request) -> JsonObject:
        """DELETE /stores/remove-tombstone[?store_id=N]: take Tombstone
        stores off the store list (the one given, or all)."""
        values = req.query.get("store_id", [])
        if len(values) > 1:
            raise HttpError(400, "give store_id at most once")
        store_id = parse_id(values[0].encode(), "store") if values else None
        removed = self._cluster.remove_tombstone_stores(store_id)
        self._changed()
        now = self._clock()
        stores = [self._store_json(info, now) for info in removed]
        return {"count": len(stores), "removed": stores}

    # -- config ------------------------------------------------------------------------

    def set_config(self, req: Request) -> JsonObject:
        """POST /config {"key": value, ...}: values as in pd.toml (numbers,
        or text for durations and sizes); all or nothing. Answers the whole
        new config."""
        body = json_body(req.body)
        items: dict[str, str] = {}
        for name, value in body.items():
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise HttpError(
                    400, f"bad value for {short(name)}: a number or a text, got {short(value)}"
                )
            items[name] = str(value)
        config = self._cluster.set_config(items)
        self._changed()
        return dict(config.toml_values())

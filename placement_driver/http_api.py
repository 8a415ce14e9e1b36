"""The PD's admin HTTP API (JSON): a small ASGI app.

Served by hypercorn's trio worker (see `server.py`); this module only maps
a method, a raw path, a query and a body to a status and a JSON document,
so the routing and the views are testable without a socket.

`GET /metrics` (at the root, as Prometheus expects): the PD's metrics in
Prometheus text format (`placement_driver.metrics`).

Endpoints under /pd/api/v1; GET (and HEAD) reads:

    /health               {"health": true, "bootstrapped": ..., "cluster_id": ...}
    /cluster              cluster id, bootstrap state, store and region counts
    /stores               {"count": n, "stores": [store, ...]} in id order
    /store/{id}           one store; `leader_flow` sums the flows of the
                          regions led there
    /regions              {"count": n, "regions": [region, ...]} in key order;
                          a region shows its last heartbeat's fields and its
                          `flow`: written and read bytes and keys per second
    /region/id/{id}       one region
    /region/key/{key}     the region containing the URL-escaped key bytes
                          (e.g. /region/key/user%00%ff)
    /config               the cluster config, values as in pd.toml
    /operators            {"count": n, "operators": [operator, ...] (running, in
                          region id order), "history": [operator, ...] (finished,
                          oldest first)}
    /operator/{region_id} the region's running operator, else its latest
                          finished one

    /regions/store/{id}   {"count": n, "regions": [...]}: the regions with a
                          peer (any role) on the store, in key order
    /operators/{region_id}  same as /operator/{region_id}

Consistency checks (`http_consistency`: the documents there):

    POST /regions/check   {"region_id": N}: order a check of the region's
                          replicas; answers the check ("requested")
    GET /regions/check[?state=mismatch]   each region's latest check
    GET /region/id/{id}/check[?check_id=C]   one check of a region

Orders, POST and DELETE (answered once the order is taken, not once it is
carried out; the views are `http_admin`'s):

    POST /operators       start an administrator's operator on a region;
                          body {"name": ..., "region_id": N, ...}:
                          transfer-leader {"to_store_id": S},
                          transfer-peer {"from_store_id": S1, "to_store_id": S2},
                          add-peer {"store_id": S}, remove-peer {"store_id": S},
                          split-region {"keys": [key, ...]} (none: by size);
                          answers the operator
    DELETE /operators/{region_id}   cancel the region's running operator;
                          answers it
    POST /regions/split   body {"region_id": N, "keys": [key, ...]}: as
                          split-region above
    POST /store/{id}/state?state=Offline   set a store's state: Offline
                          (decommission: its peers get replaced, and it becomes
                          Tombstone once it holds no region), Up (take it back),
                          Tombstone (an Offline store holding no region);
                          answers the store
    DELETE /store/{id}    make the store Offline (same rules); answers it
    DELETE /stores/remove-tombstone[?store_id=N]   take Tombstone stores off
                          the store list (the one given, else every one); their
                          ids stay refused. Answers {"count": n, "removed":
                          [store, ...]}
    POST /config          body {"key": value, ...}: change cluster config keys
                          (values as in pd.toml), all or nothing; answers the
                          whole config

Schedulers (`schedulers`: documents and checks there):

    GET /schedulers       {"schedulers": [{"name", "paused_until" (seconds until
                          it resumes, null), "store_id" (null), "operators_created"}]}
    POST /schedulers      {"name": "balance-leader"} or {"name": "evict-leader",
                          "store_id": 4}: activate it; answers the scheduler
                          (409 if active, 404 for an unknown store)
    DELETE /schedulers/{name}          deactivate it (404 if not active)
    POST /schedulers/{name}            {"delay": seconds}: pause it that long,
                          0 resumes it

Admin token: an AdminApi given `admin_token` (``shardkv pd
--admin-token-file FILE``) answers every request but GET and HEAD with 401
unless it carries ``Authorization: Bearer <token>``: checked here, by
method, before routing, so that orders added later are covered too. Reads
stay open.

Keys appear as ``{"hex": "75736572", "text": "user"}``, `text` null when the
bytes are not UTF-8. An empty end key means +infinity. Errors are JSON
``{"error": "..."}``: 404 for unknown ids, keys outside every region and
unknown paths; 400 for malformed ids, bodies and arguments; 401 for an order
without the admin token (or with another); 405 for other
methods (with an Allow header); 409 when the cluster's state refuses an order
(the region already has an operator, not bootstrapped, a Tombstone store, a
store to drain while fewer than max_replicas others are Up, a store to remove
that still holds regions or that a running operator targets, the scheduler is
already active); 413 for a body over 1 MiB; 503 for operator and scheduler
endpoints of a PD without an operator controller.

Keys are read from the ASGI `raw_path`: the decoded `path` is text, which
cannot hold arbitrary key bytes.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qs, unquote_to_bytes

from kvproto.metapb import StoreId
from kvproto.pdpb import PdErrorCode
from placement_driver.cluster import Cluster
from placement_driver.consistency import ConsistencyChecks
from placement_driver.errors import (
    OperatorExistsError,
    PdRequestError,
    SchedulerExistsError,
    SchedulerNotFoundError,
)
from placement_driver.http_admin import AdminOrders
from placement_driver.http_consistency import ConsistencyViews
from placement_driver.http_json import (
    HttpError,
    JsonObject,
    Text,
    key_json,
    operator_json,
    region_json,
    store_json,
)

# The request helpers under the private names the views here were written
# with (before they moved to http_json, shared with http_admin).
from placement_driver.http_json import Request as _Request
from placement_driver.http_json import View as _View
from placement_driver.http_json import cut as _cut
from placement_driver.http_json import json_body as _json_body
from placement_driver.http_json import parse_id as _parse_id
from placement_driver.http_json import path_text as _path_text
from placement_driver.operator_controller import OperatorController
from placement_driver.schedulers import (
    SchedulerController,
    add_from_json,
    pause_from_json,
    scheduler_json,
    schedulers_json,
)
from plumbing.asgi import Receive, Scope, Send, lifespan

__all__ = [
    "API_PREFIX",
    "MAX_BODY",
    "AdminApi",
    "HttpError",
    "Text",
    "key_json",
    "operator_json",
    "region_json",
    "store_json",
]

log = logging.getLogger(__name__)

API_PREFIX: Final = "/pd/api/v1"
MAX_BODY: Final = 1 << 20

# The longest reason an error answer carries.
_REASON: Final = 600

# Methods that only read: open even with an admin token.
READ_METHODS: Final = frozenset({"GET", "HEAD"})

# PdRequestError codes -> HTTP status; any other code is 400.
_STATUS_OF_CODE: Final = {
    PdErrorCode.REGION_NOT_FOUND: 404,
    PdErrorCode.STORE_NOT_FOUND: 404,
    PdErrorCode.NOT_BOOTSTRAPPED: 409,
    PdErrorCode.STORE_TOMBSTONE: 409,
    PdErrorCode.FAILED_PRECONDITION: 409,
}


class AdminApi:
    """The ASGI application. `clock` gives the shell's current time (the
    same clock as the heartbeat times held by `cluster`). `operators` is the
    PD's operator controller and `schedulers` its schedulers (None: their
    endpoints answer 503); `on_store_state_change` is called after an order that may change store
    states (a store state, the store list, the config). `metrics` returns
    the Prometheus exposition and its content type (None: /metrics answers
    503). `admin_token`: the token every request but a read must carry
    (None: none needed). `checks`: the PD's consistency checks (None: an
    empty set of its own); `on_check_ordered` is called after one is
    ordered.

    Routes: the first route whose pattern matches the path and that has a
    view for the method answers; several routes may share a pattern (one
    per method or group of methods), and a path that some route matches
    but none for the method is a 405."""

    def __init__(
        self,
        cluster: Cluster,
        clock: Callable[[], float],
        *,
        operators: OperatorController | None = None,
        schedulers: SchedulerController | None = None,
        on_store_state_change: Callable[[], None] | None = None,
        metrics: Callable[[], Text] | None = None,
        admin_token: str | None = None,
        checks: ConsistencyChecks | None = None,
        on_check_ordered: Callable[[], None] | None = None,
    ) -> None:
        if admin_token is not None and not admin_token:
            raise ValueError("an admin token must not be empty")
        self._cluster = cluster
        self._clock = clock
        self._operators = operators
        self._schedulers = schedulers
        self._orders = AdminOrders(cluster, clock, operators, on_store_state_change)
        checks_view = ConsistencyViews(
            cluster, checks or ConsistencyChecks(), clock, on_check_ordered
        )
        self._token = None if admin_token is None else admin_token.encode()
        self._metrics_source = metrics
        p = re.escape(API_PREFIX.encode())

        def route(pattern: bytes, **views: _View) -> tuple[re.Pattern[bytes], dict[str, _View]]:
            return re.compile(p + pattern, re.DOTALL), views

        self._routes: list[tuple[re.Pattern[bytes], dict[str, _View]]] = [
            (re.compile(rb"/metrics/?"), {"GET": self._metrics}),  # at the root: Prometheus
            route(rb"/health/?", GET=self._health),
            route(rb"/cluster/?", GET=self._cluster_info),
            route(rb"/stores/?", GET=self._stores),
            route(rb"/stores/remove-tombstone/?", DELETE=self._orders.remove_tombstones),
            route(rb"/store/(?P<id>[^/]*)/?", GET=self._store),
            route(rb"/store/(?P<id>[^/]*)/?", DELETE=self._orders.offline_store),
            route(rb"/store/(?P<id>[^/]*)/state/?", POST=self._orders.set_store_state),
            route(rb"/regions/?", GET=self._regions),
            route(rb"/regions/split/?", POST=self._orders.split_region),
            route(rb"/regions/check/?", GET=checks_view.list, POST=checks_view.order),
            route(rb"/regions/store/(?P<id>[^/]*)/?", GET=self._regions_on_store),
            route(rb"/region/id/(?P<id>[^/]*)/?", GET=self._region_by_id),
            route(rb"/region/id/(?P<id>[^/]*)/check/?", GET=checks_view.one),
            route(rb"/region/key/(?P<key>.*)", GET=self._region_by_key),
            route(rb"/config/?", GET=self._config),
            route(rb"/config/?", POST=self._orders.set_config),
            route(rb"/operators/?", GET=self._operators_view),
            route(rb"/operators/?", POST=self._orders.add_operator),
            route(
                rb"/operators/(?P<id>[^/]*)/?",
                GET=self._operator,
                DELETE=self._orders.cancel_operator,
            ),
            route(rb"/operator/(?P<id>[^/]*)/?", GET=self._operator),
            route(rb"/schedulers/?", GET=self._schedulers_view, POST=self._add_scheduler),
            route(rb"/schedulers/(?P<name>[^/]+)/?", POST=self._pause, DELETE=self._remove),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await lifespan(receive, send)
        elif kind == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            query = scope.get("query_string") or b""
            method = scope["method"]
            body = b""
            too_large = False
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > MAX_BODY:
                    too_large = True
                    body = b""
                if not message.get("more_body"):
                    break
            authorization = _header(scope, b"authorization")
            extra: list[tuple[bytes, bytes]] = []
            if too_large:
                status, document = 413, {"error": f"body over {MAX_BODY} bytes"}
            else:
                status, document, extra = self._respond(
                    method, raw_path, query, body, authorization
                )
            if isinstance(document, Text):
                data, content_type = document.body, document.content_type.encode()
            else:
                data = json.dumps(document, indent=None, separators=(",", ":")).encode() + b"\n"
                content_type = b"application/json"
            headers = [
                (b"content-type", content_type),
                (b"content-length", str(len(data)).encode()),
                *extra,
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})

    def respond(
        self,
        method: str,
        raw_path: bytes,
        body: bytes = b"",
        query: bytes = b"",
        *,
        authorization: bytes | None = None,
    ) -> tuple[int, Any]:
        """The status and JSON document (`Text` for /metrics) for a request
        (`raw_path` may carry the query after "?"; `authorization` is the
        header's value)."""
        status, document, _ = self._respond(method, raw_path, query, body, authorization)
        return status, document

    def _respond(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        body: bytes,
        authorization: bytes | None = None,
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        """The status, the JSON document and the extra headers."""
        path, _, in_path = raw_path.partition(b"?")
        query = query or in_path
        refusal = self._check_token(method, authorization)
        if refusal is not None:
            return 401, {"error": refusal}, [(b"www-authenticate", b'Bearer realm="shardkv-pd"')]
        allowed: set[str] = set()
        for pattern, views in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            view = views.get("GET" if method == "HEAD" else method)
            if view is None:
                allowed.update(views)
                continue
            request = _Request(match, parse_qs(query.decode("latin-1")), body)
            try:
                return 200, view(request), []
            # Reasons are cut: some quote the request (a 5,000-digit name).
            except HttpError as e:
                return e.status, {"error": _cut(e.reason, _REASON)}, []
            except PdRequestError as e:
                return _STATUS_OF_CODE.get(e.code, 400), {"error": _cut(e.message, _REASON)}, []
            except (OperatorExistsError, SchedulerExistsError) as e:
                return 409, {"error": _cut(str(e), _REASON)}, []
            except SchedulerNotFoundError as e:
                return 404, {"error": _cut(str(e), _REASON)}, []
            except Exception:
                # A bug: answered as JSON, the traceback only in the log.
                log.exception("%s %s failed", method, _cut(path.decode("latin-1")))
                return 500, {"error": "internal error (the PD logged it)"}, []
        if allowed:
            allow = ", ".join(sorted(allowed | ({"HEAD"} if "GET" in allowed else set())))
            what = "it is read-only" if allowed == {"GET"} else f"use {allow}"
            reason = f"method {method} is not allowed on this endpoint; {what}"
            return 405, {"error": reason}, [(b"allow", allow.encode())]
        return 404, {"error": f"no such endpoint: {_cut(path.decode('latin-1'))}"}, []

    def _check_token(self, method: str, authorization: bytes | None) -> str | None:
        """Why the request is refused for want of the admin token, or None."""
        if self._token is None or method in READ_METHODS:
            return None
        scheme, _, given = (authorization or b"").strip().partition(b" ")
        if scheme.lower() != b"bearer":  # the scheme's case does not matter (RFC 9110)
            return (
                f"{method} needs the admin token: send the header "
                "'Authorization: Bearer <token>' (shardkv ctl --token-file FILE)"
            )
        # Constant time: how much of a guess matched must not show in the
        # time the refusal takes.
        if not hmac.compare_digest(given.strip(), self._token):
            return "wrong admin token"
        return None

    # -- views -------------------------------------------------------------------

    def _health(self, req: _Request) -> JsonObject:
        c = self._cluster
        return {"health": True, "bootstrapped": c.is_bootstrapped, "cluster_id": c.cluster_id}

    def _cluster_info(self, req: _Request) -> JsonObject:
        c = self._cluster
        return {
            "cluster_id": c.cluster_id,
            "bootstrapped": c.is_bootstrapped,
            "store_count": len(c.stores()),
            "region_count": c.region_count,
            "max_replicas": c.config.max_replicas,
        }

    def _stores(self, req: _Request) -> JsonObject:
        now = self._clock()
        c = self._cluster
        stores = [
            store_json(s, now, c.store_leader_flow(s.id), c.store_replacement(s.id))
            for s in c.stores()
        ]
        return {"count": len(stores), "stores": stores}

    def _store(self, req: _Request) -> JsonObject:
        store_id = _parse_id(req.match["id"], "store")
        info = self._cluster.find_store(store_id)
        if info is None:
            raise HttpError(404, f"store {store_id} not found")
        c = self._cluster
        return store_json(
            info, self._clock(), c.store_leader_flow(store_id), c.store_replacement(store_id)
        )

    def _regions(self, req: _Request) -> JsonObject:
        now = self._clock()
        regions = [region_json(r, now) for r in self._cluster.regions()]
        return {"count": len(regions), "regions": regions}

    def _region_by_id(self, req: _Request) -> JsonObject:
        region_id = _parse_id(req.match["id"], "region")
        record = self._cluster.region_by_id(region_id)
        if record is None:
            raise HttpError(404, f"region {region_id} not found")
        return region_json(record, self._clock())

    def _region_by_key(self, req: _Request) -> JsonObject:
        key = unquote_to_bytes(req.match["key"])
        record = self._cluster.region_containing(key)
        if record is None:
            raise HttpError(404, f"no region contains key {key!r}")
        return region_json(record, self._clock())

    def _config(self, req: _Request) -> JsonObject:
        return dict(self._cluster.config.toml_values())

    def _metrics(self, req: _Request) -> Text:
        if self._metrics_source is None:
            raise HttpError(503, "this PD exports no metrics")
        return self._metrics_source()

    def _regions_on_store(self, req: _Request) -> JsonObject:
        store_id = _parse_id(req.match["id"], "store")
        if self._cluster.find_store(store_id) is None:
            raise HttpError(404, f"store {store_id} not found")
        now = self._clock()
        regions = [
            region_json(r, now)
            for r in self._cluster.regions()
            if r.region.peer_on_store(StoreId(store_id)) is not None
        ]
        return {"count": len(regions), "regions": regions}

    def _controller(self) -> OperatorController:
        return self._orders.controller()

    def _operators_view(self, req: _Request) -> JsonObject:
        controller = self._controller()
        now = self._clock()
        running = [operator_json(op, now) for op in controller.running()]
        history = [operator_json(op, now) for op in controller.history()]
        return {"count": len(running), "operators": running, "history": history}

    def _operator(self, req: _Request) -> JsonObject:
        region_id = _parse_id(req.match["id"], "region")
        op = self._controller().latest(region_id)
        if op is None:
            raise HttpError(404, f"no operator for region {region_id}")
        return operator_json(op, self._clock())

    # -- schedulers (the logic is `schedulers`') ------------------------------------

    def _scheduler_controller(self) -> SchedulerController:
        if self._schedulers is None:
            raise HttpError(503, "this PD runs without an operator controller")
        return self._schedulers

    def _schedulers_view(self, req: _Request) -> JsonObject:
        return schedulers_json(self._scheduler_controller(), self._clock())

    def _add_scheduler(self, req: _Request) -> JsonObject:
        controller = self._scheduler_controller()
        entry = add_from_json(controller, self._cluster, _json_body(req.body))
        return scheduler_json(entry, self._clock())

    def _pause(self, req: _Request) -> JsonObject:
        controller = self._scheduler_controller()
        name, now = _path_text(req.match["name"]), self._clock()
        return scheduler_json(pause_from_json(controller, name, _json_body(req.body), now), now)

    def _remove(self, req: _Request) -> JsonObject:
        controller = self._scheduler_controller()
        return scheduler_json(controller.remove(_path_text(req.match["name"])), self._clock())


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The value of the request header `name` (lower case), if sent."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None

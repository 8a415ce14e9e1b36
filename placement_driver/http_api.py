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

POST orders (answered once the order is taken, not once it is carried out):

    /regions/split        body {"region_id": N, "keys": [{"hex": "..."} or
                          {"text": "..."}, ...]}: start an operator splitting
                          the region at the keys (an empty list: by size);
                          answers the operator
    /store/{id}/state?state=Offline   set a store's state: Offline
                          (decommission: its peers get replaced, and it becomes
                          Tombstone once it holds no region), Up (take it back),
                          Tombstone (an Offline store holding no region);
                          answers the store

Schedulers (`schedulers`: documents and checks there):

    GET /schedulers       {"schedulers": [{"name", "paused_until" (seconds until
                          it resumes, null), "store_id" (null), "operators_created"}]}
    POST /schedulers      {"name": "balance-leader"} or {"name": "evict-leader",
                          "store_id": 4}: activate it; answers the scheduler
                          (409 if active, 404 for an unknown store)
    DELETE /schedulers/{name}          deactivate it (404 if not active)
    POST /schedulers/{name}            {"delay": seconds}: pause it that long,
                          0 resumes it

Keys appear as ``{"hex": "75736572", "text": "user"}``, `text` null when the
bytes are not UTF-8. An empty end key means +infinity. Errors are JSON
``{"error": "..."}``: 404 for unknown ids, keys outside every region and
unknown paths; 400 for malformed ids, bodies and arguments; 405 for other
methods (with an Allow header); 409 when the cluster's state refuses an order
(the region already has an operator, not bootstrapped, a Tombstone store, the
scheduler is already active); 413 for a body over 1 MiB; 503 for operator and
scheduler endpoints of a PD without an operator controller.

Keys are read from the ASGI `raw_path`: the decoded `path` is text, which
cannot hold arbitrary key bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, unquote_to_bytes

from kvproto.metapb import Peer, RegionEpoch, StoreState
from kvproto.pdpb import PdErrorCode, PeerStats
from placement_driver.cluster import Cluster
from placement_driver.errors import (
    OperatorExistsError,
    PdRequestError,
    SchedulerExistsError,
    SchedulerNotFoundError,
)
from placement_driver.operator_controller import OperatorController
from placement_driver.operators import (
    AddLearner,
    ChangePeers,
    Operator,
    PromoteLearner,
    RemovePeer,
    SplitRegion,
    Step,
    TransferLeader,
)
from placement_driver.regions import REPORTED_FIELDS, Flow, RegionRecord
from placement_driver.schedulers import (
    SchedulerController,
    add_from_json,
    pause_from_json,
    scheduler_json,
    schedulers_json,
)
from placement_driver.stores import StoreInfo
from plumbing.asgi import Receive, Scope, Send, lifespan

__all__ = [
    "API_PREFIX",
    "MAX_BODY",
    "AdminApi",
    "Text",
    "key_json",
    "operator_json",
    "region_json",
    "store_json",
]

log = logging.getLogger(__name__)

API_PREFIX: Final = "/pd/api/v1"
MAX_BODY: Final = 1 << 20

JsonObject = dict[str, Any]

STATE_NAMES: Final = {
    StoreState.UP: "Up",
    StoreState.DISCONNECTED: "Disconnected",
    StoreState.DOWN: "Down",
    StoreState.OFFLINE: "Offline",
    StoreState.TOMBSTONE: "Tombstone",
}


# PdRequestError codes -> HTTP status; any other code is 400.
_STATUS_OF_CODE: Final = {
    PdErrorCode.REGION_NOT_FOUND: 404,
    PdErrorCode.STORE_NOT_FOUND: 404,
    PdErrorCode.NOT_BOOTSTRAPPED: 409,
    PdErrorCode.STORE_TOMBSTONE: 409,
}


class HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def key_json(key: bytes) -> JsonObject:
    try:
        text: str | None = key.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"hex": key.hex(), "text": text}


def peer_json(peer: Peer) -> JsonObject:
    return {"id": peer.id, "store_id": peer.store_id, "role": peer.role.name.lower()}


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(now - then, 3)


def region_json(record: RegionRecord, now: float) -> JsonObject:
    """The region, then what its leader last reported under the names of
    the heartbeat's fields (`RegionStat`), its flow (per second, from the
    latest heartbeat that measured one), then the heartbeat's age."""
    region, stat = record.region, record.stat
    out: JsonObject = {
        "id": region.id,
        "start_key": key_json(region.start_key),
        "end_key": key_json(region.end_key),
        "epoch": epoch_json(region.epoch),
        "peers": [peer_json(p) for p in region.peers],
    }
    for name in REPORTED_FIELDS:
        out[name] = _reported_json(getattr(stat, name))
    out["flow"] = dataclasses.asdict(stat.flow)
    out["seconds_since_heartbeat"] = _age(now, stat.last_heartbeat)
    return out


def _reported_json(value: object) -> Any:
    """A value of a region heartbeat as JSON (numbers and None as they are)."""
    match value:
        case Peer():
            return peer_json(value)
        case PeerStats(peer=peer, down_seconds=down_seconds):
            return {"peer": peer_json(peer), "down_seconds": down_seconds}
        case tuple():
            return [_reported_json(v) for v in value]
        case _:
            return value


def epoch_json(epoch: RegionEpoch) -> JsonObject:
    return {"conf_ver": epoch.conf_ver, "version": epoch.version}


def step_json(step: Step) -> JsonObject:
    out: JsonObject = {"kind": step.kind, "description": step.describe()}
    match step:
        case AddLearner(peer) | PromoteLearner(peer) | RemovePeer(peer):
            out["peer"] = peer_json(peer)
        case TransferLeader(to):
            out["peer"] = peer_json(to)
        case ChangePeers(changes):
            out["changes"] = [
                {"type": c.change_type.name.lower(), "peer": peer_json(c.peer)} for c in changes
            ]
        case SplitRegion(keys=keys):
            out["keys"] = [key_json(k) for k in keys]
    return out


def operator_json(op: Operator, now: float) -> JsonObject:
    """`current_step` indexes `steps` (equal to their count once all are
    done); times are seconds on the PD's clock, relative to `now`."""
    end = now if op.finished_at is None else op.finished_at
    return {
        "region_id": op.region_id,
        "desc": op.desc,
        "kind": op.kind.value,
        "status": op.status.value,
        "steps": [step_json(s) for s in op.steps],
        "current_step": op.current,
        "origin_epoch": epoch_json(op.origin),
        "seconds_running": round(end - op.created_at, 3),
        "seconds_since_finished": _age(now, op.finished_at),
        "reason": op.reason or None,
    }


def store_json(info: StoreInfo, now: float, leader_flow: Flow) -> JsonObject:
    """The store, what its last heartbeat said (`stats`), and `leader_flow`:
    the sum of the flows of the regions led there (from region
    heartbeats)."""
    stats = None
    if info.stats is not None:
        stats = dataclasses.asdict(info.stats)
        del stats["store_id"]
    return {
        "id": info.id,
        "address": info.address,
        "state": STATE_NAMES[info.state],
        "labels": dict(info.meta.labels),
        "seconds_since_heartbeat": _age(now, info.last_heartbeat),
        "stats": stats,
        "leader_flow": dataclasses.asdict(leader_flow),
    }


@dataclass(frozen=True, slots=True)
class _Request:
    match: re.Match[bytes]
    query: dict[str, list[str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Text:
    """A view's answer that is not JSON (the metrics exposition)."""

    body: bytes
    content_type: str


_View = Callable[[_Request], JsonObject | Text]


class AdminApi:
    """The ASGI application. `clock` gives the shell's current time (the
    same clock as the heartbeat times held by `cluster`). `operators` is the
    PD's operator controller and `schedulers` its schedulers (None: their
    endpoints answer 503); `on_store_state_change` is called after a store
    state was set. `metrics` returns the Prometheus exposition and its
    content type (None: /metrics answers 503)."""

    def __init__(
        self,
        cluster: Cluster,
        clock: Callable[[], float],
        *,
        operators: OperatorController | None = None,
        schedulers: SchedulerController | None = None,
        on_store_state_change: Callable[[], None] | None = None,
        metrics: Callable[[], Text] | None = None,
    ) -> None:
        self._cluster = cluster
        self._clock = clock
        self._operators = operators
        self._schedulers = schedulers
        self._on_store_state_change = on_store_state_change
        self._metrics_source = metrics
        p = re.escape(API_PREFIX.encode())

        def route(pattern: bytes, **views: _View) -> tuple[re.Pattern[bytes], dict[str, _View]]:
            return re.compile(p + pattern, re.DOTALL), views

        self._routes: list[tuple[re.Pattern[bytes], dict[str, _View]]] = [
            (re.compile(rb"/metrics/?"), {"GET": self._metrics}),  # at the root: Prometheus
            route(rb"/health/?", GET=self._health),
            route(rb"/cluster/?", GET=self._cluster_info),
            route(rb"/stores/?", GET=self._stores),
            route(rb"/store/(?P<id>[^/]*)/?", GET=self._store),
            route(rb"/store/(?P<id>[^/]*)/state/?", POST=self._set_store_state),
            route(rb"/regions/?", GET=self._regions),
            route(rb"/regions/split/?", POST=self._split_region),
            route(rb"/region/id/(?P<id>[^/]*)/?", GET=self._region_by_id),
            route(rb"/region/key/(?P<key>.*)", GET=self._region_by_key),
            route(rb"/config/?", GET=self._config),
            route(rb"/operators/?", GET=self._operators_view),
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
            if too_large:
                status, document, allow = 413, {"error": f"body over {MAX_BODY} bytes"}, None
            else:
                status, document, allow = self._respond(method, raw_path, query, body)
            if isinstance(document, Text):
                data, content_type = document.body, document.content_type.encode()
            else:
                data = json.dumps(document, indent=None, separators=(",", ":")).encode() + b"\n"
                content_type = b"application/json"
            headers = [
                (b"content-type", content_type),
                (b"content-length", str(len(data)).encode()),
            ]
            if allow is not None:
                headers.append((b"allow", allow.encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})

    def respond(
        self, method: str, raw_path: bytes, body: bytes = b"", query: bytes = b""
    ) -> tuple[int, Any]:
        """The status and JSON document (`Text` for /metrics) for a request
        (`raw_path` may carry the query after "?")."""
        status, document, _ = self._respond(method, raw_path, query, body)
        return status, document

    def _respond(
        self, method: str, raw_path: bytes, query: bytes, body: bytes
    ) -> tuple[int, Any, str | None]:
        path, _, in_path = raw_path.partition(b"?")
        query = query or in_path
        for pattern, views in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            view = views.get("GET" if method == "HEAD" else method)
            if view is None:
                allow = ", ".join(sorted([*views, "HEAD"] if "GET" in views else views))
                what = "it is read-only" if list(views) == ["GET"] else f"use {allow}"
                reason = f"method {method} is not allowed on this endpoint; {what}"
                return 405, {"error": reason}, allow
            request = _Request(match, parse_qs(query.decode("latin-1")), body)
            try:
                return 200, view(request), None
            except HttpError as e:
                return e.status, {"error": e.reason}, None
            except PdRequestError as e:
                return _STATUS_OF_CODE.get(e.code, 400), {"error": e.message}, None
            except (OperatorExistsError, SchedulerExistsError) as e:
                return 409, {"error": str(e)}, None
            except SchedulerNotFoundError as e:
                return 404, {"error": str(e)}, None
        return 404, {"error": f"no such endpoint: {path.decode('latin-1')}"}, None

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
        stores = [store_json(s, now, c.store_leader_flow(s.id)) for s in c.stores()]
        return {"count": len(stores), "stores": stores}

    def _store(self, req: _Request) -> JsonObject:
        store_id = _parse_id(req.match["id"], "store")
        info = self._cluster.find_store(store_id)
        if info is None:
            raise HttpError(404, f"store {store_id} not found")
        return store_json(info, self._clock(), self._cluster.store_leader_flow(store_id))

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

    def _controller(self) -> OperatorController:
        if self._operators is None:
            raise HttpError(503, "this PD runs without an operator controller")
        return self._operators

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

    # -- orders ----------------------------------------------------------------------

    def _split_region(self, req: _Request) -> JsonObject:
        controller = self._controller()
        body = _json_body(req.body)
        region_id = body.get("region_id")
        if isinstance(region_id, bool) or not isinstance(region_id, int) or region_id <= 0:
            raise HttpError(400, f"region_id must be a positive integer, got {region_id!r}")
        raw_keys = body.get("keys", [])
        if not isinstance(raw_keys, list):
            raise HttpError(400, 'keys must be a list of {"hex": ...} or {"text": ...}')
        keys = tuple(_parse_key(k) for k in raw_keys)
        now = self._clock()
        return operator_json(controller.split_region(self._cluster, region_id, keys, now), now)

    def _set_store_state(self, req: _Request) -> JsonObject:
        store_id = _parse_id(req.match["id"], "store")
        values = req.query.get("state", [])
        if len(values) != 1:
            raise HttpError(400, "give the new state once: ?state=Up|Offline|Tombstone")
        state = _SETTABLE_STATES.get(values[0].lower())
        if state is None:
            raise HttpError(
                400, f"cannot set state {values[0]!r}: settable states are Up, Offline, Tombstone"
            )
        now = self._clock()
        info = self._cluster.set_store_state(store_id, state, now)
        if self._on_store_state_change is not None:
            self._on_store_state_change()
        return store_json(info, now, self._cluster.store_leader_flow(store_id))


_SETTABLE_STATES: Final = {
    "up": StoreState.UP,
    "offline": StoreState.OFFLINE,
    "tombstone": StoreState.TOMBSTONE,
}


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HttpError(400, f"the body is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise HttpError(400, "the body must be a JSON object")
    return document


def _parse_key(raw: object) -> bytes:
    """A key given as {"hex": "..."} or {"text": "..."} (exactly one)."""
    if not isinstance(raw, dict) or len(raw.keys() & {"hex", "text"}) != 1:
        raise HttpError(400, f'a key is {{"hex": ...}} or {{"text": ...}}, got {raw!r}')
    if "hex" in raw:
        value = raw["hex"]
        if isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                pass
        raise HttpError(400, f"bad hex key {value!r}")
    text = raw["text"]
    if not isinstance(text, str):
        raise HttpError(400, f"bad text key {text!r}")
    return text.encode()


def _path_text(raw: bytes) -> str:
    return unquote_to_bytes(raw).decode("latin-1")


def _parse_id(raw: bytes, what: str) -> int:
    text = _path_text(raw)
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise HttpError(400, f"bad {what} id {text!r}: expected a positive integer")
    return int(text)

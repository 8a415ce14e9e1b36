"""The PD's admin HTTP API (JSON, read-only for now): a small ASGI app.

Served by hypercorn's trio worker (see `server.py`); this module only maps
a method and a raw path to a status and a JSON document, so the routing and
the views are testable without a socket.

Endpoints (all GET, under /pd/api/v1):

    /health               {"health": true, "bootstrapped": ..., "cluster_id": ...}
    /cluster              cluster id, bootstrap state, store and region counts
    /stores               {"count": n, "stores": [store, ...]} in id order
    /store/{id}           one store
    /regions              {"count": n, "regions": [region, ...]} in key order
    /region/id/{id}       one region
    /region/key/{key}     the region containing the URL-escaped key bytes
                          (e.g. /region/key/user%00%ff)
    /config               the cluster config, values as in pd.toml

Keys appear as ``{"hex": "75736572", "text": "user"}``, `text` null when the
bytes are not UTF-8. An empty end key means +infinity. Errors are JSON
``{"error": "..."}``: 404 for unknown ids, keys outside every region and
unknown paths; 400 for malformed ids; 405 for other methods.

Keys are read from the ASGI `raw_path`: the decoded `path` is text, which
cannot hold arbitrary key bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from kvproto.metapb import Peer, StoreState
from placement_driver.cluster import Cluster, RegionRecord
from placement_driver.stores import StoreInfo

__all__ = ["API_PREFIX", "AdminApi", "key_json", "region_json", "store_json"]

log = logging.getLogger(__name__)

API_PREFIX: Final = "/pd/api/v1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JsonObject = dict[str, Any]

STATE_NAMES: Final = {
    StoreState.UP: "Up",
    StoreState.DISCONNECTED: "Disconnected",
    StoreState.DOWN: "Down",
    StoreState.OFFLINE: "Offline",
    StoreState.TOMBSTONE: "Tombstone",
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
    region, stat = record.region, record.stat
    return {
        "id": region.id,
        "start_key": key_json(region.start_key),
        "end_key": key_json(region.end_key),
        "epoch": {"conf_ver": region.epoch.conf_ver, "version": region.epoch.version},
        "peers": [peer_json(p) for p in region.peers],
        "leader": None if stat.leader is None else peer_json(stat.leader),
        "term": stat.term,
        "approximate_size": stat.approximate_size,
        "approximate_keys": stat.approximate_keys,
        "down_peers": [
            {"peer": peer_json(d.peer), "down_seconds": d.down_seconds} for d in stat.down_peers
        ],
        "pending_peers": [peer_json(p) for p in stat.pending_peers],
        "written_bytes": stat.written_bytes,
        "written_keys": stat.written_keys,
        "seconds_since_heartbeat": _age(now, stat.last_heartbeat),
    }


def store_json(info: StoreInfo, now: float) -> JsonObject:
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
    }


class AdminApi:
    """The ASGI application. `clock` gives the shell's current time (the
    same clock as the heartbeat times held by `cluster`)."""

    def __init__(self, cluster: Cluster, clock: Callable[[], float]) -> None:
        self._cluster = cluster
        self._clock = clock
        p = re.escape(API_PREFIX.encode())
        self._routes: list[tuple[re.Pattern[bytes], Callable[[re.Match[bytes]], JsonObject]]] = [
            (re.compile(p + rb"/health/?"), self._health),
            (re.compile(p + rb"/cluster/?"), self._cluster_info),
            (re.compile(p + rb"/stores/?"), self._stores),
            (re.compile(p + rb"/store/(?P<id>[^/]*)/?"), self._store),
            (re.compile(p + rb"/regions/?"), self._regions),
            (re.compile(p + rb"/region/id/(?P<id>[^/]*)/?"), self._region_by_id),
            (re.compile(p + rb"/region/key/(?P<key>.*)", re.DOTALL), self._region_by_key),
            (re.compile(p + rb"/config/?"), self._config),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            status, document = self.respond(scope["method"], raw_path)
            body = json.dumps(document, indent=None, separators=(",", ":")).encode() + b"\n"
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            if status == 405:
                headers.append((b"allow", b"GET, HEAD"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send(
                {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
            )
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})

    def respond(self, method: str, raw_path: bytes) -> tuple[int, Any]:
        """The status and JSON document for a request."""
        path = raw_path.split(b"?", 1)[0]
        for pattern, view in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method not in ("GET", "HEAD"):
                return 405, {"error": f"method {method} is not allowed; the admin API is read-only"}
            try:
                return 200, view(match)
            except HttpError as e:
                return e.status, {"error": e.reason}
        return 404, {"error": f"no such endpoint: {path.decode('latin-1')}"}

    # -- views -------------------------------------------------------------------

    def _health(self, match: re.Match[bytes]) -> JsonObject:
        c = self._cluster
        return {"health": True, "bootstrapped": c.is_bootstrapped, "cluster_id": c.cluster_id}

    def _cluster_info(self, match: re.Match[bytes]) -> JsonObject:
        c = self._cluster
        return {
            "cluster_id": c.cluster_id,
            "bootstrapped": c.is_bootstrapped,
            "store_count": len(c.stores()),
            "region_count": c.region_count,
            "max_replicas": c.config.max_replicas,
        }

    def _stores(self, match: re.Match[bytes]) -> JsonObject:
        now = self._clock()
        stores = [store_json(s, now) for s in self._cluster.stores()]
        return {"count": len(stores), "stores": stores}

    def _store(self, match: re.Match[bytes]) -> JsonObject:
        store_id = _parse_id(match["id"], "store")
        info = self._cluster.find_store(store_id)
        if info is None:
            raise HttpError(404, f"store {store_id} not found")
        return store_json(info, self._clock())

    def _regions(self, match: re.Match[bytes]) -> JsonObject:
        now = self._clock()
        regions = [region_json(r, now) for r in self._cluster.regions()]
        return {"count": len(regions), "regions": regions}

    def _region_by_id(self, match: re.Match[bytes]) -> JsonObject:
        region_id = _parse_id(match["id"], "region")
        record = self._cluster.region_by_id(region_id)
        if record is None:
            raise HttpError(404, f"region {region_id} not found")
        return region_json(record, self._clock())

    def _region_by_key(self, match: re.Match[bytes]) -> JsonObject:
        key = unquote_to_bytes(match["key"])
        record = self._cluster.region_containing(key)
        if record is None:
            raise HttpError(404, f"no region contains key {key!r}")
        return region_json(record, self._clock())

    def _config(self, match: re.Match[bytes]) -> JsonObject:
        return dict(self._cluster.config.toml_values())


def _parse_id(raw: bytes, what: str) -> int:
    text = unquote_to_bytes(raw).decode("latin-1")
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise HttpError(400, f"bad {what} id {text!r}: expected a positive integer")
    return int(text)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

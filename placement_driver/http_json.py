"""The JSON side of the PD's admin HTTP API: the documents it answers
(regions, stores, operators, keys) and the parsing of what requests carry
(ids in paths, JSON bodies, keys), shared by the read views (`http_api`)
and the orders (`http_admin`). Pure: no I/O.

Keys appear as ``{"hex": "75736572", "text": "user"}``, `text` null when
the bytes are not UTF-8, and are given the same way, with one of the two.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from kvproto.metapb import Peer, RegionEpoch, StoreState
from kvproto.pdpb import PeerStats
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
from placement_driver.stores import StoreInfo

__all__ = [
    "STATE_NAMES",
    "HttpError",
    "JsonObject",
    "Request",
    "Text",
    "View",
    "cut",
    "epoch_json",
    "json_body",
    "key_json",
    "operator_json",
    "parse_id",
    "parse_key",
    "path_text",
    "peer_json",
    "positive_int",
    "region_json",
    "short",
    "step_json",
    "store_json",
]

JsonObject = dict[str, Any]

# Ids (stores, regions) are 64-bit unsigned on the wire.
MAX_ID: Final = 2**64 - 1
_ID_DIGITS: Final = len(str(MAX_ID))

STATE_NAMES: Final = {
    StoreState.UP: "Up",
    StoreState.DISCONNECTED: "Disconnected",
    StoreState.DOWN: "Down",
    StoreState.OFFLINE: "Offline",
    StoreState.TOMBSTONE: "Tombstone",
}


class HttpError(Exception):
    """A refusal with its HTTP status and the reason shown to the caller."""

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


def store_json(
    info: StoreInfo,
    now: float,
    leader_flow: Flow,
    replacement: tuple[int | None, int | None] = (None, None),
) -> JsonObject:
    """The store, what its last heartbeat said (`stats`), `leader_flow`:
    the sum of the flows of the regions led there (from region
    heartbeats), and `replacement`: the store it replaced and the store
    that replaced it (`Cluster.store_replacement`)."""
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
        "replaces": replacement[0],
        "replaced_by": replacement[1],
    }


@dataclass(frozen=True, slots=True)
class Request:
    """What a view gets: its route's match on the raw path, the query and
    the body."""

    match: re.Match[bytes]
    query: dict[str, list[str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Text:
    """A view's answer that is not JSON (the metrics exposition)."""

    body: bytes
    content_type: str


# A view answers a JSON document (or Text), or raises HttpError or
# PdRequestError.
View = Callable[[Request], JsonObject | Text]


def json_body(body: bytes) -> dict[str, Any]:
    """The JSON object a request body holds; HttpError 400 for anything
    else, however hostile (not UTF-8, nested deeper than the parser's
    recursion limit, a number of more than 4,300 digits)."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise HttpError(400, "the body is not JSON: nested too deep") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise HttpError(400, f"the body is not JSON: {cut(str(e))}") from None
    if not isinstance(document, dict):
        raise HttpError(400, "the body must be a JSON object")
    return document


def short(value: object, limit: int = 80) -> str:
    """The repr of `value` cut to about `limit` characters, for refusals:
    they name what was wrong without echoing a large input."""
    return cut(_repr(value), limit)


def cut(text: str, limit: int = 80) -> str:
    """`text` cut to about `limit` characters."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}...({len(text)} characters)"


def _repr(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        # repr() is quadratic in the digits, and refused past 4,300.
        return f"an integer of {value.bit_length()} bits"
    try:
        return repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def parse_key(raw: object) -> bytes:
    """A key given as {"hex": "..."} or {"text": "..."} (exactly one)."""
    if not isinstance(raw, dict) or len(raw.keys() & {"hex", "text"}) != 1:
        raise HttpError(400, f'a key is {{"hex": ...}} or {{"text": ...}}, got {short(raw)}')
    if "hex" in raw:
        value = raw["hex"]
        if isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                pass
        raise HttpError(400, f"bad hex key {short(value)}")
    text = raw["text"]
    if not isinstance(text, str):
        raise HttpError(400, f"bad text key {short(text)}")
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON)
        raise HttpError(400, f"bad text key {short(text)}: not valid Unicode") from None


def path_text(raw: bytes) -> str:
    """A part of the raw path, unescaped."""
    return unquote_to_bytes(raw).decode("latin-1")


def parse_id(raw: bytes, what: str) -> int:
    """A store or region id in a path or query: 1 to 2**64 - 1, in decimal."""
    text = path_text(raw)
    # The length first: int() of thousands of digits is slow, and refused
    # past 4,300 (a ValueError that was a 500).
    if (
        not 0 < len(text) <= _ID_DIGITS
        or not text.isascii()
        or not text.isdigit()
        or not 0 < int(text) <= MAX_ID
    ):
        raise HttpError(400, f"bad {what} id {short(text)}: expected a positive integer below 2^64")
    return int(text)


def positive_int(body: dict[str, Any], name: str) -> int:
    """The field `name` of a JSON body: an id, 1 to 2**64 - 1 (beyond, it
    could reach the wire, whose ints are 64-bit)."""
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise HttpError(400, f"{name} must be a positive integer below 2^64, got {short(value)}")
    return value

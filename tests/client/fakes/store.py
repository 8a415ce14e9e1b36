"""A fake store: a real `kvproto.rpc.RpcServer` that answers like the real
store does (`StoreCore.check_context`, the KV service's checks):
StoreNotMatch, RegionNotFound, NotLeader with the leader as hint,
EpochNotMatch on a version mismatch, KeyNotInRegion; then it executes the
request on the cluster's one shared SortedDict. Follower and stale reads
are served by any store with a peer of the region (the one the request
names); a stale read answers the store's `staleness_ms` if the request
accepts it (else 0, as a follower read). Its `script` injects answers ahead
of that: a region error, a KvError, holding the request forever (a
timeout), or cutting the connection before or after applying it (an
unknown outcome)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from kvproto import kvrpcpb as kv
from kvproto.errorpb import (
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    RegionError,
    RegionNotFound,
    StoreNotMatch,
)
from kvproto.metapb import Region, StoreId
from kvproto.rpc import RequestContext, RpcServer
from tests.client.fakes.cluster import FakeCluster, Seen
from tests.client.fakes.net import MemoryNet

MAX_KEY_SIZE = 64


# --------------------------------------------------------------------------
# Scripted answers.


@dataclass(slots=True)
class Hold:
    """Never answer (the client times out)."""


@dataclass(slots=True)
class Cut:
    """Cut the connection instead of answering, after applying the request
    if `apply` (the client cannot tell which)."""

    apply: bool = False


Action = RegionError | kv.KvError | Hold | Cut


@dataclass(slots=True)
class Rule:
    match: Callable[[Any], bool]
    action: Action
    times: int = 1


def on(request_type: type | tuple[type, ...], key: bytes | None = None) -> Callable[[Any], bool]:
    """A matcher: requests of that type (touching `key`, if given)."""

    def match(req: Any) -> bool:
        if not isinstance(req, request_type):
            return False
        return key is None or key in _keys_of(req) or _range_has(req, key)

    return match


def _keys_of(req: Any) -> list[bytes]:
    if hasattr(req, "key"):
        return [req.key]
    if hasattr(req, "keys"):
        return list(req.keys)
    if hasattr(req, "pairs"):
        return [k for k, _ in req.pairs]
    return []


def _range_has(req: Any, key: bytes) -> bool:
    if not hasattr(req, "start_key"):
        return False
    return req.start_key <= key and (not req.end_key or key < req.end_key)


# --------------------------------------------------------------------------
# The store.


_ANSWERS: dict[type, type] = {
    kv.RawGetRequest: kv.RawGetResponse,
    kv.RawBatchGetRequest: kv.RawBatchGetResponse,
    kv.RawScanRequest: kv.RawScanResponse,
    kv.RawPutRequest: kv.RawWriteResponse,
    kv.RawBatchPutRequest: kv.RawWriteResponse,
    kv.RawDeleteRequest: kv.RawWriteResponse,
    kv.RawBatchDeleteRequest: kv.RawWriteResponse,
    kv.RawDeleteRangeRequest: kv.RawWriteResponse,
    kv.RawCompareAndSetRequest: kv.RawCompareAndSetResponse,
}


class FakeStore:
    def __init__(self, store_id: int, cluster: FakeCluster, net: MemoryNet | None = None):
        self.store_id = store_id
        self.cluster = cluster
        self.net = net
        self.script: list[Rule] = []
        # Seconds each request takes (virtual time under the autojump clock).
        self.latency = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        # How stale this store's applied state is, for stale reads.
        self.staleness_ms = 0

    @property
    def address(self) -> str:
        return self.cluster.addresses[self.store_id]

    def add_rule(self, match: Callable[[Any], bool], action: Action, times: int = 1) -> FakeStore:
        self.script.append(Rule(match, action, times))
        return self

    def server(self) -> RpcServer:
        return RpcServer(dict.fromkeys(_ANSWERS, self.handle))

    async def handle(self, req: Any, ctx: RequestContext) -> object:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await trio.sleep(self.latency)
            return await self._handle(req)
        finally:
            self.in_flight -= 1

    async def _handle(self, req: Any) -> object:
        answer = _ANSWERS[type(req)]
        kind = type(req).__name__.removeprefix("Raw").removesuffix("Request")
        keys = tuple(_keys_of(req))
        rng = (req.start_key, req.end_key) if hasattr(req, "start_key") else None

        consistency = kv.Consistency(getattr(req, "consistency", kv.Consistency.STRONG))

        def record(what: str) -> None:
            self.cluster.seen.append(
                Seen(self.store_id, kind, req.context.region_id, keys, rng, what, consistency)
            )

        for rule in self.script:
            if rule.times > 0 and rule.match(req):
                rule.times -= 1
                action = rule.action
                record(type(action).__name__)
                if isinstance(action, Hold):
                    await trio.sleep_forever()
                if isinstance(action, Cut):
                    if action.apply and self._check(req) is None and self._validate(req) is None:
                        self._execute(req)
                    assert self.net is not None, "Cut needs the memory network"
                    self.net.cut(self.address)
                    await trio.sleep_forever()
                if isinstance(action, kv.KvError):
                    return answer(error=action)
                return answer(region_error=action)
        bad = self._validate(req)
        if bad is not None:
            record("KvError")
            return answer(error=bad)
        err = self._check(req)
        if err is not None:
            record(type(err).__name__)
            return answer(region_error=err)
        record("ok")
        resp: Any = self._execute(req)
        if consistency == kv.Consistency.STALE and self.staleness_ms <= req.max_staleness_ms:
            resp = dataclasses.replace(resp, staleness_ms=self.staleness_ms)
        return resp

    def _validate(self, req: Any) -> kv.KvError | None:
        for k in _keys_of(req):
            if not k:
                return kv.KvError(kv.KvErrorCode.INVALID_ARGUMENT, "empty key")
            if len(k) > MAX_KEY_SIZE:
                return kv.KvError(kv.KvErrorCode.KEY_TOO_LARGE, f"key of {len(k)} bytes")
        if hasattr(req, "start_key") and max(len(req.start_key), len(req.end_key)) > MAX_KEY_SIZE:
            return kv.KvError(kv.KvErrorCode.KEY_TOO_LARGE, "range bound too large")
        if hasattr(req, "start_key") and req.end_key and req.end_key <= req.start_key:
            return kv.KvError(kv.KvErrorCode.INVALID_ARGUMENT, "end key must be above start key")
        return None

    def _check(self, req: Any) -> RegionError | None:
        c = self.cluster
        ctx: kv.Context = req.context
        if ctx.peer.store_id != self.store_id:
            return StoreNotMatch(ctx.peer.store_id, StoreId(self.store_id))
        region = c.regions.get(ctx.region_id)
        if region is None or region.peer_on_store(StoreId(self.store_id)) is None:
            return RegionNotFound(ctx.region_id)
        leader = c.leaders.get(region.id)
        if getattr(req, "consistency", kv.Consistency.STRONG) != kv.Consistency.STRONG:
            mine = region.peer_on_store(StoreId(self.store_id))
            if mine is None or mine.id != ctx.peer.id:
                return RegionNotFound(ctx.region_id)
        elif leader is None or leader.store_id != self.store_id:
            return NotLeader(region.id, leader)
        if ctx.region_epoch.version != region.epoch.version:
            if c.epoch_error_with_siblings:
                return EpochNotMatch(self._siblings(region))
            return EpochNotMatch((region,))
        for k in _keys_of(req):
            if not region.contains(k):
                return KeyNotInRegion(k, region.id, region.start_key, region.end_key)
        if hasattr(req, "start_key"):
            lo, hi = req.start_key, req.end_key
            inside = lo >= region.start_key and (
                not region.end_key or (bool(hi) and hi <= region.end_key)
            )
            if not inside:
                if isinstance(req, kv.RawScanRequest):
                    return EpochNotMatch((region,))
                return KeyNotInRegion(lo, region.id, region.start_key, region.end_key)
        return None

    def _siblings(self, region: Region) -> tuple[Region, ...]:
        return tuple(
            sorted(
                (
                    r
                    for r in self.cluster.regions.values()
                    if r.epoch.version == region.epoch.version
                ),
                key=lambda r: r.start_key,
            )
        )

    def _execute(self, req: Any) -> object:
        """Run the request; a write of a session runs once per number (a
        retry gets the first answer), as on a real store."""
        session = getattr(req, "session", None)
        if session is None:
            return self._run(req)
        key = (req.context.region_id, session.session_id, session.seq)
        answers = self.cluster.session_answers
        if key not in answers:
            answers[key] = self._run(req)
        return answers[key]

    def _run(self, req: Any) -> object:
        data = self.cluster.data
        if isinstance(req, kv.RawGetRequest):
            return kv.RawGetResponse(value=data.get(req.key))
        bound = self.cluster.max_read_bytes
        if isinstance(req, kv.RawBatchGetRequest):
            pairs: list[tuple[bytes, bytes]] = []
            nbytes = 0
            for i, k in enumerate(req.keys):
                if bound is not None and nbytes >= bound:
                    return kv.RawBatchGetResponse(pairs=tuple(pairs), unread=len(req.keys) - i)
                if k in data:
                    pairs.append((k, data[k]))
                    nbytes += len(k) + len(data[k])
            return kv.RawBatchGetResponse(pairs=tuple(pairs))
        if isinstance(req, kv.RawScanRequest):
            lo, hi = req.start_key, req.end_key
            ks = list(data.irange(lo, hi or None, inclusive=(True, False), reverse=req.reverse))
            ks = ks[: min(req.limit, 10_000)]
            found = [(k, b"" if req.keys_only else data[k]) for k in ks]
            nbytes = 0
            for i, (k, v) in enumerate(found):
                nbytes += len(k) + len(v)
                if bound is not None and nbytes >= bound and i + 1 < len(found):
                    return kv.RawScanResponse(pairs=tuple(found[: i + 1]), more=True)
            return kv.RawScanResponse(pairs=tuple(found))
        if isinstance(req, kv.RawPutRequest):
            data[req.key] = req.value
        elif isinstance(req, kv.RawBatchPutRequest):
            data.update(req.pairs)
        elif isinstance(req, kv.RawDeleteRequest):
            data.pop(req.key, None)
        elif isinstance(req, kv.RawBatchDeleteRequest):
            for k in req.keys:
                data.pop(k, None)
        elif isinstance(req, kv.RawDeleteRangeRequest):
            for k in list(data.irange(req.start_key, req.end_key or None, inclusive=(True, False))):
                del data[k]
        elif isinstance(req, kv.RawCompareAndSetRequest):
            previous = data.get(req.key)
            if previous != req.expected:
                return kv.RawCompareAndSetResponse(succeeded=False, previous=previous)
            if req.new_value is None:
                data.pop(req.key, None)
            else:
                data[req.key] = req.new_value
            return kv.RawCompareAndSetResponse(succeeded=True, previous=previous)
        else:
            raise AssertionError(req)
        return kv.RawWriteResponse()

"""A fake cluster for client tests: a fake PD and fake stores, each a real
`kvproto.rpc.RpcServer`, with scripted answers.

`FakeCluster` holds the truth (regions, leaders, data) and answers like
the real store does (`StoreCore.check_context`, the KV service's checks):
StoreNotMatch, RegionNotFound, NotLeader with the leader as hint,
EpochNotMatch on a version mismatch, KeyNotInRegion; then it executes the
request on one shared SortedDict. A store's `script` injects answers ahead
of that: a region error, a KvError, holding the request forever (a
timeout), or cutting the connection before or after applying it (an
unknown outcome).

The PD answers from the truth, or from a frozen copy of it (`freeze_pd`:
a PD that lags behind the stores).

Transports: `MemoryNet` connects through in-memory streams (tests run
under the autojump clock: nothing waits for real time); `serve_tcp` puts
the same servers on loopback ports (for the blocking client and the CLI).
"""

from __future__ import annotations

import dataclasses
import errno
import random
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from sortedcontainers import SortedDict

from client.rawkv import Client, ClientConfig, open_client
from kvproto import kvrpcpb as kv
from kvproto import pdpb
from kvproto.errorpb import (
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    RegionError,
    RegionNotFound,
    StoreNotMatch,
)
from kvproto.metapb import (
    Peer,
    PeerId,
    Region,
    RegionEpoch,
    RegionId,
    Store,
    StoreId,
    ranges_overlap,
)
from kvproto.pd_client import PdClient
from kvproto.rpc import RequestContext, RpcServer
from plumbing.nursery import open_background_nursery

MAX_KEY_SIZE = 64
PD_ADDRESS = "pd:2379"


def store_address(store_id: int) -> str:
    return f"store{store_id}:20160"


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
# The cluster's truth.


@dataclass(slots=True)
class Seen:
    """One request as a store received it."""

    store_id: int
    kind: str
    region_id: int
    keys: tuple[bytes, ...]
    range: tuple[bytes, bytes] | None
    answer: str


@dataclass
class FakeCluster:
    store_ids: list[int]
    regions: dict[int, Region] = field(default_factory=dict)
    leaders: dict[int, Peer | None] = field(default_factory=dict)
    addresses: dict[int, str] = field(default_factory=dict)
    data: SortedDict[bytes, bytes] = field(default_factory=SortedDict)
    # What the PD serves when frozen (None: the truth).
    pd_view: tuple[dict[int, Region], dict[int, Peer | None]] | None = None
    seen: list[Seen] = field(default_factory=list)
    pd_calls: Counter[str] = field(default_factory=Counter)
    # Stores answer EpochNotMatch with every region overlapping the request's
    # old range (like TiKV after a split), not just the region asked.
    epoch_error_with_siblings: bool = False
    next_id: int = 100
    # Answers of session writes, by (region id, session id, number); a split
    # copies the region's to the new one.
    session_answers: dict[tuple[int, bytes, int], object] = field(default_factory=dict)

    @classmethod
    def build(
        cls, store_ids: list[int] | None = None, split_keys: Sequence[bytes] = ()
    ) -> FakeCluster:
        c = cls(store_ids or [1, 2, 3])
        c.addresses = {s: store_address(s) for s in c.store_ids}
        first = Region(
            RegionId(1),
            b"",
            b"",
            RegionEpoch(1, 1),
            tuple(Peer(PeerId(10 + s), StoreId(s)) for s in c.store_ids),
        )
        c.regions[1] = first
        c.leaders[1] = first.peers[0]
        for k in split_keys:
            c.split_at(k)
        return c

    # -- changes ----------------------------------------------------------

    def region_of(self, key: bytes) -> Region:
        for r in self.regions.values():
            if r.contains(key):
                return r
        raise AssertionError(f"no region holds {key!r}")

    def split_at(self, key: bytes) -> tuple[Region, Region]:
        """Split the region holding `key` at it: the left part keeps the id,
        both get version + 1, the right one's leader is on the left's
        leader's store."""
        old = self.region_of(key)
        assert old.start_key != key, "already a boundary"
        new_id = self.next_id
        self.next_id += 1
        epoch = RegionEpoch(old.epoch.conf_ver, old.epoch.version + 1)
        left = dataclasses.replace(old, end_key=key, epoch=epoch)
        right = Region(
            RegionId(new_id),
            key,
            old.end_key,
            epoch,
            tuple(Peer(PeerId(new_id * 10 + p.store_id), p.store_id) for p in old.peers),
        )
        self.regions[old.id] = left
        self.regions[new_id] = right
        for (rid, sid, seq), answer in list(self.session_answers.items()):
            if rid == old.id:
                self.session_answers[(new_id, sid, seq)] = answer
        leader = self.leaders.get(old.id)
        self.leaders[new_id] = None if leader is None else right.peer_on_store(leader.store_id)
        return left, right

    def move_leader(self, region_id: int, store_id: int | None) -> None:
        r = self.regions[region_id]
        self.leaders[region_id] = None if store_id is None else r.peer_on_store(StoreId(store_id))

    def set_peers(self, region_id: int, store_ids: list[int]) -> Region:
        """A membership change: conf_ver + 1, fresh peer ids for new stores."""
        r = self.regions[region_id]
        peers = tuple(
            r.peer_on_store(StoreId(s)) or Peer(PeerId(self._fresh_peer_id()), StoreId(s))
            for s in store_ids
        )
        r2 = dataclasses.replace(
            r, peers=peers, epoch=RegionEpoch(r.epoch.conf_ver + 1, r.epoch.version)
        )
        self.regions[region_id] = r2
        leader = self.leaders.get(region_id)
        if leader is not None and r2.find_peer(leader.id) is None:
            self.leaders[region_id] = peers[0]
        return r2

    def _fresh_peer_id(self) -> int:
        self.next_id += 1
        return self.next_id * 10

    def freeze_pd(self) -> None:
        """From now on the PD answers with what it knows now."""
        self.pd_view = (dict(self.regions), dict(self.leaders))

    def thaw_pd(self) -> None:
        self.pd_view = None

    def kinds_seen(self, store_id: int | None = None) -> list[str]:
        return [s.kind for s in self.seen if store_id is None or s.store_id == store_id]


# --------------------------------------------------------------------------
# The fake servers.


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

        def record(what: str) -> None:
            self.cluster.seen.append(
                Seen(self.store_id, kind, req.context.region_id, keys, rng, what)
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
        return self._execute(req)

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
        if leader is None or leader.store_id != self.store_id:
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
        if isinstance(req, kv.RawBatchGetRequest):
            return kv.RawBatchGetResponse(pairs=tuple((k, data[k]) for k in req.keys if k in data))
        if isinstance(req, kv.RawScanRequest):
            lo, hi = req.start_key, req.end_key
            ks = list(data.irange(lo, hi or None, inclusive=(True, False), reverse=req.reverse))
            ks = ks[: min(req.limit, 10_000)]
            return kv.RawScanResponse(
                pairs=tuple((k, b"" if req.keys_only else data[k]) for k in ks)
            )
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


class FakePd:
    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster
        self.unknown_stores: set[int] = set()
        # Errors the next calls answer with, in order.
        self.errors: list[pdpb.PdError] = []

    def _view(self) -> tuple[dict[int, Region], dict[int, Peer | None]]:
        c = self.cluster
        return c.pd_view if c.pd_view is not None else (c.regions, c.leaders)

    def _header(self) -> pdpb.ResponseHeader:
        error = self.errors.pop(0) if self.errors else None
        return pdpb.ResponseHeader(cluster_id=7, error=error)

    def server(self) -> RpcServer:
        return RpcServer(
            {
                pdpb.GetRegionRequest: self.get_region,
                pdpb.GetRegionByIdRequest: self.get_region_by_id,
                pdpb.ScanRegionsRequest: self.scan_regions,
                pdpb.GetStoreRequest: self.get_store,
            }
        )

    async def get_region(self, req: pdpb.GetRegionRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_region"] += 1
        regions, leaders = self._view()
        for r in regions.values():
            if r.contains(req.key):
                return pdpb.GetRegionResponse(self._header(), r, leaders.get(r.id))
        return pdpb.GetRegionResponse(self._header())

    async def get_region_by_id(self, req: pdpb.GetRegionByIdRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_region_by_id"] += 1
        regions, leaders = self._view()
        r = regions.get(req.region_id)
        return pdpb.GetRegionResponse(self._header(), r, None if r is None else leaders.get(r.id))

    async def scan_regions(self, req: pdpb.ScanRegionsRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["scan_regions"] += 1
        regions, leaders = self._view()
        found = sorted(
            (
                r
                for r in regions.values()
                if ranges_overlap(r.start_key, r.end_key, req.start_key, req.end_key)
            ),
            key=lambda r: r.start_key,
        )
        if req.limit:
            found = found[: req.limit]
        return pdpb.ScanRegionsResponse(
            self._header(), tuple(pdpb.RegionInfo(r, leaders.get(r.id)) for r in found)
        )

    async def get_store(self, req: pdpb.GetStoreRequest, _: RequestContext) -> object:
        self.cluster.pd_calls["get_store"] += 1
        address = self.cluster.addresses.get(req.store_id)
        if address is None or req.store_id in self.unknown_stores:
            return pdpb.GetStoreResponse(self._header())
        return pdpb.GetStoreResponse(self._header(), Store(req.store_id, address))


# --------------------------------------------------------------------------
# Transports.


class MemoryNet:
    """A StreamOpener over in-memory streams: address -> RpcServer. Addresses
    can be taken down (connections refused) and connections cut."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.servers: dict[str, RpcServer] = {}
        self.down: set[str] = set()
        self.connects: Counter[str] = Counter()
        self._scopes: defaultdict[str, list[trio.CancelScope]] = defaultdict(list)

    def add(self, address: str, server: RpcServer) -> None:
        self.servers[address] = server

    async def open_stream(self, address: str) -> trio.abc.Stream:
        self.connects[address] += 1
        await trio.lowlevel.checkpoint()
        server = self.servers.get(address)
        if server is None or address in self.down:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address}: connection refused")
        client_side, server_side = trio.testing.memory_stream_pair()
        scope = trio.CancelScope()
        self._scopes[address].append(scope)
        self.nursery.start_soon(self._serve, server, server_side, scope)
        return client_side

    async def _serve(
        self, server: RpcServer, stream: trio.abc.Stream, scope: trio.CancelScope
    ) -> None:
        with scope:
            await server.handle_connection(stream, "memory")
        await trio.aclose_forcefully(stream)

    def cut(self, address: str) -> None:
        """Drop every open connection to `address` (from the server's end)."""
        for scope in self._scopes.pop(address, []):
            scope.cancel()

    def kill(self, address: str) -> None:
        self.down.add(address)
        self.cut(address)

    def revive(self, address: str) -> None:
        self.down.discard(address)


def memory_pd_client(net: MemoryNet, nursery: trio.Nursery) -> PdClient:
    """A real PdClient whose connections go through `net`."""
    return PdClient([PD_ADDRESS], nursery, rng=random.Random(1), open_stream=net.open_stream)


@dataclass
class Harness:
    cluster: FakeCluster
    net: MemoryNet
    stores: dict[int, FakeStore]
    pd: FakePd
    kv: Client

    def store(self, store_id: int) -> FakeStore:
        return self.stores[store_id]


@asynccontextmanager
async def fake_cluster(
    split_keys: Sequence[bytes] = (),
    *,
    store_ids: list[int] | None = None,
    config: ClientConfig | None = None,
    seed: int = 7,
) -> AsyncIterator[Harness]:
    """A fake cluster on a memory network and a client of it. An exception
    of the body comes out as itself (not in an ExceptionGroup)."""
    cluster = FakeCluster.build(store_ids, list(split_keys))
    async with open_background_nursery() as nursery:
        net = MemoryNet(nursery)
        stores = {s: FakeStore(s, cluster, net) for s in cluster.store_ids}
        for s, st in stores.items():
            net.add(cluster.addresses[s], st.server())
        fake_pd = FakePd(cluster)
        net.add(PD_ADDRESS, fake_pd.server())
        pd = memory_pd_client(net, nursery)
        try:
            async with open_client(
                pd, config=config, rng=random.Random(seed), open_stream=net.open_stream
            ) as kvc:
                yield Harness(cluster, net, stores, fake_pd, kvc)
        finally:
            pd.close()
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------
# The same servers over loopback TCP, in a thread of their own (for the
# blocking client and the CLI, which run trio themselves).


@dataclass
class TcpCluster:
    cluster: FakeCluster
    pd_address: str
    stores: dict[int, FakeStore]


@contextmanager
def tcp_cluster(split_keys: Sequence[bytes] = ()) -> Iterator[TcpCluster]:
    """A fake cluster on 127.0.0.1 ports, served by trio in a background
    thread until the block ends."""
    cluster = FakeCluster.build(None, list(split_keys))
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            box["token"] = trio.lowlevel.current_trio_token()
            box["stop"] = stop = trio.Event()
            stores = {s: FakeStore(s, cluster) for s in cluster.store_ids}
            for s, st in stores.items():
                host, port = await nursery.start(st.server().serve, "127.0.0.1", 0)
                cluster.addresses[s] = f"{host}:{port}"
            host, port = await nursery.start(FakePd(cluster).server().serve, "127.0.0.1", 0)
            box["result"] = TcpCluster(cluster, f"{host}:{port}", stores)
            ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as e:
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=main, name="fake-cluster", daemon=True)
    thread.start()
    assert ready.wait(10), "fake cluster did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield box["result"]
    finally:
        trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(10)

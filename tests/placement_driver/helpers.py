"""A PD caller, a bootstrap like a store node's, and an HTTP client for the
PD tests (regions and stores come from tests/factories.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import h11
import trio

from kvproto import pdpb
from kvproto.metapb import Peer, Region, RegionId, Store, StoreId
from kvproto.rpc import RpcConnection
from tests.factories import peer, region, store

R = TypeVar("R")


class PdCaller:
    """Raw pdpb calls over one RPC connection. `call` checks the response
    type and the cluster id in its header, and returns the response
    (errors in the header are for the test to look at)."""

    def __init__(self, conn: RpcConnection, cluster_id: int = 0) -> None:
        """`cluster_id` 0: learnt from the first answer (the PD refuses 0
        after bootstrap but in `pdpb.CLUSTER_ID_OPTIONAL` requests)."""
        self.conn = conn
        self.cluster_id = cluster_id

    def header(self) -> pdpb.RequestHeader:
        return pdpb.RequestHeader(self.cluster_id)

    async def call(self, request: object, expected: type[R]) -> R:
        response = await self.conn.call(request, timeout=5)
        assert isinstance(response, expected), response
        got: pdpb.ResponseHeader = response.header  # type: ignore[attr-defined]
        if got.cluster_id and not self.cluster_id:
            self.cluster_id = got.cluster_id
        return response

    async def ok(self, request: object, expected: type[R]) -> R:
        """Like `call`, asserting the header carries no error."""
        response = await self.call(request, expected)
        error = response.header.error  # type: ignore[attr-defined]
        assert error is None, error
        return response

    async def error(self, request: object, expected: type[Any]) -> pdpb.PdError:
        """Like `call`, asserting the header carries an error; returns it."""
        response = await self.call(request, expected)
        error: pdpb.PdError | None = response.header.error
        assert error is not None, f"expected an error, got {response}"
        return error

    async def alloc_id(self) -> int:
        r = await self.ok(pdpb.AllocIdRequest(self.header()), pdpb.AllocIdResponse)
        return r.id

    async def bootstrap(self, first_store: Store, first_region: Region) -> None:
        await self.ok(
            pdpb.BootstrapRequest(self.header(), first_store, first_region),
            pdpb.BootstrapResponse,
        )

    async def put_store(self, s: Store) -> None:
        await self.ok(pdpb.PutStoreRequest(self.header(), s), pdpb.PutStoreResponse)

    async def get_store(self, store_id: int) -> pdpb.GetStoreResponse:
        return await self.ok(
            pdpb.GetStoreRequest(self.header(), StoreId(store_id)), pdpb.GetStoreResponse
        )

    async def store_heartbeat(self, store_id: int, **stats: Any) -> pdpb.StoreHeartbeatResponse:
        return await self.ok(
            pdpb.StoreHeartbeatRequest(self.header(), pdpb.StoreStats(StoreId(store_id), **stats)),
            pdpb.StoreHeartbeatResponse,
        )

    def heartbeat_request(
        self, r: Region, leader: Peer | None = None, **fields: Any
    ) -> pdpb.RegionHeartbeatRequest:
        return pdpb.RegionHeartbeatRequest(self.header(), r, leader or r.peers[0], **fields)

    async def region_heartbeat(
        self, r: Region, leader: Peer | None = None, **fields: Any
    ) -> pdpb.RegionHeartbeatResponse:
        return await self.ok(
            self.heartbeat_request(r, leader, **fields), pdpb.RegionHeartbeatResponse
        )

    async def get_region(self, key: bytes) -> pdpb.GetRegionResponse:
        return await self.ok(pdpb.GetRegionRequest(self.header(), key), pdpb.GetRegionResponse)

    async def get_region_by_id(self, region_id: int) -> pdpb.GetRegionResponse:
        return await self.ok(
            pdpb.GetRegionByIdRequest(self.header(), RegionId(region_id)),
            pdpb.GetRegionResponse,
        )

    async def scan(self, start: bytes = b"", end: bytes = b"", limit: int = 0) -> list[Region]:
        r = await self.ok(
            pdpb.ScanRegionsRequest(self.header(), start, end, limit), pdpb.ScanRegionsResponse
        )
        return [info.region for info in r.regions]

    async def config(self) -> dict[str, str]:
        r = await self.ok(pdpb.GetConfigRequest(self.header()), pdpb.GetConfigResponse)
        return {i.name: i.value for i in r.items}


async def bootstrap_cluster(pd: PdCaller, store_count: int = 1) -> list[Store]:
    """Bootstrap like a store node does (ids from AllocId), then register
    `store_count - 1` more stores. Returns the stores; the first region
    covers everything with one peer on the first store."""
    first = store(await pd.alloc_id())
    region_id = await pd.alloc_id()
    peer_id = await pd.alloc_id()
    await pd.bootstrap(first, region(region_id, peers=(peer(peer_id, first.id),)))
    stores = [first]
    for _ in range(store_count - 1):
        s = store(await pd.alloc_id())
        await pd.put_store(s)
        stores.append(s)
    return stores


# -- HTTP -------------------------------------------------------------------------


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


async def http_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    """One HTTP/1.1 request with h11 over a fresh trio TCP stream (the path
    in `url` is sent as is, so escapes reach the server untouched), with
    `headers` besides Host, Connection and Content-Length."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        sent = [("Host", parts.netloc), ("Connection", "close"), *(headers or {}).items()]
        if body is not None:
            sent.append(("Content-Length", str(len(body))))
        request = h11.Request(method=method, target=target, headers=sent)
        data = conn.send(request)
        if body:
            data += conn.send(h11.Data(data=body))
        await stream.send_all(data + conn.send(h11.EndOfMessage()))
        response = HttpResponse(0)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response.status = event.status_code
                response.headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                response.body += bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return response

"""A typed client of the placement driver's RPC, shared by stores, the client
library and `shardkv ctl`.

It fills in request headers with the cluster id it knows, learnt from the
first answer: a bootstrapped PD refuses id 0 but in the few requests a
fresh store sends before it can know the id (`pdpb.CLUSTER_ID_OPTIONAL`),
so before any other call it asks IsBootstrapped while it knows none. It
checks the id of every response, turns a `PdError` in a response
header into `PdServerError`, and tries the next PD address when one cannot
be reached. It never retries a call that may have executed: callers own
their retry policy.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from kvproto import pdpb
from kvproto.metapb import Peer, Region, RegionId, Store, StoreId
from kvproto.rpc import RpcUnavailableError, StreamOpener, open_tcp
from kvproto.rpc.reconnect import Backoff, ReconnectingConnection
from plumbing.nursery import open_background_nursery

log = logging.getLogger(__name__)

R = TypeVar("R")

DEFAULT_TIMEOUT = 5.0


class PdServerError(Exception):
    """The PD answered with an error in the response header."""

    def __init__(self, error: pdpb.PdError) -> None:
        super().__init__(str(error))
        self.error = error

    @property
    def code(self) -> pdpb.PdErrorCode:
        return self.error.code


class PdClusterMismatchError(Exception):
    """The PD answering belongs to another cluster than the one we know."""


class PdClient:
    def __init__(
        self,
        addresses: Sequence[str],
        nursery: trio.Nursery,
        *,
        cluster_id: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        open_stream: StreamOpener = open_tcp,
    ) -> None:
        """`open_stream` opens the byte streams (in-memory ones in tests)."""
        if not addresses:
            raise ValueError("at least one PD address is needed")
        self.addresses = list(addresses)
        self.cluster_id = cluster_id
        self.timeout = timeout
        self._rng = rng or random.Random()
        self._conns = [
            ReconnectingConnection(
                a,
                nursery,
                rng=self._rng,
                backoff=Backoff(initial=0.05, max_delay=1.0),
                connect_timeout=timeout,
                open_stream=open_stream,
            )
            for a in self.addresses
        ]
        self._current = 0

    def close(self) -> None:
        for c in self._conns:
            c.close()

    def _header(self) -> pdpb.RequestHeader:
        return pdpb.RequestHeader(cluster_id=self.cluster_id)

    async def _call(self, request: Any, expected: type[R], *, hold: float = 0.0) -> R:
        """`request` with the cluster id in its header; `hold`: how long the
        PD may hold the answer (a long poll), on top of the usual timeout."""
        if self.cluster_id == 0 and type(request) not in pdpb.CLUSTER_ID_OPTIONAL:
            await self.is_bootstrapped()  # its answer carries the id, if any
        if request.header.cluster_id != self.cluster_id:
            request = dataclasses.replace(request, header=self._header())
        try:
            return await self._send(request, expected, hold)
        except PdServerError as e:
            if not (
                e.code == pdpb.PdErrorCode.CLUSTER_MISMATCH
                and request.header.cluster_id == 0
                and self.cluster_id
            ):
                raise
        # The cluster was bootstrapped since we asked: the refusal taught us
        # its id, and a refused request did not run, so it may go again.
        return await self._send(dataclasses.replace(request, header=self._header()), expected, hold)

    async def _send(self, request: object, expected: type[R], hold: float) -> R:
        last: Exception | None = None
        for attempt in range(len(self._conns)):
            conn = self._conns[(self._current + attempt) % len(self._conns)]
            try:
                resp = await conn.call(request, timeout=self.timeout + hold)
            except RpcUnavailableError as e:
                # Not sent: safe to try the next PD.
                last = e
                continue
            self._current = (self._current + attempt) % len(self._conns)
            if not isinstance(resp, expected):
                raise PdServerError(
                    pdpb.PdError(
                        pdpb.PdErrorCode.INTERNAL,
                        f"expected {expected.__name__}, got {type(resp).__name__}",
                    )
                )
            self._check_header(resp)
            return resp
        assert last is not None
        raise last

    def _check_header(self, resp: Any) -> None:
        header: pdpb.ResponseHeader = resp.header
        if header.cluster_id:
            if self.cluster_id == 0:
                self.cluster_id = header.cluster_id
            elif header.cluster_id != self.cluster_id:
                raise PdClusterMismatchError(
                    f"PD at {self.addresses} runs cluster {header.cluster_id}, "
                    f"expected {self.cluster_id}"
                )
        if header.error is not None:
            raise PdServerError(header.error)

    # -- bootstrap and ids ---------------------------------------------------

    async def is_bootstrapped(self) -> bool:
        r = await self._call(
            pdpb.IsBootstrappedRequest(self._header()), pdpb.IsBootstrappedResponse
        )
        return r.bootstrapped

    async def bootstrap(self, store: Store, region: Region) -> None:
        await self._call(
            pdpb.BootstrapRequest(self._header(), store, region), pdpb.BootstrapResponse
        )

    async def alloc_id(self) -> int:
        r = await self._call(pdpb.AllocIdRequest(self._header()), pdpb.AllocIdResponse)
        return r.id

    # -- stores --------------------------------------------------------------

    async def put_store(self, store: Store) -> None:
        await self._call(pdpb.PutStoreRequest(self._header(), store), pdpb.PutStoreResponse)

    async def replace_store(self, store: Store, replaced: int) -> None:
        """Register `store` in the place of store `replaced` (its data was
        lost): see `pdpb.ReplaceStoreRequest`."""
        await self._call(
            pdpb.ReplaceStoreRequest(self._header(), store, StoreId(replaced)),
            pdpb.ReplaceStoreResponse,
        )

    async def get_store(self, store_id: int) -> Store | None:
        """The store, or None if the PD does not know it."""
        try:
            r = await self._call(
                pdpb.GetStoreRequest(self._header(), StoreId(store_id)), pdpb.GetStoreResponse
            )
        except PdServerError as e:
            if e.code == pdpb.PdErrorCode.STORE_NOT_FOUND:
                return None
            raise
        return r.store

    async def get_all_stores(self, exclude_tombstone: bool = True) -> tuple[Store, ...]:
        r = await self._call(
            pdpb.GetAllStoresRequest(self._header(), exclude_tombstone),
            pdpb.GetAllStoresResponse,
        )
        return r.stores

    async def store_heartbeat(self, stats: pdpb.StoreStats) -> pdpb.StoreHeartbeatResponse:
        return await self._call(
            pdpb.StoreHeartbeatRequest(self._header(), stats), pdpb.StoreHeartbeatResponse
        )

    # -- regions -------------------------------------------------------------

    async def wait_orders(self, store_id: int, wait_seconds: float) -> tuple[RegionId, ...]:
        """Regions led on the store that the PD wants a heartbeat from now
        (it holds a new operator for them); waits up to `wait_seconds` for
        some, then answers none."""
        if not 0 <= wait_seconds <= 3600:
            raise ValueError(f"wait_seconds must be within 0..3600, got {wait_seconds}")
        resp = await self._call(
            pdpb.WaitOrdersRequest(self._header(), StoreId(store_id), float(wait_seconds)),
            pdpb.WaitOrdersResponse,
            hold=wait_seconds,
        )
        return resp.report_regions

    async def region_heartbeat(
        self, request: pdpb.RegionHeartbeatRequest
    ) -> pdpb.RegionHeartbeatResponse:
        """`request`'s header is replaced by this client's."""
        return await self._call(request, pdpb.RegionHeartbeatResponse)

    async def get_region(self, key: bytes) -> tuple[Region | None, Peer | None]:
        r = await self._call(pdpb.GetRegionRequest(self._header(), key), pdpb.GetRegionResponse)
        return r.region, r.leader

    async def get_region_by_id(self, region_id: int) -> tuple[Region | None, Peer | None]:
        r = await self._call(
            pdpb.GetRegionByIdRequest(self._header(), RegionId(region_id)),
            pdpb.GetRegionResponse,
        )
        return r.region, r.leader

    async def scan_regions(
        self, start_key: bytes, end_key: bytes = b"", limit: int = 0
    ) -> tuple[pdpb.RegionInfo, ...]:
        r = await self._call(
            pdpb.ScanRegionsRequest(self._header(), start_key, end_key, limit),
            pdpb.ScanRegionsResponse,
        )
        return r.regions

    async def ask_batch_split(self, region: Region, count: int) -> tuple[pdpb.SplitId, ...]:
        r = await self._call(
            pdpb.AskBatchSplitRequest(self._header(), region, count),
            pdpb.AskBatchSplitResponse,
        )
        return r.ids

    async def report_batch_split(self, regions: Sequence[Region]) -> None:
        await self._call(
            pdpb.ReportBatchSplitRequest(self._header(), tuple(regions)),
            pdpb.ReportBatchSplitResponse,
        )

    async def report_region_hash(self, request: pdpb.ReportRegionHashRequest) -> None:
        """A replica's hash at a consistency check (`store_node.consistency`)."""
        request = dataclasses.replace(request, header=self._header())
        await self._call(request, pdpb.ReportRegionHashResponse)

    # -- config --------------------------------------------------------------

    async def get_config(self) -> dict[str, str]:
        r = await self._call(pdpb.GetConfigRequest(self._header()), pdpb.GetConfigResponse)
        return {i.name: i.value for i in r.items}

    async def set_config(self, items: dict[str, str]) -> dict[str, str]:
        r = await self._call(
            pdpb.SetConfigRequest(
                self._header(), tuple(pdpb.ConfigItem(k, v) for k, v in items.items())
            ),
            pdpb.SetConfigResponse,
        )
        return {i.name: i.value for i in r.items}


@asynccontextmanager
async def open_pd_client(
    addresses: Sequence[str],
    *,
    cluster_id: int = 0,
    call_timeout: float = DEFAULT_TIMEOUT,
    open_stream: StreamOpener = open_tcp,
) -> AsyncIterator[PdClient]:
    """``async with open_pd_client(["127.0.0.1:2379"]) as pd``; `open_stream`
    opens (and may authenticate, `kvproto.rpc.authenticating_opener`) each
    connection."""
    async with open_background_nursery() as nursery:
        pd = PdClient(
            addresses, nursery, cluster_id=cluster_id, timeout=call_timeout, open_stream=open_stream
        )
        try:
            yield pd
        finally:
            pd.close()
            nursery.cancel_scope.cancel()

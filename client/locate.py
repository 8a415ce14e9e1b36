"""Where a request goes: the region of a key and a connection to its store.

`RegionLocator` (one per client) owns the region cache (`client.cache`),
fills it from the PD on a miss, resolves store ids to addresses through
the PD, and keeps one pipelined `ReconnectingConnection` per store address,
made on first use and shared by every task of the client. Store addresses
are forgotten when a retry decision says so (a store that cannot be
reached may have moved).

PD calls are retried with backoff until the call's deadline
(`client.retry.on_pd_error`). A store that could not be reached is
suspect for `SUSPECT_SECONDS` (or until it answers): follower and stale
reads pick other replicas meanwhile.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, Protocol, TypeVar

import trio

from client import retry
from client.attempts import Attempts, Decision, Retry
from client.cache import CachedRegion, RegionCache
from client.config import ClientConfig
from client.errors import ClusterMismatch, describe_key
from client.plan import holds_keys_before
from kvproto import pdpb
from kvproto.metapb import Peer, Region, Store, StoreId, StoreState
from kvproto.pd_client import PdClusterMismatchError, PdServerError
from kvproto.rpc import RpcCallError, StreamOpener
from kvproto.rpc.reconnect import ReconnectingConnection

__all__ = ["PREFETCH_REGIONS", "SUSPECT_SECONDS", "PdApi", "RegionLocator"]

log = logging.getLogger(__name__)

# Regions a batch or range call loads from the PD in one call on a miss.
PREFETCH_REGIONS: Final = 32

# How long a store that failed stays out of the replicas follower and stale
# reads choose from (unless it answers meanwhile).
SUSPECT_SECONDS: Final = 5.0

T = TypeVar("T")


class PdApi(Protocol):
    """What the client asks the PD (kvproto.pd_client.PdClient has it)."""

    async def get_region(self, key: bytes) -> tuple[Region | None, Peer | None]: ...

    async def scan_regions(
        self, start_key: bytes, end_key: bytes = b"", limit: int = 0
    ) -> tuple[pdpb.RegionInfo, ...]: ...

    async def get_store(self, store_id: int) -> Store | None: ...


class RegionLocator:
    """The regions of keys (cached, else from the PD) and the connections to
    their stores. The connections' tasks run in `nursery`."""

    def __init__(
        self,
        pd: PdApi,
        nursery: trio.Nursery,
        config: ClientConfig,
        rng: random.Random,
        open_stream: StreamOpener,
    ) -> None:
        self.cache = RegionCache()
        self._pd = pd
        self._nursery = nursery
        self._config = config
        self._rng = rng
        self._open_stream = open_stream
        self._store_addresses: dict[StoreId, str] = {}
        self._connections: dict[str, ReconnectingConnection] = {}
        # Stores that failed lately, until when (trio time).
        self._suspects: dict[StoreId, float] = {}

    def close(self) -> None:
        """Close every store connection."""
        for conn in self._connections.values():
            conn.close()

    # -- regions ------------------------------------------------------------

    async def locate(self, att: Attempts, key: bytes, until: bytes | None = None) -> CachedRegion:
        """The region holding `key`: from the cache, else from the PD. A
        caller that will need the regions up to `until` (b"": +inf) too
        has the PD list them in one call, up to PREFETCH_REGIONS of them."""
        while True:
            entry = self.cache.lookup(key)
            if entry is not None:
                return entry
            if until is not None:
                infos = await self._ask_pd(
                    att, partial(self._pd.scan_regions, key, until, PREFETCH_REGIONS)
                )
                for info in infos:
                    self.cache.insert(info.region, info.leader)
                until = None  # one try; then ask for the key alone
                continue
            region, leader = await self._ask_pd(att, partial(self._pd_get_region, key))
            if region is None or not region.contains(key):
                await self.wait(att, retry.on_region_unknown(describe_key(key), att))
                continue
            if self.cache.insert(region, leader):
                continue
            # The PD lags behind what the stores told us: use its answer for
            # this attempt only (the store will correct it).
            return CachedRegion(region, leader)

    async def locate_before(self, att: Attempts, end: bytes, start: bytes) -> CachedRegion:
        """The region holding the keys just below `end` (b"": +inf), for a
        reverse scan of ``[start, end)``."""
        while True:
            entry = self.cache.lookup_before(end)
            if entry is not None:
                return entry
            if end:
                region, leader = await self._ask_pd(att, partial(self._pd_get_region, end))
                if region is not None and region.start_key < end and region.contains(end):
                    if self.cache.insert(region, leader):
                        continue
                    return CachedRegion(region, leader)
            # The PD has no "previous region" call: list the regions of the
            # range and take the last one (they are worth caching anyway).
            infos = await self._ask_pd(att, partial(self._pd.scan_regions, start, end, 0))
            for info in infos:
                self.cache.insert(info.region, info.leader)
            entry = self.cache.lookup_before(end)
            if entry is not None:
                return entry
            for info in infos:
                if holds_keys_before(info.region, end):
                    # The PD lags behind the cache: use its answer once.
                    return CachedRegion(info.region, info.leader)
            await self.wait(att, retry.on_region_unknown(f"keys below {describe_key(end)}", att))

    # -- stores and connections ---------------------------------------------

    async def connection(
        self, att: Attempts, entry: CachedRegion, store_id: StoreId
    ) -> ReconnectingConnection | None:
        """The shared connection to a store, resolving its address through
        the PD; None (after the retry wait) if the PD does not know it."""
        address = self._store_addresses.get(store_id)
        if address is None:
            store = await self._ask_pd(att, partial(self._pd_get_store, store_id))
            if store is None or store.state == StoreState.TOMBSTONE or not store.address:
                why = "unknown to the PD" if store is None else f"is {store.state.name.lower()}"
                await self.wait(att, retry.on_store_unknown(self.cache, entry, store_id, why, att))
                return None
            address = store.address
            self._store_addresses[store_id] = address
        conn = self._connections.get(address)
        if conn is None:
            conn = ReconnectingConnection(
                address,
                self._nursery,
                backoff=self._config.store_backoff,
                rng=self._rng,
                connect_timeout=self._config.connect_timeout,
                open_stream=self._open_stream,
            )
            self._connections[address] = conn
        return conn

    def suspects(self) -> set[StoreId]:
        """The stores that failed in the last SUSPECT_SECONDS and have not
        answered since."""
        now = trio.current_time()
        for store_id in [s for s, until in self._suspects.items() if until <= now]:
            del self._suspects[store_id]
        return set(self._suspects)

    def answered(self, store_id: StoreId) -> None:
        """A store answered a request: it is no longer suspect."""
        self._suspects.pop(store_id, None)

    async def wait(self, att: Attempts, decision: Decision) -> None:
        """Carry out a retry decision: forget the store address it names
        (and suspect that store), then sleep its backoff; raises when it
        gives up or the deadline would pass."""
        if isinstance(decision, Retry) and decision.forget_store is not None:
            self._store_addresses.pop(decision.forget_store, None)
            self._suspects[decision.forget_store] = trio.current_time() + SUSPECT_SECONDS
        delay = att.plan(decision, trio.current_time())
        log.debug("%s: retrying in %.3f s after: %s", att.what, delay, att.last_cause)
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()

    # -- the PD -------------------------------------------------------------

    async def _ask_pd(self, att: Attempts, call: Callable[[], Awaitable[T]]) -> T:
        """A PD call, retried with backoff until the deadline."""
        while True:
            att.check(trio.current_time())
            cause = "no answer before the deadline"
            with trio.move_on_at(att.deadline):
                try:
                    return await call()
                except PdClusterMismatchError as e:
                    raise ClusterMismatch(att.what, str(e)) from None
                except PdServerError as e:
                    if e.code == pdpb.PdErrorCode.CLUSTER_MISMATCH:
                        raise ClusterMismatch(att.what, str(e)) from None
                    cause = str(e)
                except RpcCallError as e:
                    cause = str(e)
            await self.wait(att, retry.on_pd_error(cause, att))

    async def _pd_get_region(self, key: bytes) -> tuple[Region | None, Peer | None]:
        try:
            return await self._pd.get_region(key)
        except PdServerError as e:
            if e.code == pdpb.PdErrorCode.REGION_NOT_FOUND:
                return None, None
            raise

    async def _pd_get_store(self, store_id: StoreId) -> Store | None:
        try:
            return await self._pd.get_store(store_id)
        except PdServerError as e:
            if e.code == pdpb.PdErrorCode.STORE_NOT_FOUND:
                return None
            raise

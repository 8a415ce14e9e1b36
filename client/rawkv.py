"""The async client: the trio shell around the pure routing and retry core.

    async with client.connect(["127.0.0.1:2379"]) as kv:
        await kv.put(b"k", b"v")
        assert await kv.get(b"k") == b"v"

Every call has a deadline: `timeout=` (seconds) or the client's default
(`ClientConfig.timeout`, 10 s). Each attempt may use what is left of it.
A trio cancel scope around a call works too; cancellation then propagates
as usual (a write cancelled in flight has an unknown outcome, like any
cancelled I/O).

Routing: the region cache (`client.cache`) maps keys to regions and leader
hints; a miss asks the PD (`client.locate`). Retries and backoff follow
`client.retry`: read its docstring for which errors are retried for which
calls; `client.sender` carries them out. Batch calls are split by region
(and into chunks of at most `batch_max_keys` keys or `batch_max_bytes`
bytes), sent concurrently, and merged in key order; a region error
re-splits only the group that got it (`client.batch`). Scans and
delete_range walk the regions of their range, clipped to each region's
bounds (`client.scan`, `client.batch`).

Consistency: every single-key call and every region group of a batch is
linearizable (the store serves reads through ReadIndex), reads included
unless they ask for less: `consistency=` of get, batch_get, scan and
scan_iter is "strong" (the default: at the leader), "follower" (at any
replica, still linearizable) or "stale" (at any replica, from what it has
applied, at most `max_staleness` seconds old); see `client.config.
Consistency`. The `*_with_staleness` calls (and `ScanIterator.staleness`)
also say how stale their answer may be (`client.reads.ReadResult`). A batch
write is not atomic across regions: if it raises after a group was
written, it raises UndeterminedError (DeadlineExceeded promises that
nothing was written); retrying the call is safe (batch writes are
idempotent). A scan is not a snapshot: each page is read at its own time.

Connections: one pipelined `ReconnectingConnection` per store address,
made on first use and shared by every task of the client; store addresses
come from the PD and are forgotten when a store cannot be reached.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial

import trio

from client import batch
from client.attempts import Attempts, OpKind
from client.batch import own_key, pair_key, pair_size
from client.cache import RegionCache
from client.checks import (
    check_bytes,
    check_key,
    check_optional_value,
    check_positive,
    check_range,
    check_value,
    describe_call,
    describe_keys,
    describe_range_call,
)
from client.config import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_SCAN_LIMIT,
    DEFAULT_TIMEOUT,
    ClientConfig,
    Consistency,
    ConsistencyArg,
)
from client.errors import StoreError, ValueTooLarge
from client.locate import PdApi, RegionLocator
from client.plan import MAX_SCAN_PAGE, Pair, ScanCursor, range_is_empty
from client.reads import STRONG_READ, ReadMode, ReadResult, read_mode
from client.scan import ScanIterator, next_filled_page, next_page
from client.sender import RequestSender
from kvproto import kvrpcpb as kv
from kvproto.pd_client import PdClient
from kvproto.rpc import Credentials, Role, StreamOpener, open_tcp
from kvproto.rpc.tls import client_context, opener_for
from plumbing.nursery import open_background_nursery

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "DEFAULT_TIMEOUT",
    "Client",
    "ClientConfig",
    "Consistency",
    "Pair",
    "PdApi",
    "ReadResult",
    "ScanIterator",
    "connect",
    "open_client",
]


class Client:
    """Typed KV calls routed to region leaders (reads that ask for it: to
    any replica). Made by `connect` (or `open_client`); every call may run
    concurrently with the others."""

    def __init__(
        self,
        pd: PdApi,
        nursery: trio.Nursery,
        *,
        config: ClientConfig | None = None,
        rng: random.Random | None = None,
        open_stream: StreamOpener = open_tcp,
    ) -> None:
        self.config = config or ClientConfig()
        rng = rng or random.Random()
        self._regions = RegionLocator(pd, nursery, self.config, rng, open_stream)
        self._sender = RequestSender(self._regions, self.config, rng)

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Close every store connection; calls made afterwards raise
        ClientClosed. Idempotent."""
        self._sender.close()

    @property
    def closed(self) -> bool:
        return self._sender.closed

    @property
    def cache(self) -> RegionCache:
        """The region cache (start key -> region and leader hint)."""
        return self._regions.cache

    # -- reads --------------------------------------------------------------

    def _read_mode(self, what: str, consistency: object, max_staleness: object) -> ReadMode:
        return read_mode(what, consistency, max_staleness, self.config.max_staleness)

    async def get(
        self,
        key: bytes,
        *,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes | None:
        """The value of `key`, or None if it has none. `consistency`: where
        it is read and what that promises ("strong", "follower" or "stale",
        see `client.config.Consistency`); a stale read accepts
        `max_staleness` seconds (None: `ClientConfig.max_staleness`)."""
        result = await self.get_with_staleness(
            key, consistency=consistency, max_staleness=max_staleness, timeout=timeout
        )
        return result.value

    async def get_with_staleness(
        self,
        key: bytes,
        *,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ReadResult[bytes | None]:
        """`get`, with how stale the value may be (`ReadResult.staleness`:
        0 unless `consistency` is "stale")."""
        what = describe_call("get", key)
        key = check_key(what, key)
        mode = self._read_mode(what, consistency, max_staleness)
        att = self._sender.attempts(what, OpKind.READ, timeout, mode)
        resp = await self._sender.single(
            att,
            key,
            lambda ctx: kv.RawGetRequest(ctx, key, mode.wire, mode.max_staleness_ms),
            kv.RawGetResponse,
        )
        return ReadResult(resp.value, resp.staleness_ms / 1000)

    async def batch_get(
        self,
        keys: Iterable[bytes],
        *,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[bytes, bytes]:
        """The keys among `keys` that have a value, in key order, each
        region's read at `consistency` (see `get`)."""
        result = await self.batch_get_with_staleness(
            keys, consistency=consistency, max_staleness=max_staleness, timeout=timeout
        )
        return result.value

    async def batch_get_with_staleness(
        self,
        keys: Iterable[bytes],
        *,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ReadResult[dict[bytes, bytes]]:
        """`batch_get`, with how stale the answer may be (the stalest of its
        regions')."""
        ks = sorted({check_key("batch_get", k) for k in keys})
        what = describe_keys("batch_get", ks) if ks else "batch_get"
        mode = self._read_mode(what, consistency, max_staleness)
        if not ks:
            return ReadResult({})
        att = self._sender.attempts(what, OpKind.READ, timeout, mode)
        found: dict[bytes, bytes] = {}
        staleness_ms = 0

        def request(att: Attempts, keys: Sequence[bytes], ctx: kv.Context) -> kv.RawBatchGetRequest:
            return kv.RawBatchGetRequest(ctx, tuple(keys), mode.wire, mode.max_staleness_ms)

        def take(resp: kv.RawBatchGetResponse) -> None:
            nonlocal staleness_ms
            found.update(resp.pairs)
            staleness_ms = max(staleness_ms, resp.staleness_ms)

        def unread(resp: kv.RawBatchGetResponse, keys: Sequence[bytes]) -> Sequence[bytes]:
            # The store stopped at its byte bound (large values): the rest.
            if resp.unread <= 0:
                return ()
            if resp.unread >= len(keys):
                raise StoreError(att.what, f"a store read none of {len(keys)} keys asked")
            return keys[len(keys) - resp.unread :]

        await batch.for_each_region(
            self._sender, att, ks, own_key, len, request, kv.RawBatchGetResponse, take, unread
        )
        return ReadResult({k: found[k] for k in sorted(found)}, staleness_ms / 1000)

    async def contains(self, key: bytes, *, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Whether `key` has a value (without transferring the value)."""
        what = describe_call("contains", key)
        key = check_key(what, key)
        att = self._sender.attempts(what, OpKind.READ, timeout)
        while True:
            # The first key of [key, region end): no end bound past the
            # store's key size limit, whatever the key's size.
            entry = await self._regions.locate(att, key)
            resp = await self._sender.call(
                att,
                entry,
                partial(
                    kv.RawScanRequest,
                    start_key=key,
                    end_key=entry.region.end_key,
                    limit=1,
                    keys_only=True,
                ),
                kv.RawScanResponse,
            )
            if resp is not None:
                return bool(resp.pairs) and resp.pairs[0][0] == key

    async def scan(
        self,
        start: bytes,
        end: bytes = b"",
        *,
        limit: int = DEFAULT_SCAN_LIMIT,
        reverse: bool = False,
        keys_only: bool = False,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Pair]:
        """At most `limit` pairs with keys in ``[start, end)`` (empty `end`:
        no bound), ascending, or descending from `end` when `reverse`.
        Values are b"" when `keys_only`. Each page is read at `consistency`
        (see `get`). One deadline covers every page; for large ranges use
        `scan_iter`."""
        result = await self.scan_with_staleness(
            start,
            end,
            limit=limit,
            reverse=reverse,
            keys_only=keys_only,
            consistency=consistency,
            max_staleness=max_staleness,
            timeout=timeout,
        )
        return result.value

    async def scan_with_staleness(
        self,
        start: bytes,
        end: bytes = b"",
        *,
        limit: int = DEFAULT_SCAN_LIMIT,
        reverse: bool = False,
        keys_only: bool = False,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ReadResult[list[Pair]]:
        """`scan`, with how stale the answer may be (the stalest of its
        pages')."""
        what = describe_range_call("scan", start, end)
        start, end = check_range(what, start, end)
        check_positive(what, "limit", limit)
        mode = self._read_mode(what, consistency, max_staleness)
        cursor = ScanCursor(start, end, reverse, keys_only, MAX_SCAN_PAGE, limit)
        att = self._sender.attempts(what, OpKind.READ, timeout, mode)
        out: list[Pair] = []
        staleness = 0.0
        while not cursor.done:
            page = await next_page(self._sender, att, cursor, mode)
            out.extend(page.value)
            staleness = max(staleness, page.staleness)
        return ReadResult(out, staleness)

    def scan_iter(
        self,
        start: bytes,
        end: bytes = b"",
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        limit: int | None = None,
        reverse: bool = False,
        keys_only: bool = False,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> ScanIterator:
        """``async for key, value in kv.scan_iter(start, end)``: the pairs of
        ``[start, end)`` in order (descending when `reverse`), fetched
        `page_size` at a time, region by region, up to `limit` pairs (None:
        all), each page read at `consistency` (see `get`; the iterator's
        `staleness` is the stalest page's so far). Each page has its own
        deadline (`timeout`)."""
        what = describe_range_call("scan", start, end)
        start, end = check_range(what, start, end)
        check_positive(what, "page size", page_size)
        if limit is not None:
            check_positive(what, "limit", limit)
        mode = self._read_mode(what, consistency, max_staleness)
        cursor = ScanCursor(start, end, reverse, keys_only, page_size, limit)
        return ScanIterator(self, cursor, what, timeout, mode)

    async def next_scan_page(
        self,
        cursor: ScanCursor,
        what: str,
        *,
        mode: ReadMode = STRONG_READ,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ReadResult[list[Pair]]:
        """The next non-empty page of `cursor` (empty once it is done), read
        in `mode`, with its own deadline. The building block of `scan_iter`
        and of the blocking client's."""
        att = self._sender.attempts(what, OpKind.READ, timeout, mode)
        return await next_filled_page(self._sender, att, cursor, mode)

    # -- plain writes (idempotent) ------------------------------------------

    async def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        what = describe_call("put", key)
        key = check_key(what, key)
        value = check_value(what, value, self.config.max_value_size)
        att = self._sender.attempts(what, OpKind.WRITE, timeout)
        await self._sender.single_write(
            att,
            key,
            lambda ctx: kv.RawPutRequest(ctx, key, value, att.session_ref()),
            kv.RawWriteResponse,
        )

    async def batch_put(
        self,
        pairs: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Write every pair (the last of duplicate keys wins). Not atomic
        across regions: if it raises, some pairs may have been written."""
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        limit = self.config.max_value_size
        latest: dict[bytes, bytes] = {}
        for k, v in items:
            key = check_key("batch_put", k)
            value = check_bytes("batch_put", "value", v)
            if len(value) > limit:
                what = describe_call("batch_put", key)
                raise ValueTooLarge.of(what, "value", len(value), limit)
            latest[key] = value
        if not latest:
            return
        ordered = sorted(latest.items())
        what = describe_keys("batch_put", [k for k, _ in ordered])
        att = self._sender.attempts(what, OpKind.WRITE, timeout)
        with self._sender.request(att):
            await batch.for_each_region(
                self._sender, att, ordered, pair_key, pair_size, _batch_put, kv.RawWriteResponse
            )

    async def delete(self, key: bytes, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        what = describe_call("delete", key)
        key = check_key(what, key)
        att = self._sender.attempts(what, OpKind.WRITE, timeout)
        await self._sender.single_write(
            att,
            key,
            lambda ctx: kv.RawDeleteRequest(ctx, key, att.session_ref()),
            kv.RawWriteResponse,
        )

    async def batch_delete(self, keys: Iterable[bytes], *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Delete every key. Not atomic across regions."""
        ks = sorted({check_key("batch_delete", k) for k in keys})
        if not ks:
            return
        att = self._sender.attempts(describe_keys("batch_delete", ks), OpKind.WRITE, timeout)
        with self._sender.request(att):
            await batch.for_each_region(
                self._sender, att, ks, own_key, len, _batch_delete, kv.RawWriteResponse
            )

    async def delete_range(
        self,
        start: bytes,
        end: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Delete every key in ``[start, end)`` (empty `end`: to the last
        key). Each region's part is deleted atomically; the parts are not."""
        what = describe_range_call("delete_range", start, end)
        start, end = check_range(what, start, end)
        if range_is_empty(start, end):
            return
        att = self._sender.attempts(what, OpKind.WRITE, timeout)
        with self._sender.request(att):
            await batch.delete_range(self._sender, att, start, end)

    # -- conditional writes (not idempotent) ----------------------------------

    async def compare_and_set(
        self,
        key: bytes,
        expected: bytes | None,
        new: bytes | None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> tuple[bool, bytes | None]:
        """Set `key` to `new` (None: delete it) iff its value is `expected`
        (None: it has none). Returns (whether it was set, the value before).
        Raises UndeterminedError if the outcome cannot be known."""
        what = describe_call("compare_and_set", key)
        key = check_key(what, key)
        limit = self.config.max_value_size
        exp = check_optional_value(what, "expected", expected, limit)
        new_value = check_optional_value(what, "new", new, limit)
        att = self._sender.attempts(what, OpKind.CONDITIONAL_WRITE, timeout)
        return await self._cas(att, key, exp, new_value)

    async def put_if_absent(
        self,
        key: bytes,
        value: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes | None:
        """Set `key` to `value` if it has no value. Returns None when it was
        set, else the value it has (and nothing is written)."""
        what = describe_call("put_if_absent", key)
        key = check_key(what, key)
        value = check_value(what, value, self.config.max_value_size)
        att = self._sender.attempts(what, OpKind.CONDITIONAL_WRITE, timeout)
        ok, previous = await self._cas(att, key, None, value)
        return None if ok else previous

    async def get_and_put(
        self,
        key: bytes,
        value: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes | None:
        """Set `key` to `value`; returns the value it had (None: none), as
        one atomic step (a compare-and-set loop)."""
        what = describe_call("get_and_put", key)
        key = check_key(what, key)
        value = check_value(what, value, self.config.max_value_size)
        att = self._sender.attempts(what, OpKind.CONDITIONAL_WRITE, timeout)
        expected: bytes | None = None
        while True:
            ok, previous = await self._cas(att, key, expected, value)
            if ok:
                return expected
            att.note("the value changed between reading and setting it")
            att.check(trio.current_time())
            expected = previous

    async def _cas(
        self, att: Attempts, key: bytes, expected: bytes | None, new: bytes | None
    ) -> tuple[bool, bytes | None]:
        """One compare-and-set request (a get_and_put makes several)."""
        resp = await self._sender.single_write(
            att,
            key,
            lambda ctx: kv.RawCompareAndSetRequest(ctx, key, expected, new, att.session_ref()),
            kv.RawCompareAndSetResponse,
        )
        return resp.succeeded, resp.previous


# The requests of a batch call's region groups (see batch.for_each_region).


def _batch_put(att: Attempts, pairs: Sequence[Pair], ctx: kv.Context) -> kv.RawBatchPutRequest:
    return kv.RawBatchPutRequest(ctx, tuple(pairs), att.session_ref())


def _batch_delete(
    att: Attempts, keys: Sequence[bytes], ctx: kv.Context
) -> kv.RawBatchDeleteRequest:
    return kv.RawBatchDeleteRequest(ctx, tuple(keys), att.session_ref())


# --------------------------------------------------------------------------
# Opening a client.


@asynccontextmanager
async def open_client(
    pd: PdApi,
    *,
    config: ClientConfig | None = None,
    rng: random.Random | None = None,
    open_stream: StreamOpener = open_tcp,
) -> AsyncIterator[Client]:
    """A client over any PD implementation (tests use fakes), with its own
    nursery for the store connections; closed on exit. An exception of the
    block leaves as itself."""
    async with open_background_nursery() as nursery:
        kvc = Client(pd, nursery, config=config, rng=rng, open_stream=open_stream)
        try:
            yield kvc
        finally:
            kvc.close()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect(
    pd_addresses: Sequence[str] | str,
    *,
    timeout: float | None = None,  # noqa: ASYNC109
    config: ClientConfig | None = None,
    rng: random.Random | None = None,
    token: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> AsyncIterator[Client]:
    """``async with connect(["127.0.0.1:2379"]) as kv``: a client of the
    cluster whose PD listens at `pd_addresses` ("host:port", one or more).
    `timeout` is the default deadline of each call (seconds). `token`: the
    cluster's client token (or its cluster token), for a cluster run with
    one (`kvproto.rpc.auth`). `tls_ca`: the PEM CA of a cluster run with TLS
    (the PD and the stores are verified against it); `tls_cert` and
    `tls_key`: a client certificate, if the cluster asks for one. Nothing is
    contacted until the first call."""
    addresses = [pd_addresses] if isinstance(pd_addresses, str) else list(pd_addresses)
    if not addresses:
        raise ValueError("at least one PD address is needed")
    cfg = config or ClientConfig()
    if timeout is not None:
        cfg = dataclasses.replace(cfg, timeout=timeout)
    async with open_background_nursery() as nursery:
        creds = Credentials(Role.CLIENT, token.encode()) if token else None
        tls = client_context(tls_ca, tls_cert, tls_key) if tls_ca else None
        opener = opener_for(tls, creds)
        pd = PdClient(addresses, nursery, timeout=cfg.pd_timeout, rng=rng, open_stream=opener)
        try:
            async with open_client(pd, config=cfg, rng=rng, open_stream=opener) as kvc:
                yield kvc
        finally:
            pd.close()
            nursery.cancel_scope.cancel()

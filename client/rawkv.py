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
hints; a miss asks the PD. Retries and backoff follow `client.retry`: read
its docstring for which errors are retried for which calls. Batch calls are
split by region (and into chunks of at most `batch_max_keys` keys or
`batch_max_bytes` bytes), sent concurrently, and merged in key order; a
region error re-splits only the group that got it. Scans and delete_range
walk the regions of their range, clipped to each region's bounds.

Consistency: every single-key call and every region group of a batch is
linearizable (the store serves reads through ReadIndex). A batch write is
not atomic across regions: if it raises after a group was written, it
raises UndeterminedError (DeadlineExceeded promises that nothing was
written); retrying the call is safe (batch writes are idempotent). A scan
is not a snapshot: each page is read at its own time.

Connections: one pipelined `ReconnectingConnection` per store address,
made on first use and shared by every task of the client; store addresses
come from the PD and are forgotten when a store cannot be reached.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Protocol, TypeVar

import trio

from client import retry
from client.cache import CachedRegion, RegionCache
from client.errors import (
    ClientClosed,
    ClientError,
    ClusterMismatch,
    InvalidArgument,
    describe_key,
    describe_range,
)
from client.plan import (
    MAX_SCAN_PAGE,
    ScanCursor,
    chunks,
    clip,
    end_in_region,
    holds_keys_before,
    range_is_empty,
)
from client.retry import (
    Answer,
    Attempts,
    BackoffConfig,
    BackoffKind,
    Decision,
    GiveUp,
    OpKind,
    Retry,
)
from client.session import Session
from kvproto import kvrpcpb as kv
from kvproto import pdpb
from kvproto.codec import EncodeError
from kvproto.metapb import Peer, Region, Store, StoreId, StoreState
from kvproto.pd_client import PdClient, PdClusterMismatchError, PdServerError
from kvproto.rpc import RpcCallError, StreamOpener, open_tcp
from kvproto.rpc.reconnect import Backoff, ReconnectingConnection

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "DEFAULT_TIMEOUT",
    "Client",
    "ClientConfig",
    "Pair",
    "PdApi",
    "ScanIterator",
    "connect",
    "open_client",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_SCAN_LIMIT: Final = 10_000
DEFAULT_PAGE_SIZE: Final = 1_000
# Regions a batch or range call loads from the PD in one call on a miss.
PREFETCH_REGIONS: Final = 32

# Reconnection schedule of a store connection: quick first, capped at 1 s.
STORE_BACKOFF: Final = Backoff(initial=0.05, max_delay=1.0)

Pair = tuple[bytes, bytes]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Tunables of a client; the defaults suit most uses."""

    # Deadline of a call without its own `timeout=`, in seconds.
    timeout: float = DEFAULT_TIMEOUT
    # A batch request carries at most this many keys (the store refuses
    # more than 10,000) ...
    batch_max_keys: int = 1024
    # ... and about this many bytes of keys and values (at least one pair).
    batch_max_bytes: int = 4 << 20
    # Waits between retries, by reason (see client.retry).
    backoffs: Mapping[BackoffKind, BackoffConfig] = field(
        default_factory=lambda: dict(retry.DEFAULT_BACKOFFS)
    )
    # Reconnection backoff of a store connection, and the longest a TCP
    # connect may take.
    store_backoff: Backoff = STORE_BACKOFF
    connect_timeout: float = 3.0
    # Per-call timeout of the PD client (our deadline cuts it shorter).
    pd_timeout: float = 5.0
    # Number every write in a client session so that a retry is never
    # applied twice (see client.retry). Without it, a retried write may
    # apply twice and a conditional write raises UndeterminedError instead
    # of retrying after an unknown outcome (what TiKV's raw client does).
    exactly_once: bool = True
    # The longest one attempt waits for a store's answer before the call
    # tries another peer (within the call's deadline): a stopped store, or
    # a leader cut off from its followers, never answers.
    attempt_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if not 1 <= self.batch_max_keys <= 10_000:
            raise ValueError(f"batch_max_keys must be in 1..10000, got {self.batch_max_keys}")
        if not self.attempt_timeout > 0:
            raise ValueError(f"attempt_timeout must be positive, got {self.attempt_timeout}")
        if self.batch_max_bytes < 1:
            raise ValueError(f"batch_max_bytes must be positive, got {self.batch_max_bytes}")


class PdApi(Protocol):
    """What the client asks the PD (kvproto.pd_client.PdClient has it)."""

    async def get_region(self, key: bytes) -> tuple[Region | None, Peer | None]: ...

    async def scan_regions(
        self, start_key: bytes, end_key: bytes = b"", limit: int = 0
    ) -> tuple[pdpb.RegionInfo, ...]: ...

    async def get_store(self, store_id: int) -> Store | None: ...


A = TypeVar("A", bound=Answer)


# --------------------------------------------------------------------------
# Argument checks (InvalidArgument before anything is sent).


def _check_bytes(what: str, name: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{what}: {name} must be bytes, not {type(value).__name__}")
    return value


def _check_key(what: str, key: object) -> bytes:
    k = _check_bytes(what, "key", key)
    if not k:
        raise InvalidArgument(what, "empty key")
    return k


def _check_range(what: str, start: object, end: object) -> tuple[bytes, bytes]:
    s = _check_bytes(what, "start", start)
    e = _check_bytes(what, "end", end)
    if e and e < s:
        raise InvalidArgument(what, "end key is below start key")
    return s, e


def _check_value(what: str, value: object) -> bytes:
    return _check_bytes(what, "value", value)


def _check_optional_value(what: str, name: str, value: object) -> bytes | None:
    return None if value is None else _check_bytes(what, name, value)


def _pair_size(p: Pair) -> int:
    return len(p[0]) + len(p[1])


def _key_size(k: bytes) -> int:
    return len(k)


def _describe_keys(op: str, keys: Sequence[bytes]) -> str:
    return _describe_group(op, keys, _identity)


def _describe_group(op: str, items: Sequence[T], key_of: Callable[[T], bytes]) -> str:
    first = describe_key(key_of(items[0]))
    if len(items) == 1:
        return f"{op} {first}"
    return f"{op} of {len(items)} keys {first}..{describe_key(key_of(items[-1]))}"


# --------------------------------------------------------------------------
# The client.


class Client:
    """Typed KV calls routed to region leaders. Made by `connect` (or
    `open_client`); every call may run concurrently with the others."""

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
        self.cache = RegionCache()
        self._pd = pd
        self._nursery = nursery
        self._rng = rng or random.Random()
        self._open_stream = open_stream
        self._store_addresses: dict[StoreId, str] = {}
        self._connections: dict[str, ReconnectingConnection] = {}
        self._closed = False
        # Opened at the first write (exactly-once writes).
        self._session: Session | None = None

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Close every store connection; calls made afterwards raise
        ClientClosed. Idempotent."""
        self._closed = True
        for conn in self._connections.values():
            conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- reads --------------------------------------------------------------

    async def get(self, key: bytes, *, timeout: float | None = None) -> bytes | None:  # noqa: ASYNC109
        """The value of `key`, or None if it has none."""
        what = f"get {describe_key(key)}" if isinstance(key, bytes) else "get"
        key = _check_key(what, key)
        att = self._attempts(what, OpKind.READ, timeout)
        resp = await self._single(
            att, key, lambda ctx: kv.RawGetRequest(ctx, key), kv.RawGetResponse
        )
        return resp.value

    async def batch_get(
        self,
        keys: Iterable[bytes],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[bytes, bytes]:
        """The keys among `keys` that have a value, in key order."""
        ks = sorted({_check_key("batch_get", k) for k in keys})
        if not ks:
            return {}
        att = self._attempts(_describe_keys("batch_get", ks), OpKind.READ, timeout)
        found: dict[bytes, bytes] = {}

        async def run(att: Attempts, entry: CachedRegion, group: Sequence[bytes]) -> bool:
            resp = await self._call(
                att,
                entry,
                lambda ctx: kv.RawBatchGetRequest(ctx, tuple(group)),
                kv.RawBatchGetResponse,
            )
            if resp is None:
                return False
            found.update(resp.pairs)
            return True

        await self._for_each_region(att, ks, _identity, _key_size, run)
        return {k: found[k] for k in sorted(found)}

    async def contains(self, key: bytes, *, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Whether `key` has a value (without transferring the value)."""
        what = f"contains {describe_key(key)}" if isinstance(key, bytes) else "contains"
        key = _check_key(what, key)
        att = self._attempts(what, OpKind.READ, timeout)
        while True:
            # The first key of [key, region end): no end bound past the
            # store's key size limit, whatever the key's size.
            entry = await self._locate(att, key)
            resp = await self._call(
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
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Pair]:
        """At most `limit` pairs with keys in ``[start, end)`` (empty `end`:
        no bound), ascending, or descending from `end` when `reverse`.
        Values are b"" when `keys_only`. One deadline covers every page;
        for large ranges use `scan_iter`."""
        what = f"scan {describe_range(start, end)}" if _both_bytes(start, end) else "scan"
        start, end = _check_range(what, start, end)
        if limit <= 0:
            raise InvalidArgument(what, f"limit must be positive, got {limit}")
        cursor = ScanCursor(start, end, reverse, keys_only, MAX_SCAN_PAGE, limit)
        att = self._attempts(what, OpKind.READ, timeout)
        out: list[Pair] = []
        while not cursor.done:
            out.extend(await self._next_page(att, cursor))
        return out

    def scan_iter(
        self,
        start: bytes,
        end: bytes = b"",
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        limit: int | None = None,
        reverse: bool = False,
        keys_only: bool = False,
        timeout: float | None = None,
    ) -> ScanIterator:
        """``async for key, value in kv.scan_iter(start, end)``: the pairs of
        ``[start, end)`` in order (descending when `reverse`), fetched
        `page_size` at a time, region by region, up to `limit` pairs (None:
        all). Each page has its own deadline (`timeout`)."""
        what = f"scan {describe_range(start, end)}" if _both_bytes(start, end) else "scan"
        start, end = _check_range(what, start, end)
        if page_size <= 0:
            raise InvalidArgument(what, f"page size must be positive, got {page_size}")
        if limit is not None and limit <= 0:
            raise InvalidArgument(what, f"limit must be positive, got {limit}")
        cursor = ScanCursor(start, end, reverse, keys_only, page_size, limit)
        return ScanIterator(self, cursor, what, timeout)

    # -- plain writes (idempotent) ------------------------------------------

    async def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        what = f"put {describe_key(key)}" if isinstance(key, bytes) else "put"
        key = _check_key(what, key)
        value = _check_value(what, value)
        att = self._attempts(what, OpKind.WRITE, timeout)
        with self._request(att):
            await self._single(
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
        latest: dict[bytes, bytes] = {}
        for k, v in items:
            latest[_check_key("batch_put", k)] = _check_value("batch_put", v)
        if not latest:
            return
        ordered = sorted(latest.items())
        att = self._attempts(
            _describe_keys("batch_put", [k for k, _ in ordered]), OpKind.WRITE, timeout
        )

        async def run(att: Attempts, entry: CachedRegion, group: Sequence[Pair]) -> bool:
            resp = await self._call(
                att,
                entry,
                lambda ctx: kv.RawBatchPutRequest(ctx, tuple(group), att.session_ref()),
                kv.RawWriteResponse,
            )
            return resp is not None

        with self._request(att):
            await self._for_each_region(att, ordered, _first, _pair_size, run)

    async def delete(self, key: bytes, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        what = f"delete {describe_key(key)}" if isinstance(key, bytes) else "delete"
        key = _check_key(what, key)
        att = self._attempts(what, OpKind.WRITE, timeout)
        with self._request(att):
            await self._single(
                att,
                key,
                lambda ctx: kv.RawDeleteRequest(ctx, key, att.session_ref()),
                kv.RawWriteResponse,
            )

    async def batch_delete(self, keys: Iterable[bytes], *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Delete every key. Not atomic across regions."""
        ks = sorted({_check_key("batch_delete", k) for k in keys})
        if not ks:
            return
        att = self._attempts(_describe_keys("batch_delete", ks), OpKind.WRITE, timeout)

        async def run(att: Attempts, entry: CachedRegion, group: Sequence[bytes]) -> bool:
            resp = await self._call(
                att,
                entry,
                lambda ctx: kv.RawBatchDeleteRequest(ctx, tuple(group), att.session_ref()),
                kv.RawWriteResponse,
            )
            return resp is not None

        with self._request(att):
            await self._for_each_region(att, ks, _identity, _key_size, run)

    async def delete_range(
        self,
        start: bytes,
        end: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Delete every key in ``[start, end)`` (empty `end`: to the last
        key). Each region's part is deleted atomically; the parts are not."""
        what = (
            f"delete_range {describe_range(start, end)}"
            if _both_bytes(start, end)
            else "delete_range"
        )
        start, end = _check_range(what, start, end)
        if range_is_empty(start, end):
            return
        att = self._attempts(what, OpKind.WRITE, timeout)
        with self._request(att):
            parts = await self._split_range(att, start, end)
            await self._fan_out(
                [partial(self._delete_part, att.child(what), e, s, t) for e, s, t in parts]
            )

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
        what = f"compare_and_set {describe_key(key)}" if isinstance(key, bytes) else "cas"
        key = _check_key(what, key)
        exp = _check_optional_value(what, "expected", expected)
        new_value = _check_optional_value(what, "new", new)
        att = self._attempts(what, OpKind.CONDITIONAL_WRITE, timeout)
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
        what = f"put_if_absent {describe_key(key)}" if isinstance(key, bytes) else "put"
        key = _check_key(what, key)
        value = _check_value(what, value)
        att = self._attempts(what, OpKind.CONDITIONAL_WRITE, timeout)
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
        what = f"get_and_put {describe_key(key)}" if isinstance(key, bytes) else "get_and_put"
        key = _check_key(what, key)
        value = _check_value(what, value)
        att = self._attempts(what, OpKind.CONDITIONAL_WRITE, timeout)
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
        with self._request(att):
            resp = await self._single(
                att,
                key,
                lambda ctx: kv.RawCompareAndSetRequest(ctx, key, expected, new, att.session_ref()),
                kv.RawCompareAndSetResponse,
            )
        return resp.succeeded, resp.previous

    # -- one region at a time -------------------------------------------------

    @contextmanager
    def _request(self, att: Attempts) -> Iterator[None]:
        """A write call's lifetime as a numbered request of the client's
        session (no session unless `ClientConfig.exactly_once`)."""
        att.begin_request(self._current_session())
        try:
            yield
        finally:
            att.end_request()

    def _current_session(self) -> Session | None:
        if not self.config.exactly_once:
            return None
        if self._session is None:
            # Wall time: the regions compare it with the log's clock.
            self._session = Session.open(self._rng, int(time.time() * 1000))
        return self._session

    def _renew_session(self, att: Attempts) -> None:
        """The region forgot our session: this request (never applied) and
        the ones after it go on in a new one."""
        att.end_request()
        self._session = None
        att.begin_request(self._current_session())

    def _attempts(self, what: str, kind: OpKind, timeout: float | None) -> Attempts:
        if self._closed:
            raise ClientClosed(what)
        t = self.config.timeout if timeout is None else timeout
        if not t > 0 or math.isnan(t):
            raise InvalidArgument(what, f"timeout must be positive, got {t}")
        return Attempts(
            what,
            kind,
            trio.current_time() + t,
            t,
            self._rng,
            backoffs=self.config.backoffs,
            attempt_timeout=self.config.attempt_timeout,
        )

    async def _single(
        self, att: Attempts, key: bytes, request_for: Callable[[kv.Context], object], ans: type[A]
    ) -> A:
        """Send a one-key request until it is answered (or raise)."""
        while True:
            entry = await self._locate(att, key)
            resp = await self._call(att, entry, request_for, ans)
            if resp is not None:
                return resp

    async def _call(
        self,
        att: Attempts,
        entry: CachedRegion,
        request_for: Callable[[kv.Context], object],
        ans: type[A],
    ) -> A | None:
        """One attempt at `entry`'s region. Returns the answer, or None once
        the routing was updated and the backoff slept (the caller locates
        again and retries). Raises ClientError when giving up."""
        att.check(trio.current_time())
        if self._closed:
            raise ClientClosed(att.what)
        peer = entry.choose_peer(att.avoid)
        if peer is None:
            await self._wait(att, retry.on_no_peer(self.cache, entry, att))
            return None
        conn = await self._connection(att, entry, peer.store_id)
        if conn is None:
            return None
        ctx = kv.Context(entry.region.id, entry.region.epoch, peer)
        att.attempts += 1
        try:
            resp: object = await conn.call(
                request_for(ctx), timeout=att.attempt_budget(trio.current_time())
            )
        except EncodeError as e:
            raise InvalidArgument(att.what, f"request cannot be sent: {e}") from None
        except RpcCallError as e:
            resp = e
        verdict = retry.judge(self.cache, entry, peer, resp, ans, att)
        if isinstance(verdict, Retry | GiveUp):
            await self._wait(att, verdict)
            return None
        return verdict

    async def _wait(self, att: Attempts, decision: Decision) -> None:
        """Carry out a retry decision: forget what it says, then sleep its
        backoff; raises when it gives up or the deadline would pass."""
        if isinstance(decision, Retry) and decision.forget_store is not None:
            self._store_addresses.pop(decision.forget_store, None)
        if isinstance(decision, Retry) and decision.renew_session:
            self._renew_session(att)
        delay = att.plan(decision, trio.current_time())
        log.debug("%s: retrying in %.3f s after: %s", att.what, delay, att.last_cause)
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()

    # -- the PD ---------------------------------------------------------------

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
            await self._wait(att, retry.on_pd_error(cause, att))

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

    async def _locate(self, att: Attempts, key: bytes, until: bytes | None = None) -> CachedRegion:
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
                await self._wait(att, retry.on_region_unknown(describe_key(key), att))
                continue
            if self.cache.insert(region, leader):
                continue
            # The PD lags behind what the stores told us: use its answer for
            # this attempt only (the store will correct it).
            return CachedRegion(region, leader)

    async def _locate_before(self, att: Attempts, end: bytes, start: bytes) -> CachedRegion:
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
            await self._wait(att, retry.on_region_unknown(f"keys below {describe_key(end)}", att))

    # -- stores and connections -----------------------------------------------

    async def _connection(
        self, att: Attempts, entry: CachedRegion, store_id: StoreId
    ) -> ReconnectingConnection | None:
        """The shared connection to a store, resolving its address through
        the PD; None (after the retry wait) if the PD does not know it."""
        address = self._store_addresses.get(store_id)
        if address is None:
            store = await self._ask_pd(att, partial(self._pd_get_store, store_id))
            if store is None or store.state == StoreState.TOMBSTONE or not store.address:
                why = "unknown to the PD" if store is None else f"is {store.state.name.lower()}"
                await self._wait(att, retry.on_store_unknown(self.cache, entry, store_id, why, att))
                return None
            address = store.address
            self._store_addresses[store_id] = address
        conn = self._connections.get(address)
        if conn is None:
            conn = ReconnectingConnection(
                address,
                self._nursery,
                backoff=self.config.store_backoff,
                rng=self._rng,
                connect_timeout=self.config.connect_timeout,
                open_stream=self._open_stream,
            )
            self._connections[address] = conn
        return conn

    # -- batches ----------------------------------------------------------------

    async def _split_keys(
        self,
        att: Attempts,
        items: Sequence[T],
        key_of: Callable[[T], bytes],
        size_of: Callable[[T], int],
    ) -> list[tuple[CachedRegion, Sequence[T]]]:
        """Sorted `items` grouped by the region of their keys, in chunks."""
        keys = [key_of(i) for i in items]
        groups: list[tuple[CachedRegion, Sequence[T]]] = []
        i = 0
        while i < len(items):
            entry = await self._locate(att, keys[i], keys[-1] + b"\x00")
            j = end_in_region(keys, i, entry.region)
            for chunk in chunks(
                items[i:j], self.config.batch_max_keys, self.config.batch_max_bytes, size_of
            ):
                groups.append((entry, chunk))
            i = j
        return groups

    async def _for_each_region(
        self,
        att: Attempts,
        items: Sequence[T],
        key_of: Callable[[T], bytes],
        size_of: Callable[[T], int],
        run: Callable[[Attempts, CachedRegion, Sequence[T]], Awaitable[bool]],
    ) -> None:
        """Run `run` on every region group of sorted `items`, concurrently.
        `run` returns False when its group must be split again (the retry
        wait is done): only that group is re-split and retried."""

        async def group_task(att: Attempts, entry: CachedRegion, group: Sequence[T]) -> None:
            while not await run(att, entry, group):
                groups = await self._split_keys(att, group, key_of, size_of)
                if len(groups) > 1:
                    await fan_out(att, groups)
                    return
                entry, group = groups[0]

        async def fan_out(att: Attempts, groups: list[tuple[CachedRegion, Sequence[T]]]) -> None:
            if len(groups) == 1:
                await group_task(att, *groups[0])
                return
            op = att.what.split(" ", 1)[0]
            await self._fan_out(
                [
                    partial(group_task, att.child(_describe_group(op, g, key_of)), e, g)
                    for e, g in groups
                ]
            )

        await fan_out(att, await self._split_keys(att, items, key_of, size_of))

    async def _fan_out(self, jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
        """Run the jobs concurrently; the first ClientError (in job order)
        cancels the others and is raised as itself."""
        if len(jobs) == 1:
            await jobs[0]()
            return
        failures: list[tuple[int, ClientError]] = []

        async def guard(
            i: int, job: Callable[[], Awaitable[None]], scope: trio.CancelScope
        ) -> None:
            try:
                await job()
            except ClientError as e:
                failures.append((i, e))
                scope.cancel()

        async with trio.open_nursery() as nursery:
            for i, job in enumerate(jobs):
                nursery.start_soon(guard, i, job, nursery.cancel_scope)
        if failures:
            raise min(failures, key=lambda f: f[0])[1]

    # -- ranges -------------------------------------------------------------------

    async def _split_range(
        self, att: Attempts, start: bytes, end: bytes
    ) -> list[tuple[CachedRegion, bytes, bytes]]:
        """``[start, end)`` cut at region boundaries: (region, part) in order."""
        parts: list[tuple[CachedRegion, bytes, bytes]] = []
        cur = start
        while True:
            entry = await self._locate(att, cur, end)
            lo, hi = clip(entry.region, cur, end)
            parts.append((entry, lo, hi))
            r_end = entry.region.end_key
            if not r_end or (end and r_end >= end):
                return parts
            cur = r_end

    async def _delete_part(self, att: Attempts, entry: CachedRegion, lo: bytes, hi: bytes) -> None:
        while True:
            resp = await self._call(
                att,
                entry,
                partial(_delete_range_request, att, lo, hi),
                kv.RawWriteResponse,
            )
            if resp is not None:
                return
            parts = await self._split_range(att, lo, hi)
            if len(parts) > 1:
                what = f"delete_range {describe_range(lo, hi)}"
                await self._fan_out(
                    [partial(self._delete_part, att.child(what), e, s, t) for e, s, t in parts]
                )
                return
            entry, lo, hi = parts[0]

    async def _next_page(self, att: Attempts, cursor: ScanCursor) -> list[Pair]:
        """Read the next page of a scan (maybe empty: a region without keys
        in the range) and advance the cursor past it."""
        while True:
            if cursor.reverse:
                entry = await self._locate_before(att, cursor.end, cursor.start)
            else:
                entry = await self._locate(att, cursor.start)
            lo, hi = cursor.page_range(entry.region)
            limit = cursor.page_limit()
            resp = await self._call(
                att,
                entry,
                partial(
                    kv.RawScanRequest,
                    start_key=lo,
                    end_key=hi,
                    limit=limit,
                    reverse=cursor.reverse,
                    keys_only=cursor.keys_only,
                ),
                kv.RawScanResponse,
            )
            if resp is None:
                continue
            pairs = list(resp.pairs)
            cursor.advance(entry.region, pairs, limit)
            return pairs

    async def next_scan_page(
        self,
        cursor: ScanCursor,
        what: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Pair]:
        """The next non-empty page of `cursor` (empty once it is done), with
        its own deadline. The building block of `scan_iter` and of the
        blocking client's."""
        att = self._attempts(what, OpKind.READ, timeout)
        while not cursor.done:
            pairs = await self._next_page(att, cursor)
            if pairs:
                return pairs
        return []


def _delete_range_request(
    att: Attempts, start: bytes, end: bytes, ctx: kv.Context
) -> kv.RawDeleteRangeRequest:
    return kv.RawDeleteRangeRequest(ctx, start, end, att.session_ref())


def _identity(k: bytes) -> bytes:
    return k


def _first(p: Pair) -> bytes:
    return p[0]


def _both_bytes(a: object, b: object) -> bool:
    return isinstance(a, bytes) and isinstance(b, bytes)


class ScanIterator:
    """The async iterator of `Client.scan_iter`: pairs in order, fetched a
    page at a time."""

    def __init__(
        self, client: Client, cursor: ScanCursor, what: str, timeout: float | None
    ) -> None:
        self._client = client
        self._cursor = cursor
        self._what = what
        self._timeout = timeout
        self._buffer: deque[Pair] = deque()

    def __aiter__(self) -> ScanIterator:
        return self

    async def __anext__(self) -> Pair:
        if not self._buffer:
            page = await self.next_page()
            if not page:
                raise StopAsyncIteration
            self._buffer.extend(page)
        return self._buffer.popleft()

    async def next_page(self) -> list[Pair]:
        """The pairs not yet returned of the current page, else the next
        page; empty once the scan is done."""
        if self._buffer:
            rest = list(self._buffer)
            self._buffer.clear()
            return rest
        return await self._client.next_scan_page(self._cursor, self._what, timeout=self._timeout)


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
    nursery for the store connections; closed on exit."""
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        kvc = Client(pd, nursery, config=config, rng=rng, open_stream=open_stream)
        try:
            yield kvc
        except Exception as e:
            # Raised again outside the nursery, so the caller sees the
            # exception itself rather than an ExceptionGroup around it.
            body_error = e
        finally:
            kvc.close()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


@asynccontextmanager
async def connect(
    pd_addresses: Sequence[str] | str,
    *,
    timeout: float | None = None,  # noqa: ASYNC109
    config: ClientConfig | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Client]:
    """``async with connect(["127.0.0.1:2379"]) as kv``: a client of the
    cluster whose PD listens at `pd_addresses` ("host:port", one or more).
    `timeout` is the default deadline of each call (seconds). Nothing is
    contacted until the first call."""
    addresses = [pd_addresses] if isinstance(pd_addresses, str) else list(pd_addresses)
    if not addresses:
        raise ValueError("at least one PD address is needed")
    cfg = config or ClientConfig()
    if timeout is not None:
        cfg = _replace_timeout(cfg, timeout)
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        pd = PdClient(addresses, nursery, timeout=cfg.pd_timeout, rng=rng)
        try:
            async with open_client(pd, config=cfg, rng=rng) as kvc:
                yield kvc
        except Exception as e:
            body_error = e
        finally:
            pd.close()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


def _replace_timeout(cfg: ClientConfig, timeout: float) -> ClientConfig:
    return dataclasses.replace(cfg, timeout=timeout)

"""The client-facing KV RPC of a store: validate, route into the store loop,
wait for Raft, answer.

Writes become ops of the region's batched proposal for the current round;
reads wait for a permit (store_node.queries: at the leader for strong
reads, at any peer for follower and stale reads) and run against `kv/` in
its callback, in the store loop, before any later round can change the
region's data; a stale read's answer says how stale it may be.
Requests that no retry can fix (empty or too large keys, too large values,
inverted ranges) get a typed `KvError`; routing problems a `RegionError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from kvproto import kvrpcpb as kv
from kvproto.debugpb import StoreStatusRequest, StoreStatusResponse
from kvproto.errorpb import EpochNotMatch, RegionError
from kvproto.raft_cmdpb import CompareAndSet, Delete, DeleteRange, Put, WriteOp
from kvproto.rpc import Deferred, Handler, RequestContext, Respond
from store_node import keys
from store_node.apply import range_inside
from store_node.blob_files import BlobError
from store_node.core import StoreCore
from store_node.disk import DiskFailure
from store_node.engine import Engine, scan_cursor
from store_node.peer import ReadPermit, WriteDone
from store_node.sessions import check_session_id
from store_node.status import store_status

T = TypeVar("T")


class StoreAccess(Protocol):
    """What the KV service needs of the store (`StoreNode` has it): its
    engine for reads at a permit, the store loop's admission of writes and
    reads (answered by callback), the count of what a read returned (the
    region's read flow, `StoreCore.count_read`), and a call into the loop
    for status."""

    @property
    def engine(self) -> Engine: ...

    def submit_write(
        self,
        ctx: kv.Context,
        ops: tuple[WriteOp, ...],
        nbytes: int,
        session: kv.SessionRef | None,
        done: Callable[[WriteDone | RegionError], None],
    ) -> None: ...

    def submit_read(
        self,
        ctx: kv.Context,
        bounds: Sequence[bytes],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None: ...

    def submit_replica_read(
        self,
        ctx: kv.Context,
        bounds: Sequence[bytes],
        consistency: kv.Consistency,
        max_staleness: float,
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None: ...

    def count_read(self, region_id: int, nbytes: int, nkeys: int) -> None: ...

    def fail(self, error: DiskFailure) -> None: ...

    async def call_core(self, fn: Callable[[StoreCore], T]) -> T: ...

    def loop_counters(self) -> dict[str, int]: ...


log = logging.getLogger(__name__)

# At most this many pairs in one scan response: the read runs in the store
# loop (at its permit), so it must stay short; clients page through larger
# scans.
MAX_SCAN_LIMIT = 10_000
# A scan or batch get answer stops once it holds this many bytes of keys and
# values (`RawScanResponse.more`, `RawBatchGetResponse.unread`: the client
# asks for the rest): at most this plus one pair, far inside the frame limit
# (a page of 10,000 large values was gigabytes, refused whole), and a short
# read in the store loop.
MAX_READ_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    max_key_size: int = keys.MAX_KEY_SIZE
    max_value_size: int = kv.DEFAULT_MAX_VALUE_SIZE
    max_batch_keys: int = 10_000
    # Keys and values of one write request (kvproto.kvrpcpb.MAX_WRITE_BYTES).
    max_write_bytes: int = kv.MAX_WRITE_BYTES


def _err(code: kv.KvErrorCode, message: str) -> kv.KvError:
    return kv.KvError(code, message)


_CONSISTENCIES = frozenset(int(c) for c in kv.Consistency)


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up: a staleness is never understated."""
    return math.ceil(seconds * 1000) if seconds > 0 else 0


ReadRequest = kv.RawGetRequest | kv.RawBatchGetRequest | kv.RawScanRequest


class KvService:
    def __init__(self, node: StoreAccess, limits: Limits) -> None:
        self.node = node
        self.limits = limits

    def handlers(self) -> dict[type, Handler | Deferred]:
        return {
            kv.RawGetRequest: Deferred(self.raw_get),
            kv.RawBatchGetRequest: Deferred(self.raw_batch_get),
            kv.RawScanRequest: Deferred(self.raw_scan),
            kv.RawPutRequest: Deferred(self.raw_put),
            kv.RawBatchPutRequest: Deferred(self.raw_batch_put),
            kv.RawDeleteRequest: Deferred(self.raw_delete),
            kv.RawBatchDeleteRequest: Deferred(self.raw_batch_delete),
            kv.RawDeleteRangeRequest: Deferred(self.raw_delete_range),
            kv.RawCompareAndSetRequest: Deferred(self.raw_compare_and_set),
            StoreStatusRequest: self.store_status,
        }

    async def store_status(self, _: StoreStatusRequest, __: RequestContext) -> StoreStatusResponse:
        return await self.node.call_core(lambda core: store_status(core, self.node.loop_counters()))

    # -- validation ----------------------------------------------------------

    def _check_key(self, key: bytes) -> kv.KvError | None:
        if not key:
            return _err(kv.KvErrorCode.INVALID_ARGUMENT, "empty key")
        if len(key) > self.limits.max_key_size:
            return _err(
                kv.KvErrorCode.KEY_TOO_LARGE,
                f"key of {len(key)} bytes exceeds {self.limits.max_key_size}",
            )
        return None

    def _check_value(self, value: bytes | None) -> kv.KvError | None:
        if value is not None and len(value) > self.limits.max_value_size:
            return _err(
                kv.KvErrorCode.VALUE_TOO_LARGE,
                f"value of {len(value)} bytes exceeds the limit of "
                f"{self.limits.max_value_size} bytes (max_value_size)",
            )
        return None

    def _check_pairs(self, pairs: Sequence[kv.Pair]) -> kv.KvError | None:
        """A batch put's keys, values and their total (its log entry and Raft
        message must fit a frame)."""
        e = self._check_keys([k for k, _v in pairs])
        for _k, v in pairs:
            e = e or self._check_value(v)
        total = sum(len(k) + len(v) for k, v in pairs)
        if e is None and total > self.limits.max_write_bytes:
            return _err(
                kv.KvErrorCode.REQUEST_TOO_LARGE,
                f"{total} bytes of keys and values in one request exceed "
                f"{self.limits.max_write_bytes}",
            )
        return e

    def _check_keys(self, ks: Sequence[bytes]) -> kv.KvError | None:
        if len(ks) > self.limits.max_batch_keys:
            return _err(
                kv.KvErrorCode.REQUEST_TOO_LARGE,
                f"{len(ks)} keys in one request exceed {self.limits.max_batch_keys}",
            )
        for k in ks:
            e = self._check_key(k)
            if e is not None:
                return e
        return None

    def _check_read(self, req: ReadRequest) -> kv.KvError | None:
        """The read's consistency and staleness bound (the codec refuses an
        unknown consistency from the wire; callers in the process may not)."""
        consistency: object = req.consistency
        is_int = isinstance(consistency, int) and not isinstance(consistency, bool)
        if not is_int or consistency not in _CONSISTENCIES:
            return _err(kv.KvErrorCode.INVALID_ARGUMENT, f"unknown consistency {consistency!r}")
        bound: object = req.max_staleness_ms
        if type(bound) is not int or bound < 0:
            return _err(
                kv.KvErrorCode.INVALID_ARGUMENT,
                f"max_staleness_ms must be a non-negative int, got {bound!r}",
            )
        return None

    def _check_range(self, start: bytes, end: bytes, slack: int = 0) -> kv.KvError | None:
        """`slack`: how much longer than a key the start bound may be."""
        if len(start) > self.limits.max_key_size + slack or len(end) > self.limits.max_key_size:
            return _err(kv.KvErrorCode.KEY_TOO_LARGE, "range bound too large")
        if end and end <= start:
            return _err(kv.KvErrorCode.INVALID_ARGUMENT, "end key must be above start key")
        return None

    # -- plumbing ------------------------------------------------------------
    #
    # Reads and writes are `Deferred` handlers: they run in the connection's
    # reader task and answer from the store loop's callback, so a request
    # costs no task of its own.

    def _write(
        self,
        context: kv.Context,
        ops: tuple[WriteOp, ...],
        session: kv.SessionRef | None,
        done: Callable[[WriteDone | RegionError], None],
    ) -> None:
        nbytes = 0
        for op in ops:
            if isinstance(op, Put):
                nbytes += len(op.key) + len(op.value)
            elif isinstance(op, CompareAndSet):
                nbytes += len(op.key) + len(op.new_value or b"") + len(op.expected or b"")
            elif isinstance(op, DeleteRange):
                nbytes += len(op.start_key) + len(op.end_key)
            else:
                nbytes += len(op.key)
        self.node.submit_write(context, ops, nbytes, session, done)

    def _read(
        self,
        req: ReadRequest,
        bounds: Sequence[bytes],
        done: Callable[[ReadPermit | RegionError], None],
        span: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Ask for a permit to read as `req` says (at which consistency);
        `done` gets EpochNotMatch instead if the region split while the read
        waited (or no longer holds `span`)."""
        context = req.context

        def checked(value: ReadPermit | RegionError) -> None:
            if isinstance(value, ReadPermit):
                region = value.region
                if region.epoch.version != context.region_epoch.version or (
                    span is not None and not range_inside(region, *span)
                ):
                    # The caller must re-route.
                    done(EpochNotMatch((region,)))
                    return
            done(value)

        consistency = kv.Consistency(req.consistency)
        if consistency == kv.Consistency.STRONG:
            self.node.submit_read(context, bounds, checked)
        else:
            max_staleness = req.max_staleness_ms / 1000
            self.node.submit_replica_read(context, bounds, consistency, max_staleness, checked)

    # -- reads ---------------------------------------------------------------

    def raw_get(self, req: kv.RawGetRequest, _: RequestContext, respond: Respond) -> None:
        e = self._check_key(req.key) or self._check_read(req)
        if e is not None:
            respond(kv.RawGetResponse(error=e))
            return

        def done(permit: ReadPermit | RegionError) -> None:
            if not isinstance(permit, ReadPermit):
                respond(kv.RawGetResponse(region_error=permit))
            else:
                try:
                    value = self.node.engine.kv_get(keys.DATA_DB, req.key)
                except BlobError as e:
                    self.node.fail(e)  # no answer: the store stops
                    return
                if value is not None:
                    self.node.count_read(permit.region.id, len(req.key) + len(value), 1)
                respond(kv.RawGetResponse(value=value, staleness_ms=_ms(permit.staleness)))

        self._read(req, [req.key], done)

    def raw_batch_get(
        self, req: kv.RawBatchGetRequest, _: RequestContext, respond: Respond
    ) -> None:
        e = self._check_keys(req.keys) or self._check_read(req)
        if e is not None:
            respond(kv.RawBatchGetResponse(error=e))
            return

        def done(permit: ReadPermit | RegionError) -> None:
            if not isinstance(permit, ReadPermit):
                respond(kv.RawBatchGetResponse(region_error=permit))
                return
            pairs = []
            nbytes = 0
            unread = 0
            engine = self.node.engine
            try:
                with engine.read_kv() as txn:
                    db = engine.kv_db(keys.DATA_DB)
                    for i, k in enumerate(req.keys):
                        if nbytes >= MAX_READ_BYTES:
                            unread = len(req.keys) - i
                            break
                        v = txn.get(k, db=db)
                        if v is not None:
                            v = engine.blobs.resolve(k, v)
                            pairs.append((k, v))
                            nbytes += len(k) + len(v)
            except BlobError as e:
                self.node.fail(e)  # no answer: the store stops
                return
            self.node.count_read(permit.region.id, nbytes, len(pairs))
            respond(
                kv.RawBatchGetResponse(
                    pairs=tuple(pairs), staleness_ms=_ms(permit.staleness), unread=unread
                )
            )

        self._read(req, req.keys, done)

    def raw_scan(self, req: kv.RawScanRequest, _: RequestContext, respond: Respond) -> None:
        # A scan's next page starts just past the last key read (the key and a
        # zero byte): past a key of the largest size, one byte longer.
        e = self._check_range(req.start_key, req.end_key, 1) or self._check_read(req)
        if e is None and req.limit <= 0:
            e = _err(kv.KvErrorCode.INVALID_ARGUMENT, "scan limit must be positive")
        if e is not None:
            respond(kv.RawScanResponse(error=e))
            return

        def done(permit: ReadPermit | RegionError) -> None:
            # Read here, in the store loop's callback: a later task could run
            # after a round that destroyed the region and deleted its data.
            if not isinstance(permit, ReadPermit):
                respond(kv.RawScanResponse(region_error=permit))
                return
            limit = min(req.limit, MAX_SCAN_LIMIT)
            pairs: list[tuple[bytes, bytes]] = []
            nbytes = 0
            more = False
            engine = self.node.engine
            # LMDB seeks no longer key than it holds: seek at a longer start
            # bound's prefix and skip what lies below the bound.
            start = req.start_key
            long_start = len(start) > keys.MAX_KEY_SIZE
            try:
                with engine.read_kv() as txn:
                    found = scan_cursor(
                        txn,
                        engine.kv_db(keys.DATA_DB),
                        start[: keys.MAX_KEY_SIZE],
                        req.end_key,
                        reverse=req.reverse,
                        values=not req.keys_only,
                    )
                    for k, v in found:
                        if long_start and k < start:
                            continue
                        if req.keys_only:  # (no value read, no blob)
                            pair = (bytes(k), b"")
                        else:
                            pair = (bytes(k), engine.blobs.resolve(k, v))
                        pairs.append(pair)
                        nbytes += len(pair[0]) + len(pair[1])
                        if len(pairs) >= limit:
                            break
                        if nbytes >= MAX_READ_BYTES:
                            more = True
                            break
            except BlobError as e:
                self.node.fail(e)
                return
            self.node.count_read(permit.region.id, nbytes, len(pairs))
            respond(
                kv.RawScanResponse(
                    pairs=tuple(pairs), staleness_ms=_ms(permit.staleness), more=more
                )
            )

        self._read(req, [req.start_key], done, (req.start_key, req.end_key))

    # -- writes --------------------------------------------------------------

    def _check_session(self, session: kv.SessionRef | None) -> kv.KvError | None:
        if session is None:
            return None
        why = check_session_id(session.session_id)
        if why is None and session.seq < 1:
            why = f"a request number is positive, not {session.seq}"
        return None if why is None else _err(kv.KvErrorCode.INVALID_ARGUMENT, why)

    def _plain_write(
        self,
        context: kv.Context,
        ops: tuple[WriteOp, ...],
        session: kv.SessionRef | None,
        e: kv.KvError | None,
        respond: Respond,
    ) -> None:
        e = e or self._check_session(session)
        if e is not None:
            respond(kv.RawWriteResponse(error=e))
            return

        def done(value: WriteDone | RegionError) -> None:
            if not isinstance(value, WriteDone):
                respond(kv.RawWriteResponse(region_error=value))
            elif value.error is not None:
                respond(kv.RawWriteResponse(error=value.error))
            else:
                respond(_WRITE_OK)

        self._write(context, ops, session, done)

    def raw_put(self, req: kv.RawPutRequest, _: RequestContext, respond: Respond) -> None:
        e = self._check_key(req.key) or self._check_value(req.value)
        self._plain_write(req.context, (Put(req.key, req.value),), req.session, e, respond)

    def raw_batch_put(
        self, req: kv.RawBatchPutRequest, _: RequestContext, respond: Respond
    ) -> None:
        e = self._check_pairs(req.pairs)
        ops = tuple(Put(k, v) for k, v in req.pairs)
        self._plain_write(req.context, ops, req.session, e, respond)

    def raw_delete(self, req: kv.RawDeleteRequest, _: RequestContext, respond: Respond) -> None:
        e = self._check_key(req.key)
        self._plain_write(req.context, (Delete(req.key),), req.session, e, respond)

    def raw_batch_delete(
        self, req: kv.RawBatchDeleteRequest, _: RequestContext, respond: Respond
    ) -> None:
        ops = tuple(Delete(k) for k in req.keys)
        self._plain_write(req.context, ops, req.session, self._check_keys(req.keys), respond)

    def raw_delete_range(
        self, req: kv.RawDeleteRangeRequest, _: RequestContext, respond: Respond
    ) -> None:
        e = self._check_range(req.start_key, req.end_key)
        ops = (DeleteRange(req.start_key, req.end_key),)
        self._plain_write(req.context, ops, req.session, e, respond)

    def raw_compare_and_set(
        self, req: kv.RawCompareAndSetRequest, _: RequestContext, respond: Respond
    ) -> None:
        e = (
            self._check_key(req.key)
            or self._check_value(req.expected)
            or self._check_value(req.new_value)
            or self._check_session(req.session)
        )
        if e is not None:
            respond(kv.RawCompareAndSetResponse(error=e))
            return

        def done(value: WriteDone | RegionError) -> None:
            if not isinstance(value, WriteDone):
                respond(kv.RawCompareAndSetResponse(region_error=value))
                return
            if value.error is not None:
                respond(kv.RawCompareAndSetResponse(error=value.error))
                return
            r = value.results[0]
            respond(kv.RawCompareAndSetResponse(succeeded=r.succeeded, previous=r.previous))

        op = CompareAndSet(req.key, req.expected, req.new_value)
        self._write(req.context, (op,), req.session, done)


_WRITE_OK = kv.RawWriteResponse()

"""The client-facing KV RPC of a store: validate, route into the store loop,
wait for Raft, answer.

Writes become ops of the region's batched proposal for the current round;
reads wait for a ReadIndex permit and then run against `kv/` in this task.
Requests that no retry can fix (empty or too large keys, too large values,
inverted ranges) get a typed `KvError`; routing problems a `RegionError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvproto import kvrpcpb as kv
from kvproto.debugpb import StoreStatusRequest, StoreStatusResponse
from kvproto.errorpb import EpochNotMatch, RegionError
from kvproto.raft_cmdpb import CompareAndSet, Delete, DeleteRange, Put, WriteOp
from kvproto.rpc import Handler, RequestContext
from store_node import keys
from store_node.apply import range_inside
from store_node.engine import scan_cursor
from store_node.peer import ReadPermit, WriteDone

if TYPE_CHECKING:
    from store_node.node import StoreNode

log = logging.getLogger(__name__)

# At most this many pairs in one scan response: the read runs on the loop's
# thread, so it must stay short; clients page through larger scans.
MAX_SCAN_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Limits:
    max_key_size: int = 8 << 10
    max_value_size: int = 8 << 20
    max_batch_keys: int = 10_000


def _err(code: kv.KvErrorCode, message: str) -> kv.KvError:
    return kv.KvError(code, message)


class KvService:
    def __init__(self, node: StoreNode, limits: Limits) -> None:
        self.node = node
        self.limits = limits

    def handlers(self) -> dict[type, Handler]:
        return {
            kv.RawGetRequest: self.raw_get,
            kv.RawBatchGetRequest: self.raw_batch_get,
            kv.RawScanRequest: self.raw_scan,
            kv.RawPutRequest: self.raw_put,
            kv.RawBatchPutRequest: self.raw_batch_put,
            kv.RawDeleteRequest: self.raw_delete,
            kv.RawBatchDeleteRequest: self.raw_batch_delete,
            kv.RawDeleteRangeRequest: self.raw_delete_range,
            kv.RawCompareAndSetRequest: self.raw_compare_and_set,
            StoreStatusRequest: self.store_status,
        }

    async def store_status(self, _: StoreStatusRequest, __: RequestContext) -> StoreStatusResponse:
        status = await self.node.call_core(lambda core: core.status())
        counters = dict(status.counters)
        counters["rounds"] = self.node.rounds
        counters["raft_frames_sent"] = self.node.transport.sent_frames if self.node.transport else 0
        counters["raft_messages_dropped"] = (
            self.node.transport.dropped if self.node.transport else 0
        )
        return dataclasses.replace(status, counters=tuple(sorted(counters.items())))

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
                f"value of {len(value)} bytes exceeds {self.limits.max_value_size}",
            )
        return None

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

    def _check_range(self, start: bytes, end: bytes) -> kv.KvError | None:
        if len(start) > self.limits.max_key_size or len(end) > self.limits.max_key_size:
            return _err(kv.KvErrorCode.KEY_TOO_LARGE, "range bound too large")
        if end and end <= start:
            return _err(kv.KvErrorCode.INVALID_ARGUMENT, "end key must be above start key")
        return None

    # -- plumbing ------------------------------------------------------------

    async def _write(
        self, context: kv.Context, ops: tuple[WriteOp, ...]
    ) -> WriteDone | RegionError:
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
        return await self.node.write(context, ops, nbytes)

    async def _read(self, context: kv.Context, bounds: Sequence[bytes]) -> ReadPermit | RegionError:
        value = await self.node.read(context, bounds)
        if isinstance(value, ReadPermit):
            region = value.region
            if region.epoch.version != context.region_epoch.version:
                # Split while the read waited: the caller must re-route.
                return EpochNotMatch((region,))
        return value

    # -- reads ---------------------------------------------------------------

    async def raw_get(self, req: kv.RawGetRequest, _: RequestContext) -> kv.RawGetResponse:
        e = self._check_key(req.key)
        if e is not None:
            return kv.RawGetResponse(error=e)
        permit = await self._read(req.context, [req.key])
        if not isinstance(permit, ReadPermit):
            return kv.RawGetResponse(region_error=permit)
        return kv.RawGetResponse(value=self.node.engine.kv_get(keys.DATA_DB, req.key))

    async def raw_batch_get(
        self, req: kv.RawBatchGetRequest, _: RequestContext
    ) -> kv.RawBatchGetResponse:
        e = self._check_keys(req.keys)
        if e is not None:
            return kv.RawBatchGetResponse(error=e)
        permit = await self._read(req.context, req.keys)
        if not isinstance(permit, ReadPermit):
            return kv.RawBatchGetResponse(region_error=permit)
        pairs = []
        engine = self.node.engine
        with engine.read_kv() as txn:
            db = engine.kv_db(keys.DATA_DB)
            for k in req.keys:
                v = txn.get(k, db=db)
                if v is not None:
                    pairs.append((k, bytes(v)))
        return kv.RawBatchGetResponse(pairs=tuple(pairs))

    async def raw_scan(self, req: kv.RawScanRequest, _: RequestContext) -> kv.RawScanResponse:
        e = self._check_range(req.start_key, req.end_key)
        if e is None and req.limit <= 0:
            e = _err(kv.KvErrorCode.INVALID_ARGUMENT, "scan limit must be positive")
        if e is not None:
            return kv.RawScanResponse(error=e)
        permit = await self.node.read(req.context, [req.start_key])
        if isinstance(permit, ReadPermit):
            region = permit.region
            if region.epoch.version != req.context.region_epoch.version or not range_inside(
                region, req.start_key, req.end_key
            ):
                return kv.RawScanResponse(region_error=EpochNotMatch((region,)))
        else:
            return kv.RawScanResponse(region_error=permit)
        limit = min(req.limit, MAX_SCAN_LIMIT)
        pairs: list[tuple[bytes, bytes]] = []
        engine = self.node.engine
        with engine.read_kv() as txn:
            for k, v in scan_cursor(
                txn, engine.kv_db(keys.DATA_DB), req.start_key, req.end_key, reverse=req.reverse
            ):
                pairs.append((bytes(k), b"" if req.keys_only else bytes(v)))
                if len(pairs) >= limit:
                    break
        return kv.RawScanResponse(pairs=tuple(pairs))

    # -- writes --------------------------------------------------------------

    async def _plain_write(
        self, context: kv.Context, ops: tuple[WriteOp, ...], e: kv.KvError | None
    ) -> kv.RawWriteResponse:
        if e is not None:
            return kv.RawWriteResponse(error=e)
        done = await self._write(context, ops)
        if isinstance(done, WriteDone):
            return kv.RawWriteResponse()
        return kv.RawWriteResponse(region_error=done)

    async def raw_put(self, req: kv.RawPutRequest, _: RequestContext) -> kv.RawWriteResponse:
        e = self._check_key(req.key) or self._check_value(req.value)
        return await self._plain_write(req.context, (Put(req.key, req.value),), e)

    async def raw_batch_put(
        self, req: kv.RawBatchPutRequest, _: RequestContext
    ) -> kv.RawWriteResponse:
        e = self._check_keys([k for k, _v in req.pairs])
        for _k, v in req.pairs:
            e = e or self._check_value(v)
        ops = tuple(Put(k, v) for k, v in req.pairs)
        return await self._plain_write(req.context, ops, e)

    async def raw_delete(self, req: kv.RawDeleteRequest, _: RequestContext) -> kv.RawWriteResponse:
        return await self._plain_write(req.context, (Delete(req.key),), self._check_key(req.key))

    async def raw_batch_delete(
        self, req: kv.RawBatchDeleteRequest, _: RequestContext
    ) -> kv.RawWriteResponse:
        ops = tuple(Delete(k) for k in req.keys)
        return await self._plain_write(req.context, ops, self._check_keys(req.keys))

    async def raw_delete_range(
        self, req: kv.RawDeleteRangeRequest, _: RequestContext
    ) -> kv.RawWriteResponse:
        e = self._check_range(req.start_key, req.end_key)
        return await self._plain_write(req.context, (DeleteRange(req.start_key, req.end_key),), e)

    async def raw_compare_and_set(
        self, req: kv.RawCompareAndSetRequest, _: RequestContext
    ) -> kv.RawCompareAndSetResponse:
        e = (
            self._check_key(req.key)
            or self._check_value(req.expected)
            or self._check_value(req.new_value)
        )
        if e is not None:
            return kv.RawCompareAndSetResponse(error=e)
        done = await self._write(
            req.context, (CompareAndSet(req.key, req.expected, req.new_value),)
        )
        if not isinstance(done, WriteDone):
            return kv.RawCompareAndSetResponse(region_error=done)
        r = done.results[0]
        return kv.RawCompareAndSetResponse(succeeded=r.succeeded, previous=r.previous)

"""The KV service's size limits, against a stand-in for the store node:
every write carrying a value over `max_value_size` (put, batch put, either
value of a compare-and-set) is refused with VALUE_TOO_LARGE before anything
reaches the store loop, a batch put over `max_write_bytes` with
REQUEST_TOO_LARGE; a value of exactly the limit goes through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kvproto import kvrpcpb as kv
from kvproto.errorpb import RegionError
from kvproto.raft_cmdpb import WriteOp, WriteResult
from kvproto.rpc import Deferred, RequestContext
from store_node import keys
from store_node.engine import Engine
from store_node.kv_service import KvService, Limits
from store_node.peer import ReadPermit, WriteDone
from tests.factories import region

REGION = region(1, stores=(1,))
CTX = kv.Context(REGION.id, REGION.epoch, REGION.peers[0])
MAX = kv.DEFAULT_MAX_VALUE_SIZE


class Node:
    """Records the writes submitted to the store loop (and applies none);
    grants every read at once."""

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine
        self.submitted: list[tuple[WriteOp, ...]] = []

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    def submit_write(
        self,
        ctx: kv.Context,
        ops: tuple[WriteOp, ...],
        nbytes: int,
        session: kv.SessionRef | None,
        done: Callable[[WriteDone | RegionError], None],
    ) -> None:
        self.submitted.append(ops)
        done(WriteDone(tuple(WriteResult(True) for _ in ops)))

    def submit_read(
        self,
        ctx: kv.Context,
        bounds: Sequence[bytes],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        done(ReadPermit(REGION))

    def count_read(self, region_id: int, nbytes: int, nkeys: int) -> None:
        pass


def _call(service: KvService, request: object) -> Any:
    handler = service.handlers()[type(request)]
    assert isinstance(handler, Deferred)
    answers: list[object] = []
    handler.fn(request, RequestContext("test", 1, 1), answers.append)
    assert len(answers) == 1
    return answers[0]


def test_the_default_limit_is_16_mib() -> None:
    assert Limits().max_value_size == MAX == 16 << 20


def test_every_write_carrying_a_value_over_the_limit_is_refused_before_the_loop() -> None:
    node = Node()
    service = KvService(node, Limits())  # type: ignore[arg-type]
    big = b"x" * (MAX + 1)
    refused = [
        kv.RawPutRequest(CTX, b"k", big),
        kv.RawBatchPutRequest(CTX, ((b"a", b"1"), (b"b", big))),
        kv.RawCompareAndSetRequest(CTX, b"k", None, big),
        kv.RawCompareAndSetRequest(CTX, b"k", big, b"1"),
    ]
    for request in refused:
        resp = _call(service, request)
        assert resp.error is not None, request
        assert resp.error.code == kv.KvErrorCode.VALUE_TOO_LARGE
        assert f"value of {MAX + 1} bytes exceeds the limit of {MAX} bytes" in resp.error.message
    assert node.submitted == []


def test_values_of_exactly_the_limit_with_a_key_of_the_largest_size_go_through() -> None:
    node = Node()
    service = KvService(node, Limits())  # type: ignore[arg-type]
    key = b"k" * keys.MAX_KEY_SIZE
    full = b"x" * MAX
    accepted = [
        kv.RawPutRequest(CTX, key, full),
        kv.RawBatchPutRequest(CTX, ((key, full),)),
        kv.RawCompareAndSetRequest(CTX, key, full, full),
    ]
    for request in accepted:
        resp = _call(service, request)
        assert resp.error is None and resp.region_error is None, request
    assert len(node.submitted) == 3


def test_a_batch_put_over_the_write_bound_is_refused() -> None:
    """Three values of the limit are each fine, but together no frame or log
    entry should have to carry them: one request, one entry, one message."""
    node = Node()
    service = KvService(node, Limits(max_write_bytes=100))  # type: ignore[arg-type]
    resp = _call(service, kv.RawBatchPutRequest(CTX, ((b"a", b"x" * 50), (b"b", b"y" * 50))))
    assert resp.error is not None and resp.error.code == kv.KvErrorCode.REQUEST_TOO_LARGE
    assert "102 bytes of keys and values in one request exceed 100" in resp.error.message
    assert node.submitted == []
    assert Limits().max_write_bytes >= 2 * (MAX + keys.MAX_KEY_SIZE)

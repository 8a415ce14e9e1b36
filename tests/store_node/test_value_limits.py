"""The KV service's size limits, against a stand-in for the store node:
every write carrying a value over `max_value_size` (put, batch put, either
value of a compare-and-set) is refused with VALUE_TOO_LARGE before anything
reaches the store loop, a batch put over `max_write_bytes` with
REQUEST_TOO_LARGE; a value of exactly the limit goes through. Read answers
stop at `MAX_READ_BYTES` and say so (`more`, `unread`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from kvproto import kvrpcpb as kv
from kvproto.errorpb import RegionError
from kvproto.raft_cmdpb import WriteOp, WriteResult
from kvproto.rpc import Deferred, RequestContext
from store_node import keys, kv_service
from store_node.engine import Engine, WriteBatch
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


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = Engine(tmp_path)
    batch = WriteBatch()
    for i in range(5):
        batch.put(keys.DATA_DB, b"k%d" % i, bytes([i]) * 40)
    e.write_kv_batch(batch)
    return e


def test_a_scan_stops_at_the_byte_bound_and_says_more(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv_service, "MAX_READ_BYTES", 100)
    service = KvService(Node(engine), Limits())  # type: ignore[arg-type]
    resp = _call(service, kv.RawScanRequest(CTX, b"", b"", limit=10))
    # 42 bytes a pair: the third passes the bound, the answer stops there.
    assert [k for k, _ in resp.pairs] == [b"k0", b"k1", b"k2"] and resp.more
    resp = _call(service, kv.RawScanRequest(CTX, b"k3", b"", limit=10))
    assert [k for k, _ in resp.pairs] == [b"k3", b"k4"] and not resp.more
    resp = _call(service, kv.RawScanRequest(CTX, b"", b"", limit=10, keys_only=True))
    assert len(resp.pairs) == 5 and not resp.more
    resp = _call(service, kv.RawScanRequest(CTX, b"", b"", limit=10, reverse=True))
    assert [k for k, _ in resp.pairs] == [b"k4", b"k3", b"k2"] and resp.more
    engine.close()


def test_a_batch_get_stops_at_the_byte_bound_and_says_how_many_keys_it_left(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv_service, "MAX_READ_BYTES", 100)
    service = KvService(Node(engine), Limits())  # type: ignore[arg-type]
    asked = (b"k0", b"absent", b"k1", b"k2", b"k3", b"k4")
    resp = _call(service, kv.RawBatchGetRequest(CTX, asked))
    assert [k for k, _ in resp.pairs] == [b"k0", b"k1", b"k2"] and resp.unread == 2
    resp = _call(service, kv.RawBatchGetRequest(CTX, asked[-2:]))
    assert [k for k, _ in resp.pairs] == [b"k3", b"k4"] and resp.unread == 0
    engine.close()


def test_a_scan_goes_on_past_a_key_of_the_largest_size(tmp_path: Path) -> None:
    """A page that ends at a key of the largest size (every page of large
    values does) is followed by one that starts just past it: the key and a
    zero byte, one byte over the key limit, which the store refused
    (KEY_TOO_LARGE), ending the client's scan."""
    e = Engine(tmp_path)
    longest = b"k" * keys.MAX_KEY_SIZE
    batch = WriteBatch()
    for k in (b"k", longest[:-1], longest, longest[:-1] + b"l", b"l"):
        batch.put(keys.DATA_DB, k, b"v")
    e.write_kv_batch(batch)
    service = KvService(Node(e), Limits())  # type: ignore[arg-type]
    after = longest + b"\x00"
    resp = _call(service, kv.RawScanRequest(CTX, after, b"", limit=10))
    assert resp.error is None
    assert [k for k, _ in resp.pairs] == [longest[:-1] + b"l", b"l"]
    resp = _call(service, kv.RawScanRequest(CTX, after, b"", limit=10, reverse=True))
    assert [k for k, _ in resp.pairs] == [b"l", longest[:-1] + b"l"]
    resp = _call(service, kv.RawScanRequest(CTX, after + b"\x00", b"", limit=10))
    assert resp.error is not None and resp.error.code == kv.KvErrorCode.KEY_TOO_LARGE
    e.close()

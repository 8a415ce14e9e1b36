"""The KV service's read paths against a stand-in for the store node: what
a read sees is fixed when its permit is granted; what it returned is
counted for the region's read flow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kvproto import kvrpcpb as kv
from kvproto.errorpb import NotLeader, RegionError
from kvproto.rpc import Deferred, RequestContext
from store_node import keys
from store_node.engine import Engine, WriteBatch
from store_node.kv_service import KvService, Limits
from store_node.peer import ReadPermit
from tests.factories import region

REGION = region(1, stores=(1,))
CTX = kv.Context(REGION.id, REGION.epoch, REGION.peers[0])


class DestroyingNode:
    """Grants every read at once, then does what the store loop's next round
    may do before any other task runs: destroy the region, deleting its data."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def submit_read(
        self,
        ctx: kv.Context,
        bounds: Sequence[bytes],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        done(ReadPermit(REGION))
        batch = WriteBatch()
        batch.delete_range(keys.DATA_DB, b"", b"")
        self.engine.write_kv_batch(batch)

    def count_read(self, region_id: int, nbytes: int, nkeys: int) -> None:
        pass


class CountingNode:
    """Grants every read at once, or refuses it with `refuse`; records what
    the service counts as read."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.refuse: RegionError | None = None
        self.counted: list[tuple[int, int, int]] = []

    def submit_read(
        self,
        ctx: kv.Context,
        bounds: Sequence[bytes],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        done(ReadPermit(REGION) if self.refuse is None else self.refuse)

    def count_read(self, region_id: int, nbytes: int, nkeys: int) -> None:
        self.counted.append((region_id, nbytes, nkeys))


async def _call(service: KvService, request: object) -> Any:
    handler = service.handlers()[type(request)]
    rctx = RequestContext("test", 1, 1)
    if isinstance(handler, Deferred):
        answers: list[object] = []
        handler.fn(request, rctx, answers.append)
        assert len(answers) == 1, "a deferred read must answer in its permit's callback"
        return answers[0]
    return await handler(request, rctx)


async def test_a_scan_reads_the_data_as_of_its_permit(tmp_path: Path) -> None:
    # Finding 7 of issue 11: a scan got its permit in the store loop but read
    # kv/ later, in its own task; a destroy in between deleted the range first.
    engine = Engine(tmp_path)
    batch = WriteBatch()
    for i in range(5):
        batch.put(keys.DATA_DB, b"k%d" % i, b"v%d" % i)
    engine.write_kv_batch(batch)
    service = KvService(DestroyingNode(engine), Limits())  # type: ignore[arg-type]
    resp = await _call(service, kv.RawScanRequest(CTX, b"", b"", limit=10))
    assert resp.region_error is None
    assert [k for k, _ in resp.pairs] == [b"k%d" % i for i in range(5)]
    engine.close()


async def test_a_read_counts_the_keys_and_bytes_it_returned(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    batch = WriteBatch()
    for k, v in [(b"a", b"12345"), (b"bb", b"1"), (b"ccc", b"")]:
        batch.put(keys.DATA_DB, k, v)
    engine.write_kv_batch(batch)
    node = CountingNode(engine)
    service = KvService(node, Limits())  # type: ignore[arg-type]

    async def counted(request: object) -> list[tuple[int, int, int]]:
        resp = await _call(service, request)
        assert resp.error is None
        got, node.counted = node.counted, []
        return got

    assert await counted(kv.RawGetRequest(CTX, b"a")) == [(1, 6, 1)]
    assert await counted(kv.RawGetRequest(CTX, b"zz")) == []  # nothing returned
    assert await counted(kv.RawBatchGetRequest(CTX, (b"a", b"zz", b"bb"))) == [(1, 9, 2)]
    assert await counted(kv.RawScanRequest(CTX, b"", b"", limit=10)) == [(1, 12, 3)]
    assert await counted(kv.RawScanRequest(CTX, b"b", b"", limit=1)) == [(1, 3, 1)]
    scan_keys = kv.RawScanRequest(CTX, b"", b"", limit=10, keys_only=True)
    assert await counted(scan_keys) == [(1, 6, 3)]
    # A read refused at admission read nothing.
    node.refuse = NotLeader(REGION.id, None)
    assert await counted(kv.RawGetRequest(CTX, b"a")) == []
    assert await counted(kv.RawScanRequest(CTX, b"", b"", limit=10)) == []
    engine.close()

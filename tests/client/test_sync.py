"""SyncClient: the async client's calls, blocking, with trio in a thread.

Rules: loopback only (the fake cluster serves on 127.0.0.1 port 0 from a
trio run in its own thread, `fakes.tcp_cluster`); every call is bounded by
the client's deadline; no sleeps.
"""

from __future__ import annotations

import inspect
import threading

import pytest

from client import (
    Client,
    ClientClosed,
    InvalidArgument,
    SyncClient,
    SyncScanIterator,
    UndeterminedError,
)
from kvproto import kvrpcpb as kv
from tests.client.fakes import Hold, on, tcp_cluster

TIMEOUT = 10.0


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member) and name != "close"
    }


def test_the_blocking_client_mirrors_every_call_of_the_async_one() -> None:
    async_calls = {
        n: s
        for n, s in public_methods(Client).items()
        if inspect.iscoroutinefunction(getattr(Client, n)) or n == "scan_iter"
    }
    async_calls.pop("next_scan_page")
    sync_calls = public_methods(SyncClient)
    assert set(sync_calls) == set(async_calls)
    for name, sig in async_calls.items():
        mirror = sync_calls[name]
        assert list(mirror.parameters.values()) == list(sig.parameters.values()), name
        if name == "scan_iter":
            assert mirror.return_annotation == "SyncScanIterator"
        else:
            assert mirror.return_annotation == sig.return_annotation, name


def test_every_call_works_through_the_background_thread() -> None:
    with tcp_cluster([b"g", b"p"]) as c, SyncClient([c.pd_address], timeout=TIMEOUT) as kvc:
        kvc.put(b"a", b"1")
        assert kvc.get(b"a") == b"1"
        assert kvc.get(b"nope") is None
        assert kvc.contains(b"a")
        kvc.batch_put({b"h": b"2", b"q": b"3", b"z": b"4"})
        kvc.batch_put([(b"b", b"5")])
        assert kvc.batch_get([b"z", b"a", b"x"]) == {b"a": b"1", b"z": b"4"}
        assert [k for k, _ in kvc.scan(b"")] == [b"a", b"b", b"h", b"q", b"z"]
        assert [k for k, _ in kvc.scan(b"b", b"r", reverse=True)] == [b"q", b"h", b"b"]
        pages = kvc.scan_iter(b"", page_size=2)
        assert isinstance(pages, SyncScanIterator)
        assert [k for k, _ in pages] == [b"a", b"b", b"h", b"q", b"z"]
        assert kvc.compare_and_set(b"a", b"1", b"9") == (True, b"1")
        assert kvc.put_if_absent(b"a", b"0") == b"9"
        assert kvc.get_and_put(b"a", b"7") == b"9"
        kvc.delete(b"a")
        kvc.batch_delete([b"b", b"h"])
        kvc.delete_range(b"p", b"")
        assert kvc.scan(b"") == []
        # Threads share the client.
        errors: list[BaseException] = []

        def writer(i: int) -> None:
            try:
                kvc.put(b"t%d" % i, b"x")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(kvc.scan(b"t")) == 8


def test_errors_come_out_as_themselves() -> None:
    with tcp_cluster() as c, SyncClient(c.pd_address, timeout=TIMEOUT) as kvc:
        with pytest.raises(InvalidArgument, match="empty key"):
            kvc.get(b"")
        c.stores[1].add_rule(on(kv.RawCompareAndSetRequest), Hold())
        with pytest.raises(UndeterminedError, match="compare_and_set b'k'"):
            kvc.compare_and_set(b"k", None, b"v", timeout=0.3)
    with pytest.raises(ClientClosed):
        kvc.get(b"k")
    kvc.close()  # idempotent


def test_closing_stops_the_thread() -> None:
    before = {t.name for t in threading.enumerate()}
    kvc = SyncClient(["127.0.0.1:1"], timeout=TIMEOUT)
    assert "shardkv-client" in {t.name for t in threading.enumerate()} - before
    kvc.close()
    assert "shardkv-client" not in {t.name for t in threading.enumerate()} - before

"""The async client against a fake PD and fake stores (tests/client/fakes):
values over `ClientConfig.max_value_size` are refused before anything is
sent, with ValueTooLarge naming the size and the limit; a store's own
VALUE_TOO_LARGE is the same error, not retried; reads whose answers the
stores cut at their byte bound (large values) still return everything.

Every test takes `autojump_clock` and the fixture `h`; rules: conftest.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from client import Client, ClientConfig, InvalidArgument, ValueTooLarge
from kvproto import kvrpcpb as kv
from tests.client.fakes import Harness, on

MAX = kv.DEFAULT_MAX_VALUE_SIZE
BIG = b"x" * (MAX + 1)

CALLS: list[tuple[str, Callable[[Client], Awaitable[object]]]] = [
    ("put b'k'", lambda c: c.put(b"k", BIG)),
    ("batch_put b'b'", lambda c: c.batch_put([(b"a", b"1"), (b"b", BIG)])),
    ("compare_and_set b'k'", lambda c: c.compare_and_set(b"k", None, BIG)),
    ("compare_and_set b'k'", lambda c: c.compare_and_set(b"k", BIG, b"1")),
    ("put_if_absent b'k'", lambda c: c.put_if_absent(b"k", BIG)),
    ("get_and_put b'k'", lambda c: c.get_and_put(b"k", BIG)),
]


@pytest.mark.parametrize(("what", "call"), CALLS, ids=[str(i) for i in range(len(CALLS))])
async def test_a_value_over_the_limit_is_refused_before_anything_is_sent(
    what: str,
    call: Callable[[Client], Awaitable[object]],
    autojump_clock: trio.testing.MockClock,
    h: Harness,
) -> None:
    with pytest.raises(ValueTooLarge) as info:
        await call(h.kv)
    e = info.value
    assert isinstance(e, InvalidArgument)
    assert (e.size, e.limit) == (MAX + 1, MAX)
    assert str(e).startswith(f"{what}: invalid argument: ")
    assert f"of {MAX + 1} bytes exceeds the limit of {MAX} bytes (max_value_size)" in str(e)
    assert h.cluster.seen == [] and not h.cluster.data


async def test_a_value_of_exactly_the_limit_is_sent(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"x" * MAX)
    assert h.cluster.data[b"k"] == b"x" * MAX


@pytest.mark.cluster(config=ClientConfig(max_value_size=10))
async def test_the_limit_is_the_clients_config(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0123456789")
    with pytest.raises(ValueTooLarge, match="value of 11 bytes exceeds the limit of 10 bytes"):
        await h.kv.put(b"k", b"0123456789a")
    assert h.cluster.data[b"k"] == b"0123456789"


async def test_the_stores_refusal_is_value_too_large_and_not_retried(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    """A store with a lower `max_value_size` than the client's."""
    refusal = kv.KvError(
        kv.KvErrorCode.VALUE_TOO_LARGE,
        "value of 2000 bytes exceeds the limit of 1024 bytes (max_value_size)",
    )
    h.store(1).add_rule(on(kv.RawPutRequest), refusal)
    with pytest.raises(ValueTooLarge, match="value of 2000 bytes exceeds the limit of 1024"):
        await h.kv.put(b"k", b"x" * 2000)
    assert len(h.cluster.seen) == 1 and not h.cluster.data


def test_the_config_refuses_limits_no_store_takes() -> None:
    with pytest.raises(ValueError, match="max_value_size"):
        ClientConfig(max_value_size=kv.MAX_VALUE_SIZE_LIMIT + 1)
    with pytest.raises(ValueError, match="batch_max_bytes"):
        ClientConfig(batch_max_bytes=kv.MAX_WRITE_BYTES + 1)
    assert ClientConfig().max_value_size == MAX == 16 << 20


@pytest.mark.cluster([b"m"])
async def test_scans_page_on_when_a_store_cuts_an_answer_at_its_byte_bound(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    data = {b"%s%02d" % (p, i): bytes([i]) * 100 for p in (b"a", b"x") for i in range(10)}
    h.cluster.data.update(data)
    h.cluster.max_read_bytes = 250  # three pairs an answer
    assert await h.kv.scan(b"", b"") == sorted(data.items())
    assert await h.kv.scan(b"", b"", reverse=True) == sorted(data.items(), reverse=True)
    assert await h.kv.scan(b"a05", b"x03", limit=7) == sorted(data.items())[5:12]
    pages = [p async for p in h.kv.scan_iter(b"", b"", page_size=4)]
    assert pages == sorted(data.items())
    scans = [s for s in h.cluster.seen if s.kind == "Scan"]
    assert len(scans) > 8


@pytest.mark.cluster([b"m"])
async def test_a_batch_get_asks_again_for_the_keys_a_store_left_unread(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    data = {b"%s%02d" % (p, i): bytes([i]) * 100 for p in (b"a", b"x") for i in range(10)}
    h.cluster.data.update(data)
    h.cluster.max_read_bytes = 250
    asked = [*data, b"a99", b"b00"]
    assert await h.kv.batch_get(asked) == dict(sorted(data.items()))
    gets = [s for s in h.cluster.seen if s.kind == "BatchGet"]
    assert len(gets) >= 6

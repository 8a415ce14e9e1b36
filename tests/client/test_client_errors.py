"""The async client against a fake PD and fake stores (tests/client/fakes):
which errors of the stores and the PD are retried, with what backoff, and
which end the call with which exception.

Every test takes `autojump_clock` and the fixture `h`; rules: conftest.py.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from client import (
    ClientClosed,
    ClusterMismatch,
    DeadlineExceeded,
    InvalidArgument,
    PdUnavailable,
    StoreDiskFull,
    StoreError,
    UndeterminedError,
)
from kvproto import kvrpcpb as kv
from kvproto import pdpb
from kvproto.errorpb import (
    DiskFull,
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    ServerIsBusy,
    StaleCommand,
    StoreNotMatch,
)
from kvproto.metapb import RegionId, StoreId
from tests.client.fakes import PD_ADDRESS, Harness, on

# -- region errors and invalid requests ----------------------------------------


async def test_an_election_everywhere_ends_in_deadline_exceeded_naming_key_and_cause(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.cluster.move_leader(1, None)
    start = trio.current_time()
    with pytest.raises(DeadlineExceeded) as info:
        await h.kv.get(b"k", timeout=2.0)
    assert trio.current_time() - start <= 2.0
    msg = str(info.value)
    assert "get b'k'" in msg and "deadline of 2 s" in msg
    assert "not leader (leader unknown)" in msg
    # backed off rather than spinning
    assert 5 < len(h.cluster.seen) < 100
    assert {s.store_id for s in h.cluster.seen} == {1, 2, 3}


async def test_server_is_busy_backs_off_at_least_its_hint(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    h.store(1).add_rule(on(kv.RawPutRequest), ServerIsBusy("queue full", 300), times=2)
    start = trio.current_time()
    await h.kv.put(b"k", b"2")
    assert trio.current_time() - start >= 0.6
    assert h.cluster.data[b"k"] == b"2"


async def test_a_store_out_of_disk_space_ends_writes_with_store_disk_full_naming_it(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"1")
    writes = (kv.RawPutRequest, kv.RawBatchPutRequest, kv.RawCompareAndSetRequest)
    h.store(1).add_rule(on(writes), DiskFull("1MiB free, below the reserve of 256MiB"), 1000)
    start = trio.current_time()
    with pytest.raises(StoreDiskFull) as info:
        await h.kv.put(b"k", b"2", timeout=3.0)
    assert trio.current_time() - start <= 3.0
    error = info.value
    assert isinstance(error, DeadlineExceeded) and error.store_id == 1
    msg = str(error)
    assert msg.startswith("put b'k': store 1 is out of disk space and refuses writes; deadline")
    assert "disk full (1MiB free, below the reserve of 256MiB)" in msg
    # Backed off rather than spinning, and nothing was written.
    assert 3 < len(h.cluster.seen) - 1 < 20
    assert h.cluster.data[b"k"] == b"1"
    # Reads are not refused; conditional writes end alike.
    assert await h.kv.get(b"k") == b"1"
    with pytest.raises(StoreDiskFull):
        await h.kv.compare_and_set(b"k", b"1", b"3", timeout=1.0)
    # Space freed: the same call goes through.
    h.store(1).script.clear()
    await h.kv.put(b"k", b"4")
    assert h.cluster.data[b"k"] == b"4"


async def test_stale_command_is_retried_even_for_compare_and_set(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), StaleCommand())
    assert await h.kv.compare_and_set(b"k", None, b"1") == (True, None)
    assert [s.answer for s in h.cluster.seen] == ["StaleCommand", "ok"]


@pytest.mark.parametrize(
    "error",
    [
        NotLeader(RegionId(1), None),
        EpochNotMatch(()),
        KeyNotInRegion(b"k", RegionId(1), b"", b"a"),
        ServerIsBusy("busy", 10),
        StaleCommand(),
        StoreNotMatch(StoreId(9), StoreId(1)),
        DiskFull("full"),
    ],
)
async def test_errors_that_prove_nothing_was_applied_retry_conditional_writes(
    error: object, autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.cluster.data[b"k"] = b"0"
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), error)  # type: ignore[arg-type]
    assert await h.kv.compare_and_set(b"k", b"0", b"1") == (True, b"0")
    assert h.cluster.data[b"k"] == b"1"


async def test_an_invalid_request_is_not_retried(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    with pytest.raises(InvalidArgument, match="key_too_large"):
        await h.kv.put(b"x" * 100, b"v")
    assert len(h.cluster.seen) == 1
    with pytest.raises(InvalidArgument, match="empty key"):
        await h.kv.get(b"")
    with pytest.raises(InvalidArgument, match="end key is below start key"):
        await h.kv.scan(b"b", b"a")
    with pytest.raises(InvalidArgument, match="limit must be positive"):
        await h.kv.scan(b"a", limit=0)
    with pytest.raises(TypeError, match="key must be bytes"):
        await h.kv.get("k")  # type: ignore[arg-type]
    assert len(h.cluster.seen) == 1


# -- the PD, store failures and a closed client --------------------------------


async def test_an_unreachable_pd_raises_pd_unavailable(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.net.kill(PD_ADDRESS)
    with pytest.raises(PdUnavailable, match=r"get b'k'.*PD"):
        await h.kv.get(b"k", timeout=2)
    assert isinstance(PdUnavailable("w", 1, 1, "c"), DeadlineExceeded)


async def test_pd_errors_are_retried_but_another_cluster_is_not(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.pd.errors = [pdpb.PdError(pdpb.PdErrorCode.NOT_BOOTSTRAPPED, "not yet")] * 3
    start = trio.current_time()
    await h.kv.put(b"k", b"1")
    assert trio.current_time() > start
    h.kv.cache.clear()
    h.pd.errors = [pdpb.PdError(pdpb.PdErrorCode.CLUSTER_MISMATCH, "cluster 8")]
    with pytest.raises(ClusterMismatch, match="get b'k'"):
        await h.kv.get(b"k")


async def test_a_store_internal_error_fails_a_read_and_undetermines_a_write(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).script.clear()

    async def boom(req: object, ctx: object) -> object:
        raise RuntimeError("disk on fire")

    h.store(1).handle = boom  # type: ignore[method-assign]
    h.net.servers[h.store(1).address] = h.store(1).server()
    h.net.cut(h.store(1).address)
    with pytest.raises(StoreError, match="disk on fire"):
        await h.kv.get(b"k")
    with pytest.raises(UndeterminedError, match="disk on fire"):
        await h.kv.put(b"k", b"1")


async def test_a_closed_client_refuses_calls(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.kv.close()
    with pytest.raises(ClientClosed):
        await h.kv.get(b"k")

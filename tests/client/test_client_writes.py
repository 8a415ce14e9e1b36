"""The async client against a fake PD and fake stores (tests/client/fakes):
writes whose outcome is unknown (a lost connection, no answer), retried in
their session or reported as undetermined, and the deadlines that bound
every call.

Every test takes `autojump_clock` and the fixture `h`; rules: conftest.py.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from client import (
    ClientConfig,
    DeadlineExceeded,
    UndeterminedError,
)
from kvproto import kvrpcpb as kv
from kvproto.errorpb import (
    NotLeader,
    RegionNotFound,
)
from kvproto.metapb import RegionId
from tests.client.fakes import Cut, Harness, Hold, on

# -- lost connections and sessions ---------------------------------------------


async def test_compare_and_set_after_a_lost_connection_is_retried_in_its_session(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # The first attempt applied and its answer was lost with the connection;
    # the retry carries the same request number and gets that answer, where
    # applying it again would answer (False, b"1").
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), Cut(apply=True))
    assert await h.kv.compare_and_set(b"k", None, b"1") == (True, None)
    answers = [s.answer for s in h.cluster.seen]
    assert answers[0] == "Cut" and answers[-1] == "ok", answers
    assert len(h.cluster.session_answers) == 1
    assert h.cluster.data[b"k"] == b"1"


async def test_put_after_a_lost_connection_is_not_applied_again_after_a_later_delete(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # The retried-put bug of issue 11: put applied, answer lost; meanwhile
    # another client deletes the key; the retry must not bring the value back.
    h.store(1).add_rule(on(kv.RawPutRequest), Cut(apply=True))
    h.store(1).latency = 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.kv.put, b"k", b"1")
        await trio.sleep(0.001)  # the put applied, its connection is cut
        assert h.cluster.data.get(b"k") == b"1"
        h.cluster.data.pop(b"k")  # another client's delete
    assert b"k" not in h.cluster.data


async def test_a_put_after_a_lost_connection_is_retried(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawPutRequest), Cut(apply=True))
    await h.kv.put(b"k", b"1")
    assert h.cluster.data[b"k"] == b"1"
    # Store 1 got it twice: once cut, once answered (other peers
    # were asked in between, and named store 1 as the leader).
    assert [s.answer for s in h.cluster.seen if s.store_id == 1] == ["ok", "Cut", "ok"]


@pytest.mark.cluster(config=ClientConfig(exactly_once=False))
async def test_without_a_session_compare_and_set_after_a_lost_connection_is_undetermined(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), Cut(apply=True))
    with pytest.raises(UndeterminedError) as info:
        await h.kv.compare_and_set(b"k", None, b"1")
    assert "compare_and_set b'k'" in str(info.value)
    assert "connection lost" in str(info.value)
    assert h.cluster.kinds_seen() == ["CompareAndSet"]  # never retried
    assert h.cluster.data[b"k"] == b"1"  # and it did apply


@pytest.mark.cluster(config=ClientConfig(exactly_once=False))
async def test_without_a_session_region_not_found_makes_a_conditional_write_undetermined(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # A store answers RegionNotFound to the proposals in flight of a peer it
    # destroys, which may have committed elsewhere: no proof of non-execution.
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), RegionNotFound(RegionId(1)))
    with pytest.raises(UndeterminedError, match="compare_and_set b'k'"):
        await h.kv.compare_and_set(b"k", None, b"1")
    # while a put is retried
    h.store(1).add_rule(on(kv.RawPutRequest), RegionNotFound(RegionId(1)))
    await h.kv.put(b"k", b"2")
    assert h.cluster.data[b"k"] == b"2"


@pytest.mark.parametrize("call", ["batch_put", "delete_range"])
@pytest.mark.cluster([b"m"], config=ClientConfig(timeout=3.0))
async def test_a_multi_region_write_that_fails_after_writing_part_is_undetermined(
    call: str, autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # Found by the simulation: one region's part applied, the other's region
    # had no leader until the deadline, and the call raised DeadlineExceeded,
    # which promises that nothing was written.
    await h.kv.batch_put({b"a": b"0", b"z": b"0"})
    no_leader = NotLeader(h.cluster.region_of(b"z").id, None)
    for s in h.cluster.store_ids:
        h.store(s).add_rule(
            on((kv.RawBatchPutRequest, kv.RawDeleteRangeRequest), key=b"z"),
            no_leader,
            times=10_000,
        )
    with pytest.raises(UndeterminedError, match="part of the call was written"):
        if call == "batch_put":
            await h.kv.batch_put({b"a": b"1", b"z": b"1"})
        else:
            await h.kv.delete_range(b"a", b"")
    assert h.cluster.data.get(b"a") == (b"1" if call == "batch_put" else None)
    assert h.cluster.data[b"z"] == b"0"


# -- deadlines -----------------------------------------------------------------


@pytest.mark.parametrize("call", ["put_if_absent", "get_and_put"])
async def test_conditional_writes_after_a_timeout_are_undetermined(
    call: str, autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), Hold(), times=100)
    start = trio.current_time()
    with pytest.raises(UndeterminedError, match=f"{call} b'k'"):
        await getattr(h.kv, call)(b"k", b"1", timeout=3)
    assert trio.current_time() - start == pytest.approx(3)
    assert "CompareAndSet" in h.cluster.kinds_seen()


async def test_a_put_that_never_gets_an_answer_is_undetermined_not_just_late(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawPutRequest), Hold())
    with pytest.raises(UndeterminedError, match=r"put b'k'.*deadline of 2 s"):
        await h.kv.put(b"k", b"1", timeout=2)


async def test_a_write_that_may_have_applied_stays_undetermined_at_the_deadline(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawPutRequest), Cut(apply=False))
    h.cluster.move_leader(1, None)  # then nobody leads until the deadline
    with pytest.raises(UndeterminedError, match="put b'k'"):
        await h.kv.put(b"k", b"1", timeout=2)


async def test_a_read_that_never_gets_an_answer_exceeds_the_deadline(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawGetRequest), Hold())
    start = trio.current_time()
    with pytest.raises(DeadlineExceeded, match=r"get b'k'.*no answer within"):
        await h.kv.get(b"k", timeout=1.5)
    assert trio.current_time() - start == pytest.approx(1.5)


@pytest.mark.cluster(config=ClientConfig(timeout=4.0))
async def test_the_default_deadline_comes_from_the_config(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawGetRequest), Hold(), times=100)
    start = trio.current_time()
    with pytest.raises(DeadlineExceeded, match="deadline of 4 s"):
        await h.kv.get(b"k")
    assert trio.current_time() - start == pytest.approx(4.0)


@pytest.mark.cluster(config=ClientConfig(timeout=10.0, attempt_timeout=1.5))
async def test_an_attempt_that_gets_no_answer_moves_on_before_the_deadline(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    # A stopped store (or a leader cut off from its followers) never
    # answers: after attempt_timeout the call tries the other peers, and
    # the write, in its session, is applied once.
    h.store(1).add_rule(on(kv.RawCompareAndSetRequest), Hold())
    start = trio.current_time()
    assert await h.kv.compare_and_set(b"k", None, b"1") == (True, None)
    assert 1.5 <= trio.current_time() - start < 3.0
    assert h.cluster.data[b"k"] == b"1"


async def test_a_cancel_scope_bounds_a_call_too(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"0")
    h.store(1).add_rule(on(kv.RawGetRequest), Hold())
    start = trio.current_time()
    with trio.move_on_after(0.5) as scope:
        await h.kv.get(b"k")
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(0.5)
    assert await h.kv.get(b"k") == b"0"  # the client is fine afterwards

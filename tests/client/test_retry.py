"""The retry policy, as pure functions: each error, for each kind of call.
No trio, no clock: `now` is a number and randomness a seeded Random."""

from __future__ import annotations

import random
import typing

import pytest

from client import retry
from client.cache import CachedRegion, RegionCache
from client.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PdUnavailable,
    StoreError,
    UndeterminedError,
)
from client.retry import Attempts, BackoffKind, GiveUp, OpKind, Retry
from client.session import Session
from kvproto import kvrpcpb as kv
from kvproto.errorpb import (
    DiskFull,
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    RegionError,
    RegionNotFound,
    ServerIsBusy,
    StaleCommand,
    StoreNotMatch,
    UndeterminedResult,
)
from kvproto.metapb import RegionId, StoreId
from kvproto.rpc import (
    RpcConnectionLostError,
    RpcError,
    RpcErrorCode,
    RpcProtocolError,
    RpcRemoteError,
    RpcTimeoutError,
    RpcUnavailableError,
)
from kvproto.rpc.reconnect import Backoff
from tests.factories import epoch, peer, region

REGION = region(1)
P1, P2, P3 = REGION.peers


def setup(kind: OpKind = OpKind.READ) -> tuple[RegionCache, CachedRegion, Attempts]:
    cache = RegionCache()
    cache.insert(REGION, P1)
    entry = cache.get(1)
    assert entry is not None
    att = Attempts("get b'k'", kind, deadline=10.0, timeout=10.0, rng=random.Random(1))
    return cache, entry, att


# -- the table ------------------------------------------------------------------


def test_the_policy_table_names_every_region_error() -> None:
    names = {row[0].split("(")[0] for row in retry.POLICY}
    for cls in typing.get_args(RegionError):
        assert cls.__name__ in names


@pytest.mark.parametrize(
    ("error", "proof"),
    [
        (NotLeader(RegionId(1), None), True),
        (EpochNotMatch(()), True),
        (KeyNotInRegion(b"k", RegionId(1), b"", b""), True),
        (ServerIsBusy("x"), True),
        (StaleCommand(), True),
        (StoreNotMatch(StoreId(1), StoreId(2)), True),
        (DiskFull("full"), True),
        (RegionNotFound(RegionId(1)), False),
        (UndeterminedResult(), False),
        (RpcUnavailableError("x"), True),
        (RpcConnectionLostError("x"), False),
        (RpcTimeoutError("x"), False),
        (RpcProtocolError("x"), False),
        (RpcRemoteError(RpcError(RpcErrorCode.INTERNAL, "x")), False),
        (RpcRemoteError(RpcError(RpcErrorCode.UNKNOWN_MESSAGE, "x")), True),
    ],
)
def test_which_answers_prove_a_write_was_not_applied(error: object, proof: bool) -> None:
    assert retry.proves_not_applied(error) is proof  # type: ignore[arg-type]


# -- region errors ------------------------------------------------------------------


def test_not_leader_with_a_known_hint_retries_at_once_there() -> None:
    cache, entry, att = setup()
    d = retry.on_region_error(cache, entry, P1, NotLeader(RegionId(1), P2), att)
    assert d == Retry(None)
    assert entry.leader == P2
    assert "not leader" in att.last_cause


def test_not_leader_naming_a_store_that_failed_gives_it_another_chance_later() -> None:
    cache, entry, att = setup()
    att.avoid.add(StoreId(1))
    d = retry.on_region_error(cache, entry, P2, NotLeader(RegionId(1), P1), att)
    assert d == Retry(BackoffKind.LEADER)
    assert StoreId(1) not in att.avoid


def test_not_leader_without_a_hint_rotates_through_the_peers() -> None:
    cache, entry, att = setup()
    d = retry.on_region_error(cache, entry, P1, NotLeader(RegionId(1), None), att)
    assert d == Retry(BackoffKind.LEADER)
    assert entry.leader == P2
    retry.on_region_error(cache, entry, P2, NotLeader(RegionId(1), None), att)
    retry.on_region_error(cache, entry, P3, NotLeader(RegionId(1), None), att)
    assert entry.leader == P1


def test_not_leader_naming_an_unknown_peer_reloads_the_region() -> None:
    cache, entry, att = setup()
    stranger = peer(99, 9)
    d = retry.on_region_error(cache, entry, P1, NotLeader(RegionId(1), stranger), att)
    assert d == Retry(BackoffKind.REGION_MISS)
    assert cache.get(1) is None


def test_epoch_not_match_with_newer_regions_updates_the_cache_and_retries_at_once() -> None:
    cache, entry, att = setup()
    left = REGION.with_range(b"", b"m").with_epoch(epoch(version=2))
    right = region(2, b"m", version=2, peers=REGION.peers)
    d = retry.on_region_error(cache, entry, P1, EpochNotMatch((left, right)), att)
    assert d == Retry(None)
    assert [e.region for e in cache] == [left, right]


def test_epoch_not_match_with_nothing_newer_reloads_later() -> None:
    cache, entry, att = setup()
    d = retry.on_region_error(cache, entry, P1, EpochNotMatch((REGION,)), att)
    assert d == Retry(BackoffKind.REGION_MISS)
    assert len(cache) == 0


@pytest.mark.parametrize(
    "error",
    [RegionNotFound(RegionId(1)), KeyNotInRegion(b"k", RegionId(1), b"a", b"b")],
)
def test_region_not_found_and_key_not_in_region_reload_the_region(error: RegionError) -> None:
    cache, entry, att = setup()
    assert retry.on_region_error(cache, entry, P1, error, att) == Retry(BackoffKind.REGION_MISS)
    assert len(cache) == 0


def test_region_not_found_fails_a_conditional_write_and_marks_a_plain_one() -> None:
    cache, entry, att = setup(OpKind.CONDITIONAL_WRITE)
    d = retry.on_region_error(cache, entry, P1, RegionNotFound(RegionId(1)), att)
    assert isinstance(d, GiveUp) and isinstance(d.error, UndeterminedError)
    cache, entry, att = setup(OpKind.WRITE)
    d = retry.on_region_error(cache, entry, P1, RegionNotFound(RegionId(1)), att)
    assert isinstance(d, Retry) and att.maybe_executed


def test_an_undetermined_result_is_retried_for_writes_and_undetermined_for_conditional() -> None:
    cache, entry, att = setup(OpKind.WRITE)
    d = retry.on_region_error(cache, entry, P1, UndeterminedResult(), att)
    assert d == Retry(BackoffKind.LEADER) and att.maybe_executed
    cache, entry, att = setup(OpKind.CONDITIONAL_WRITE)
    d = retry.on_region_error(cache, entry, P1, UndeterminedResult(), att)
    assert isinstance(d, GiveUp) and isinstance(d.error, UndeterminedError)


def test_server_is_busy_waits_at_least_its_hint() -> None:
    cache, entry, att = setup()
    d = retry.on_region_error(cache, entry, P1, ServerIsBusy("full", 700), att)
    assert d == Retry(BackoffKind.BUSY, floor=0.7)
    assert att.plan(d, now=0.0) >= 0.7


def test_stale_command_and_store_not_match() -> None:
    cache, entry, att = setup(OpKind.CONDITIONAL_WRITE)
    assert retry.on_region_error(cache, entry, P1, StaleCommand(), att) == Retry(BackoffKind.LEADER)
    d = retry.on_region_error(cache, entry, P1, StoreNotMatch(StoreId(1), StoreId(4)), att)
    assert d == Retry(BackoffKind.REGION_MISS, forget_store=StoreId(1))
    assert not att.maybe_executed


# -- connection errors ------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(OpKind))
def test_a_request_never_sent_is_retried_elsewhere(kind: OpKind) -> None:
    cache, entry, att = setup(kind)
    d = retry.on_rpc_error(cache, entry, P1, RpcUnavailableError("refused"), att)
    assert d == Retry(BackoffKind.STORE, forget_store=StoreId(1))
    assert att.avoid == {StoreId(1)}
    assert not att.maybe_executed
    assert len(cache) == 0


def test_a_lost_connection_retries_reads_and_writes_but_not_conditional_writes() -> None:
    for kind in (OpKind.READ, OpKind.WRITE):
        cache, entry, att = setup(kind)
        d = retry.on_rpc_error(cache, entry, P1, RpcConnectionLostError("lost"), att)
        assert isinstance(d, Retry)
        assert att.maybe_executed is (kind is OpKind.WRITE)
    cache, entry, att = setup(OpKind.CONDITIONAL_WRITE)
    d = retry.on_rpc_error(cache, entry, P1, RpcConnectionLostError("lost"), att)
    assert isinstance(d, GiveUp) and isinstance(d.error, UndeterminedError)
    assert "get b'k'" in str(d.error) and "lost" in str(d.error)


def test_a_timeout_ends_the_call() -> None:
    expected = {
        OpKind.READ: DeadlineExceeded,
        OpKind.WRITE: UndeterminedError,
        OpKind.CONDITIONAL_WRITE: UndeterminedError,
    }
    for kind, error in expected.items():
        cache, entry, att = setup(kind)
        d = retry.on_rpc_error(cache, entry, P1, RpcTimeoutError("no answer"), att)
        assert isinstance(d, GiveUp) and type(d.error) is error


def test_a_store_that_answers_garbage_fails_the_call() -> None:
    internal = RpcRemoteError(RpcError(RpcErrorCode.INTERNAL, "boom"))
    unknown = RpcRemoteError(RpcError(RpcErrorCode.UNKNOWN_MESSAGE, "what"))
    for err, kind, error in [
        (internal, OpKind.READ, StoreError),
        (internal, OpKind.WRITE, UndeterminedError),
        (unknown, OpKind.WRITE, StoreError),
        (RpcProtocolError("bad"), OpKind.READ, StoreError),
        (RpcProtocolError("bad"), OpKind.CONDITIONAL_WRITE, UndeterminedError),
    ]:
        cache, entry, att = setup(kind)
        d = retry.on_rpc_error(cache, entry, P1, err, att)
        assert isinstance(d, GiveUp) and type(d.error) is error, (err, kind)


# -- backoff and deadlines ------------------------------------------------------------------


def test_backoff_doubles_per_kind_with_jitter_up_to_its_cap() -> None:
    _, _, att = setup()
    att.deadline = att.timeout = 1e9
    cfg = retry.DEFAULT_BACKOFFS[BackoffKind.LEADER]
    for n in range(1, 12):
        d = att.plan(Retry(BackoffKind.LEADER), now=0.0)
        full = min(cfg.max_delay, cfg.initial * 2 ** (n - 1))
        assert full / 2 <= d <= full
    # Another kind has its own count.
    pd = retry.DEFAULT_BACKOFFS[BackoffKind.PD]
    assert pd.initial / 2 <= att.plan(Retry(BackoffKind.PD), now=0.0) <= pd.initial


def test_each_kind_waits_as_its_backoff_says() -> None:
    _, _, att = setup()
    att.deadline = att.timeout = 1e9
    busy = Backoff(initial=0.1, multiplier=3, max_delay=1.0, jitter=0)
    att.backoffs = {**retry.DEFAULT_BACKOFFS, BackoffKind.BUSY: busy}
    delays = [att.plan(Retry(BackoffKind.BUSY), now=0.0) for _ in range(4)]
    assert delays == pytest.approx([0.1, 0.3, 0.9, 1.0])


def test_immediate_retries_are_bounded() -> None:
    _, _, att = setup()
    delays = [att.plan(Retry(None), now=0.0) for _ in range(5)]
    assert delays[:3] == [0.0, 0.0, 0.0]
    assert all(d > 0 for d in delays[3:])
    att.plan(Retry(BackoffKind.STORE), now=0.0)  # a real backoff resets the count
    assert att.plan(Retry(None), now=0.0) == 0.0


def test_a_wait_that_would_pass_the_deadline_raises_now() -> None:
    _, _, att = setup()
    att.note("store 1: region 1: not leader (leader unknown)")
    with pytest.raises(DeadlineExceeded) as info:
        att.plan(Retry(BackoffKind.BUSY, floor=5.0), now=6.0)
    assert "get b'k'" in str(info.value)
    assert "last cause: store 1: region 1: not leader" in str(info.value)
    with pytest.raises(DeadlineExceeded):
        att.check(10.0)
    att.check(9.99)


def test_the_deadline_error_says_what_is_known() -> None:
    _, _, att = setup()
    att.note("PD: cannot connect", pd=True)
    assert isinstance(att.expired(), PdUnavailable)
    _, _, att = setup(OpKind.WRITE)
    assert type(att.expired()) is DeadlineExceeded
    att.maybe_executed = True
    assert isinstance(att.expired(), UndeterminedError)
    child = att.child("put b'x'")
    assert child.maybe_executed and child.deadline == att.deadline


def test_giving_up_raises_the_decision_error() -> None:
    _, _, att = setup()
    with pytest.raises(StoreError):
        att.plan(GiveUp(StoreError("get b'k'", "boom")), now=0.0)


def test_pd_and_store_lookups() -> None:
    cache, entry, att = setup()
    assert retry.on_pd_error("refused", att) == Retry(BackoffKind.PD)
    assert att.pd_cause
    d = retry.on_store_unknown(cache, entry, StoreId(1), "tombstone", att)
    assert d == Retry(BackoffKind.REGION_MISS, forget_store=StoreId(1))
    assert not att.pd_cause and StoreId(1) in att.avoid
    cache.insert(REGION)
    entry = cache.get(1)
    assert entry is not None
    assert retry.on_no_peer(cache, entry, att) == Retry(BackoffKind.STORE)
    assert not att.avoid
    assert retry.on_region_unknown("b'k'", att) == Retry(BackoffKind.REGION_MISS)


# -- exactly-once writes ---------------------------------------------------------------


def _with_session(kind: OpKind) -> tuple[RegionCache, CachedRegion, Attempts, Session]:
    cache, entry, att = setup(kind)
    session = Session.open(random.Random(3), now_ms=1_000)
    att.begin_request(session)
    return cache, entry, att, session


@pytest.mark.parametrize(
    "error",
    [RpcConnectionLostError("lost"), RegionNotFound(RegionId(1)), UndeterminedResult()],
)
def test_in_a_session_a_conditional_write_is_retried_after_an_unknown_outcome(
    error: object,
) -> None:
    cache, entry, att, _ = _with_session(OpKind.CONDITIONAL_WRITE)
    ref = att.session_ref()
    assert ref is not None and not ref.retry
    if isinstance(error, RpcConnectionLostError):
        d = retry.on_rpc_error(cache, entry, P1, error, att)
    else:
        d = retry.on_region_error(cache, entry, P1, error, att)  # type: ignore[arg-type]
    assert isinstance(d, Retry) and att.maybe_executed
    again = att.session_ref()
    assert again is not None and again.retry and again.seq == ref.seq


def test_in_a_session_the_deadline_after_an_unknown_outcome_is_undetermined() -> None:
    cache, entry, att, _ = _with_session(OpKind.CONDITIONAL_WRITE)
    d = retry.on_rpc_error(cache, entry, P1, RpcTimeoutError("slow"), att)
    assert isinstance(d, GiveUp) and isinstance(d.error, UndeterminedError)


def test_a_forgotten_session_is_undetermined_only_if_an_attempt_may_have_applied() -> None:
    _, _, att, _ = _with_session(OpKind.WRITE)
    assert retry.on_session_expired(P1, att) == Retry(None, renew_session=True)
    att.maybe_executed = True
    d = retry.on_session_expired(P1, att)
    assert isinstance(d, GiveUp) and isinstance(d.error, UndeterminedError)


def test_a_batch_group_keeps_the_calls_request_number() -> None:
    _, _, att, session = _with_session(OpKind.WRITE)
    child = att.child("batch_put part")
    assert child.seq == att.seq and child.session is session


def test_judge_passes_answers_and_decides_errors() -> None:
    cache, entry, att, _ = _with_session(OpKind.CONDITIONAL_WRITE)
    ok = kv.RawCompareAndSetResponse(succeeded=True)
    assert retry.judge(cache, entry, P1, ok, kv.RawCompareAndSetResponse, att) is ok
    wrong = kv.RawWriteResponse()
    d = retry.judge(cache, entry, P1, wrong, kv.RawCompareAndSetResponse, att)
    assert isinstance(d, Retry) and att.maybe_executed  # a protocol error may have run
    expired = kv.RawCompareAndSetResponse(
        error=kv.KvError(kv.KvErrorCode.SESSION_EXPIRED, "forgotten")
    )
    d = retry.judge(cache, entry, P1, expired, kv.RawCompareAndSetResponse, att)
    assert isinstance(d, GiveUp) and isinstance(d.error, UndeterminedError)
    bad = kv.RawCompareAndSetResponse(error=kv.KvError(kv.KvErrorCode.KEY_TOO_LARGE, "big"))
    with pytest.raises(InvalidArgument):
        retry.judge(cache, entry, P1, bad, kv.RawCompareAndSetResponse, att)


def test_a_session_acknowledges_every_number_below_its_oldest_running_call() -> None:
    s = Session.open(random.Random(1), now_ms=5)
    assert len(s.session_id) == 16 and s.acked_below() == 1
    a, b, c = s.begin(), s.begin(), s.begin()
    assert (a, b, c) == (1, 2, 3) and s.acked_below() == 1
    s.end(b)
    assert s.acked_below() == 1
    s.end(a)
    assert s.acked_below() == 3
    s.end(c)
    assert s.acked_below() == 4 and s.ref(7, retry=True).acked_below == 4


def test_an_attempt_timeout_before_the_deadline_is_a_lost_connection() -> None:
    cache, entry, att, _ = _with_session(OpKind.WRITE)
    att.attempt_timeout = 1.0
    assert att.attempt_budget(now=0.0) == 1.0 and att.capped
    d = retry.on_rpc_error(cache, entry, P1, RpcTimeoutError("slow"), att)
    assert isinstance(d, Retry) and att.maybe_executed and StoreId(1) in att.avoid
    assert att.attempt_budget(now=9.5) == 0.5 and not att.capped
    d = retry.on_rpc_error(cache, entry, P1, RpcTimeoutError("slow"), att)
    assert isinstance(d, GiveUp) and isinstance(d.error, UndeterminedError)

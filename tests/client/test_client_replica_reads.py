"""Follower and stale reads in the client: reads stay strong (at the leader)
unless they ask; follower and stale reads spread over the replicas, voters
and learners; a replica's failure sends the call on to the leader; a stale
read's answer says how stale it may be; invalid modes are refused before
anything is sent.

The async tests take `autojump_clock` and the fixture `h` (conftest.py);
the pure policy is tested on its own first.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable

import pytest
import trio
import trio.testing

from client import Consistency, InvalidArgument, ReadResult, SyncClient
from client.attempts import Attempts, OpKind, Retry
from client.cache import RegionCache
from client.config import ClientConfig
from client.reads import ReadMode, read_mode
from client.retry import judge, on_replica_error
from kvproto import kvrpcpb as kv
from kvproto.errorpb import EpochNotMatch, NotLeader, RegionError, RegionNotFound
from kvproto.metapb import RegionId
from kvproto.rpc import RpcUnavailableError
from shardkv.__main__ import main
from tests.client.fakes import Harness, Hold, Seen, on, tcp_cluster
from tests.factories import region

FOLLOWER = kv.Consistency.FOLLOWER
STALE = kv.Consistency.STALE

# -- the pure parts -----------------------------------------------------------------


REGION = region(1)
P1, P2, P3 = REGION.peers


def replica_setup() -> tuple[RegionCache, Attempts]:
    cache = RegionCache()
    cache.insert(REGION, P1)
    att = Attempts(
        "get b'k'", OpKind.READ, deadline=10.0, timeout=10.0, rng=random.Random(1), any_replica=True
    )
    att.replica_attempt = True
    return cache, att


@pytest.mark.parametrize(
    "error",
    [NotLeader(RegionId(1), None), RegionNotFound(RegionId(1)), RpcUnavailableError("refused")],
    ids=["no-leader-known", "region-not-found", "unreachable"],
)
def test_a_failed_replica_sends_the_call_to_the_leader_at_once(error: object) -> None:
    cache, att = replica_setup()
    entry = cache.get(1)
    assert entry is not None
    outcome = error if isinstance(error, RpcUnavailableError) else kv.RawGetResponse(error)  # type: ignore[arg-type]
    d = judge(cache, entry, P2, outcome, kv.RawGetResponse, att)
    assert isinstance(d, Retry) and d.backoff is None
    assert att.leader_only
    # The leader hint and the cached region are kept.
    assert cache.get(1) is entry and entry.leader == P1
    if not isinstance(error, NotLeader):
        assert P2.store_id in att.avoid


def test_an_epoch_error_from_a_replica_gives_no_leader_hint() -> None:
    cache, att = replica_setup()
    entry = cache.get(1)
    assert entry is not None
    left = region(1, b"", b"m", version=2)
    right = region(2, b"m", b"", version=2)
    d = on_replica_error(cache, entry, P2, EpochNotMatch((left, right)), att)
    assert d == Retry(None)
    new_left, new_right = cache.get(1), cache.get(2)
    assert new_left is not None and new_left.leader == P1  # kept: same membership
    assert new_right is not None and new_right.leader is None  # not the replica's peer


def test_an_epoch_error_from_a_lagging_replica_keeps_the_cache() -> None:
    cache, att = replica_setup()
    entry = cache.get(1)
    assert entry is not None
    older = region(1, version=0)
    assert on_replica_error(cache, entry, P2, EpochNotMatch((older,)), att) == Retry(None)
    assert cache.get(1) is entry


def test_a_replica_naming_the_leader_is_believed() -> None:
    cache, att = replica_setup()
    entry = cache.get(1)
    assert entry is not None
    d = on_replica_error(cache, entry, P2, NotLeader(RegionId(1), P3), att)
    assert d == Retry(None)
    assert entry.leader == P3


def test_replicas_are_chosen_among_voters_and_learners_not_skipped() -> None:
    r = region(1, stores=(1, 2), learners=(3,))
    cache = RegionCache()
    cache.insert(r)
    entry = cache.get(1)
    assert entry is not None
    rng = random.Random(3)
    assert {entry.choose_replica(set(), rng) for _ in range(50)} == set(r.peers)
    s1, s2, s3 = (p.store_id for p in r.peers)
    assert {entry.choose_replica({s1, s3}, rng) for _ in range(20)} == {r.peers[1]}
    assert entry.choose_replica({s1, s2, s3}, rng) is None


@pytest.mark.parametrize(
    ("consistency", "max_staleness", "expected"),
    [
        ("strong", None, ReadMode(Consistency.STRONG, 0)),
        ("follower", 3.0, ReadMode(Consistency.FOLLOWER, 0)),
        (Consistency.STALE, None, ReadMode(Consistency.STALE, 5000)),
        ("stale", 0.0015, ReadMode(Consistency.STALE, 1)),
        ("stale", 0, ReadMode(Consistency.STALE, 0)),
    ],
)
def test_read_modes_from_arguments(
    consistency: object, max_staleness: object, expected: ReadMode
) -> None:
    assert read_mode("get", consistency, max_staleness, 5.0) == expected


@pytest.mark.parametrize(
    ("consistency", "max_staleness", "error"),
    [
        ("eventual", None, InvalidArgument),
        ("stale", -1.0, InvalidArgument),
        ("stale", math.nan, InvalidArgument),
        ("stale", math.inf, InvalidArgument),
        (2, None, TypeError),
        ("stale", "5", TypeError),
    ],
)
def test_invalid_read_modes_are_refused(
    consistency: object, max_staleness: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        read_mode("get", consistency, max_staleness, 5.0)


def test_the_config_refuses_a_negative_max_staleness() -> None:
    with pytest.raises(ValueError, match="max_staleness"):
        ClientConfig(max_staleness=-1.0)


# -- against the fake cluster ---------------------------------------------------------


def reads(h: Harness) -> list[Seen]:
    return [s for s in h.cluster.seen if s.kind in ("Get", "BatchGet", "Scan")]


async def test_reads_stay_strong_at_the_leader_by_default(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"v")
    for _ in range(5):
        assert await h.kv.get(b"k") == b"v"
    assert await h.kv.batch_get([b"k"]) == {b"k": b"v"}
    assert await h.kv.scan(b"") == [(b"k", b"v")]
    assert [p async for p in h.kv.scan_iter(b"")] == [(b"k", b"v")]
    assert (await h.kv.get_with_staleness(b"k")) == ReadResult(b"v", 0.0)
    seen = reads(h)
    assert len(seen) == 9
    assert {(s.store_id, s.consistency) for s in seen} == {(1, kv.Consistency.STRONG)}


@pytest.mark.cluster(store_ids=[1, 2, 3, 4])
async def test_follower_reads_spread_over_voters_and_learners(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    h.cluster.regions[1] = region(1, stores=(1, 2, 3), learners=(4,))
    await h.kv.put(b"k", b"v")
    for _ in range(80):
        assert await h.kv.get(b"k", consistency="follower") == b"v"
    per_store = Counter(s.store_id for s in reads(h))
    assert set(per_store) == {1, 2, 3, 4}
    assert min(per_store.values()) >= 10
    assert {s.consistency for s in reads(h)} == {FOLLOWER}
    assert all(s.answer == "ok" for s in reads(h))


async def test_batch_get_and_scan_read_at_replicas_too(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.batch_put({b"a": b"1", b"b": b"2"})
    for _ in range(20):
        assert await h.kv.batch_get([b"a", b"b"], consistency="follower") == {
            b"a": b"1",
            b"b": b"2",
        }
        assert await h.kv.scan(b"", consistency=Consistency.FOLLOWER) == [
            (b"a", b"1"),
            (b"b", b"2"),
        ]
    assert {s.store_id for s in reads(h)} == {1, 2, 3}


@pytest.mark.cluster([b"m"])
async def test_stale_reads_say_how_stale_they_may_be(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.batch_put({b"a": b"1", b"x": b"2"})
    for s, ms in ((1, 500), (2, 1500), (3, 1000)):
        h.store(s).staleness_ms = ms
    staleness_of = {1: 0.5, 2: 1.5, 3: 1.0}
    for _ in range(10):
        n = len(h.cluster.seen)
        got = await h.kv.get_with_staleness(b"a", consistency="stale")
        assert got.value == b"1"
        (seen,) = h.cluster.seen[n:]
        assert seen.consistency == STALE
        assert got.staleness == staleness_of[seen.store_id]
        n = len(h.cluster.seen)
        both = await h.kv.batch_get_with_staleness([b"a", b"x"], consistency="stale")
        assert both.value == {b"a": b"1", b"x": b"2"}
        assert both.staleness == max(staleness_of[s.store_id] for s in h.cluster.seen[n:])
        n = len(h.cluster.seen)
        pairs = await h.kv.scan_with_staleness(b"", consistency="stale")
        assert pairs.value == [(b"a", b"1"), (b"x", b"2")]
        assert pairs.staleness == max(staleness_of[s.store_id] for s in h.cluster.seen[n:])
    n = len(h.cluster.seen)
    it = h.kv.scan_iter(b"", consistency="stale", page_size=1)
    assert it.staleness == 0.0
    assert [k async for k, _ in it] == [b"a", b"x"]
    assert it.staleness == max(staleness_of[s.store_id] for s in h.cluster.seen[n:])


async def test_a_stale_read_carries_its_bound_and_the_configs_by_default(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"v")
    for s in (1, 2, 3):
        h.store(s).staleness_ms = 3000
    # The default bound (5 s) accepts 3 s; a bound of 2 s does not (the
    # store then serves a follower read: staleness 0).
    assert (await h.kv.get_with_staleness(b"k", consistency="stale")).staleness == 3.0
    got = await h.kv.get_with_staleness(b"k", consistency="stale", max_staleness=2.0)
    assert got == ReadResult(b"v", 0.0)


@pytest.mark.cluster(config=ClientConfig(max_staleness=2.0))
async def test_the_configs_max_staleness_is_the_default_bound(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"v")
    for s in (1, 2, 3):
        h.store(s).staleness_ms = 3000
    assert (await h.kv.get_with_staleness(b"k", consistency="stale")).staleness == 0.0
    got = await h.kv.get_with_staleness(b"k", consistency="stale", max_staleness=4)
    assert got.staleness == 3.0


REPLICA_ERRORS: list[tuple[str, Callable[[], RegionError | Hold]]] = [
    ("no-leader-known", lambda: NotLeader(RegionId(1), None)),
    ("region-not-found", lambda: RegionNotFound(RegionId(1))),
    ("epoch-not-match", lambda: EpochNotMatch((region(1, version=0),))),
    ("no-answer", Hold),
]


@pytest.mark.parametrize(("name", "error"), REPLICA_ERRORS, ids=[n for n, _ in REPLICA_ERRORS])
async def test_a_replica_error_falls_back_to_the_leader(
    autojump_clock: trio.testing.MockClock,
    h: Harness,
    name: str,
    error: Callable[[], RegionError | Hold],
) -> None:
    await h.kv.put(b"k", b"v")
    for s in (2, 3):
        h.store(s).add_rule(on(kv.RawGetRequest), error(), times=1000)
    for _ in range(10):
        start = trio.current_time()
        n = len(h.cluster.seen)
        assert await h.kv.get(b"k", consistency="follower") == b"v"
        attempts = h.cluster.seen[n:]
        # At a failing replica at most once, then at the leader.
        assert attempts[-1].store_id == 1 and attempts[-1].answer == "ok"
        assert len(attempts) <= 2
        if name == "no-answer" and len(attempts) == 2:
            assert trio.current_time() - start >= h.kv.config.attempt_timeout
    failed = {s.store_id for s in reads(h) if s.answer != "ok"}
    assert failed, "no read went to a failing replica"
    entry = h.kv.cache.get(1)
    assert entry is not None and entry.leader is not None and entry.leader.store_id == 1


async def test_an_unreachable_replica_is_skipped_for_a_while(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"v")
    h.net.kill(h.store(2).address)
    for _ in range(30):
        assert await h.kv.get(b"k", consistency="follower") == b"v"
    # Refused at connect: the store is never asked...
    assert {s.store_id for s in reads(h)} == {1, 3}
    assert h.net.connects[h.store(2).address] >= 1
    # ... and once it failed, no read tries it (nor looks up its address).
    refused = h.net.connects[h.store(2).address]
    lookups = h.cluster.pd_calls["get_store"]
    for _ in range(20):
        await h.kv.get(b"k", consistency="follower")
    assert h.net.connects[h.store(2).address] == refused
    assert h.cluster.pd_calls["get_store"] == lookups
    h.net.revive(h.store(2).address)
    await trio.sleep(10)  # past SUSPECT_SECONDS
    for _ in range(30):
        await h.kv.get(b"k", consistency="follower")
    assert 2 in {s.store_id for s in reads(h)}


async def test_a_suspect_store_that_answers_is_chosen_again(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    await h.kv.put(b"k", b"v")
    h.net.kill(h.store(2).address)
    for _ in range(30):
        await h.kv.get(b"k", consistency="follower")
    assert h.net.connects[h.store(2).address] >= 1
    h.net.revive(h.store(2).address)
    h.cluster.move_leader(1, 2)
    assert await h.kv.get(b"k") == b"v"  # a strong read: store 2 answers
    n = len(h.cluster.seen)
    for _ in range(30):
        await h.kv.get(b"k", consistency="follower")
    assert {s.store_id for s in h.cluster.seen[n:]} == {1, 2, 3}


async def test_writes_still_go_to_the_leader(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    for i in range(10):
        await h.kv.get(b"k", consistency="stale")
        await h.kv.put(b"k%d" % i, b"v")
    writes = [s for s in h.cluster.seen if s.kind == "Put"]
    assert {s.store_id for s in writes} == {1}


async def test_invalid_modes_are_refused_before_anything_is_sent(
    autojump_clock: trio.testing.MockClock, h: Harness
) -> None:
    with pytest.raises(InvalidArgument, match="unknown consistency"):
        await h.kv.get(b"k", consistency="eventual")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="max_staleness"):
        await h.kv.batch_get([b"k"], consistency="stale", max_staleness=-1)
    with pytest.raises(InvalidArgument, match="max_staleness"):
        await h.kv.scan(b"", consistency="stale", max_staleness=math.nan)
    with pytest.raises(InvalidArgument):
        h.kv.scan_iter(b"", consistency="bounded")  # type: ignore[arg-type]
    assert h.cluster.seen == []


# -- the blocking client and the command line ------------------------------------------


def test_the_blocking_client_reads_at_replicas() -> None:
    with tcp_cluster() as c, SyncClient([c.pd_address], timeout=10) as kvc:
        kvc.put(b"k", b"v")
        for s in c.stores.values():
            s.staleness_ms = 250
        assert kvc.get(b"k", consistency="follower") == b"v"
        assert kvc.get_with_staleness(b"k", consistency="stale") == ReadResult(b"v", 0.25)
        got = kvc.batch_get_with_staleness([b"k"], consistency="stale")
        assert got == ReadResult({b"k": b"v"}, 0.25)
        assert kvc.scan_with_staleness(b"", consistency="stale").staleness == 0.25
        pages = kvc.scan_iter(b"", consistency="stale")
        assert list(pages) == [(b"k", b"v")]
        assert pages.staleness == 0.25
        assert {s.consistency for s in c.cluster.seen if s.kind != "Put"} == {FOLLOWER, STALE}


def test_the_command_line_takes_the_consistency(capsys: pytest.CaptureFixture[str]) -> None:
    with tcp_cluster() as c:
        pd = c.pd_address
        assert main(["kv", "--pd", pd, "put", "k", "v"]) == 0
        for s in c.stores.values():
            s.staleness_ms = 1250
        args = ["kv", "--pd", pd, "get", "--consistency", "follower", "k"]
        assert main(args) == 0
        assert capsys.readouterr() == ("v\n", "")
        assert main(["kv", "--pd", pd, "get", "--consistency", "stale", "k"]) == 0
        assert capsys.readouterr() == ("v\n", "shardkv kv: stale by at most 1.250 s\n")
        args = ["kv", "--pd", pd, "scan", "--consistency", "stale", "--max-staleness", "1"]
        assert main(args) == 0
        assert capsys.readouterr() == ("k\tv\n", "shardkv kv: stale by at most 0.000 s\n")
        seen = [s.consistency for s in c.cluster.seen if s.kind != "Put"]
        assert seen == [FOLLOWER, STALE, STALE]
        assert main(["kv", "--pd", pd, "get", "--max-staleness", "-1", "k"]) == 2
        assert "--max-staleness" in capsys.readouterr().err
        with pytest.raises(SystemExit) as info:
            main(["kv", "--pd", pd, "get", "--consistency", "eventual", "k"])
        assert info.value.code == 2

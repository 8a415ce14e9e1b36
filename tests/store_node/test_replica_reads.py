"""Follower and stale reads at the store core (store_node.queries): a
follower read at a follower waits for the leader to confirm a read index
and for apply to reach it; a stale read is served at once from the applied
state with how stale it may be, or as a follower read when it is staler
than the caller accepts; freshness is renewed in the background while
stale reads are asked; the KV service refuses invalid modes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from kvproto import kvrpcpb as kv
from kvproto.errorpb import NotLeader, RegionError, RegionNotFound
from kvproto.kvrpcpb import Consistency, Context
from kvproto.metapb import RegionId
from kvproto.raft_cmdpb import ChangePeerType, Put
from kvproto.raft_serverpb import RaftMessage
from kvproto.rpc import Deferred, RequestContext
from raft.types import MessageType
from store_node import keys
from store_node.config import CoreConfig
from store_node.engine import Engine
from store_node.freshness import Freshness
from store_node.kv_service import KvService, Limits
from store_node.peer import ReadPermit
from tests.factories import learner, peer, region
from tests.store_node.harness import CoreCluster, bootstrapped

CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=2)
LEASE = 0.9
FOLLOWER = Consistency.FOLLOWER
STALE = Consistency.STALE


@pytest.fixture
def c(tmp_path: Path) -> CoreCluster:
    cluster = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    cluster.now = 100.0
    return cluster


class Wire:
    """Counts the messages of some types; drops those `drop` says to."""

    def __init__(self, c: CoreCluster) -> None:
        self.seen: dict[MessageType, int] = {}
        self.drop: Callable[[RaftMessage], bool] = lambda m: False
        c.drop = self._see

    def _see(self, m: RaftMessage) -> bool:
        t = m.message.type
        self.seen[t] = self.seen.get(t, 0) + 1
        return self.drop(m)

    def count(self, t: MessageType) -> int:
        return self.seen.get(t, 0)


def leader(c: CoreCluster) -> int:
    found = c.leader_of(1)
    assert found is not None
    return found[0]


def a_follower(c: CoreCluster) -> int:
    return next(s for s in sorted(c.cores) if s != leader(c))


def ctx_at(c: CoreCluster, store: int) -> Context:
    p = c.cores[store].peers[1]
    return Context(RegionId(1), p.region.epoch, p.meta)


def put(c: CoreCluster, key: bytes, value: bytes) -> None:
    token = ("put", key, value)
    assert c.cores[leader(c)].propose_write(token, c.context(1), (Put(key, value),), 10) is None
    c.stabilize()
    assert token in c.replies


def ask(
    c: CoreCluster, store: int, token: str, mode: Consistency, max_staleness: float = 0.0
) -> None:
    err = c.cores[store].replica_read(token, ctx_at(c, store), [b"k"], mode, max_staleness)
    assert err is None, err


def answer(c: CoreCluster, token: str) -> object:
    reply = c.replies.pop(token, None)
    return None if reply is None else reply.value


def applied(c: CoreCluster, store: int) -> int:
    return c.cores[store].peers[1].node.applied_index


# -- follower reads -------------------------------------------------------------


def test_a_follower_read_waits_for_the_leaders_read_index_and_for_apply(c: CoreCluster) -> None:
    f = a_follower(c)
    put(c, b"k", b"old")
    # Followers learn a commit index with the next heartbeat
    # (skip_bcast_commit).
    c.tick(2)
    wire = Wire(c)
    # The follower misses the next write: the leader commits it with the other.
    wire.drop = lambda m: m.to_peer.store_id == f and m.message.type == MessageType.APPEND
    put(c, b"k", b"new")
    assert c.engines[f].kv_get(keys.DATA_DB, b"k") == b"old"
    ask(c, f, "r", FOLLOWER)
    c.stabilize()
    # The leader confirmed a read index (the forwarded request came back)...
    assert wire.count(MessageType.READ_INDEX) == 1
    assert wire.count(MessageType.READ_INDEX_RESPONSE) == 1
    # ... above what the follower applied: no permit yet.
    assert applied(c, f) < c.cores[leader(c)].peers[1].node.commit_index
    assert answer(c, "r") is None
    wire.drop = lambda m: False
    c.tick(3)
    permit = answer(c, "r")
    assert isinstance(permit, ReadPermit) and permit.staleness == 0.0
    # Granted once the write is applied here: the read sees it.
    assert c.engines[f].kv_get(keys.DATA_DB, b"k") == b"new"
    assert c.cores[f].stats["follower_reads"] == 1


def test_a_follower_read_at_the_leader_is_served_like_a_strong_one(c: CoreCluster) -> None:
    wire = Wire(c)
    ask(c, leader(c), "r", FOLLOWER)
    c.stabilize()
    assert isinstance(answer(c, "r"), ReadPermit)
    assert wire.count(MessageType.READ_INDEX) == 0  # its own round
    assert wire.count(MessageType.HEARTBEAT) == 2


def test_a_learner_serves_follower_reads(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3, 4], CONFIG, region_on=[1, 2, 3])
    put(c, b"k", b"v")
    c.change_peer(ChangePeerType.ADD_LEARNER, learner(14, 4))
    assert c.cores[4].peers[1].initialized
    ask(c, 4, "r", FOLLOWER)
    c.stabilize()
    assert isinstance(answer(c, "r"), ReadPermit)
    assert c.engines[4].kv_get(keys.DATA_DB, b"k") == b"v"


def test_a_follower_that_knows_no_leader_answers_not_leader(c: CoreCluster) -> None:
    f = a_follower(c)
    # Cut off, the follower campaigns and cannot win: it knows no leader.
    c.isolate(f)
    c.tick(3 * CONFIG.election_ticks)
    assert c.cores[f].peers[1].node.leader_id == 0
    ask(c, f, "r", FOLLOWER)
    c.run_round(f)
    value = answer(c, "r")
    assert isinstance(value, NotLeader) and value.leader is None


def test_a_replica_read_must_name_this_stores_peer(c: CoreCluster) -> None:
    f = a_follower(c)
    p = c.cores[f].peers[1]
    other = Context(RegionId(1), p.region.epoch, peer(99, f))
    err = c.cores[f].replica_read("r", other, [b"k"], FOLLOWER, 0.0)
    assert isinstance(err, RegionNotFound)
    # A strong read at a follower is still refused.
    err2 = c.cores[f].read("s", ctx_at(c, f), [b"k"])
    assert isinstance(err2, NotLeader)


# -- stale reads ----------------------------------------------------------------


def freshen(c: CoreCluster, store: int) -> None:
    """A follower read at `store` at the current time: the store is fresh
    as of now once it is served."""
    ask(c, store, "freshen", FOLLOWER)
    c.stabilize()
    assert isinstance(answer(c, "freshen"), ReadPermit)
    assert c.cores[store].peers[1].freshness.fresh_at == c.now


def test_a_stale_read_is_served_at_once_with_its_staleness(c: CoreCluster) -> None:
    f = a_follower(c)
    put(c, b"k", b"old")
    freshen(c, f)
    wire = Wire(c)
    wire.drop = lambda m: m.to_peer.store_id == f and m.message.type == MessageType.APPEND
    put(c, b"k", b"new")
    c.now = 102.0
    ask(c, f, "r", STALE, 5.0)
    c.run_round(f)  # one round: no ReadIndex, no waiting for apply
    permit = answer(c, "r")
    assert isinstance(permit, ReadPermit)
    assert permit.staleness == pytest.approx(2.0)
    assert wire.count(MessageType.READ_INDEX) == 0
    # From what it applied: the write acknowledged after fresh_at is not there.
    assert c.engines[f].kv_get(keys.DATA_DB, b"k") == b"old"
    assert c.cores[f].stats["stale_reads"] == 1


def test_a_stale_read_beyond_its_bound_is_served_as_a_follower_read(c: CoreCluster) -> None:
    f = a_follower(c)
    freshen(c, f)
    wire = Wire(c)
    c.now = 110.0
    ask(c, f, "r", STALE, 5.0)
    c.run_round(f)
    assert answer(c, "r") is None  # not from the applied state
    c.stabilize()
    permit = answer(c, "r")
    assert isinstance(permit, ReadPermit) and permit.staleness == 0.0
    assert wire.count(MessageType.READ_INDEX) == 1
    core = c.cores[f]
    assert core.stats["stale_reads_refused"] == 1
    assert core.stats["stale_reads"] == 0
    # That round made the follower fresh again.
    assert core.peers[1].freshness.fresh_at == 110.0


def test_a_peer_never_confirmed_serves_no_stale_read(c: CoreCluster) -> None:
    f = a_follower(c)
    ask(c, f, "r", STALE, 1e9)
    c.run_round(f)
    assert answer(c, "r") is None
    c.stabilize()
    assert isinstance(answer(c, "r"), ReadPermit)
    assert c.cores[f].stats["stale_reads_refused"] == 1


def test_a_stale_permit_carries_the_region_as_of_the_end_of_its_round(c: CoreCluster) -> None:
    # A split (or a snapshot) applied in the round that serves a stale read
    # must fail the read's epoch check: the permit names the region after it.
    f = a_follower(c)
    freshen(c, f)
    held: list[RaftMessage] = []

    def hold_appends(m: RaftMessage) -> bool:
        if m.to_peer.store_id == f and m.message.type == MessageType.APPEND:
            held.append(m)
            return True
        return False

    c.drop = hold_appends
    ld = leader(c)
    before = c.cores[ld].peers[1].region
    ids = [(c.alloc(), tuple(c.alloc() for _ in before.peers))]
    assert c.cores[ld].propose_split("split", 1, before.epoch, (b"m",), ids) is None
    c.stabilize()
    c.tick()
    assert held and c.cores[f].peers[1].region.epoch.version == 1
    ask(c, f, "r", STALE, 5.0)
    for m in held:
        c.cores[f].step_raft(m)
    c.run_round(f)
    assert c.cores[f].peers[1].region.epoch.version == 2  # applied in that round
    permit = answer(c, "r")
    assert isinstance(permit, ReadPermit)
    assert permit.region.epoch.version == 2


def test_the_leader_with_a_lease_answers_stale_reads_with_staleness_zero(
    tmp_path: Path,
) -> None:
    c = bootstrapped(
        tmp_path, [1, 2, 3], CoreConfig(election_ticks=10, heartbeat_ticks=2, lease_seconds=LEASE)
    )
    c.now = 100.0
    ld = leader(c)
    assert c.cores[ld].read("strong", c.context(1), [b"k"]) is None
    c.stabilize()
    assert isinstance(answer(c, "strong"), ReadPermit)
    wire = Wire(c)
    c.now = 100.2
    ask(c, ld, "r", STALE, 0.0)  # accepts no staleness at all
    c.run_round(ld)
    permit = answer(c, "r")
    assert isinstance(permit, ReadPermit) and permit.staleness == 0.0
    assert wire.count(MessageType.HEARTBEAT) == 0
    assert c.cores[ld].stats["stale_reads"] == 1


def test_the_leader_without_a_lease_serves_stale_reads_from_its_rounds(c: CoreCluster) -> None:
    ld = leader(c)
    freshen(c, ld)
    c.now = 101.5
    ask(c, ld, "r", STALE, 2.0)
    c.run_round(ld)
    permit = answer(c, "r")
    assert isinstance(permit, ReadPermit) and permit.staleness == pytest.approx(1.5)


def test_stale_reads_renew_freshness_in_the_background(c: CoreCluster) -> None:
    f = a_follower(c)
    freshen(c, f)
    wire = Wire(c)
    ask(c, f, "r", STALE, 4.0)
    c.stabilize()
    assert isinstance(answer(c, "r"), ReadPermit)
    c.now = 101.9  # less than half the bound gone: nothing to do
    c.tick()
    assert wire.count(MessageType.READ_INDEX) == 0
    c.now = 102.1
    c.tick()
    assert wire.count(MessageType.READ_INDEX) == 1
    assert c.cores[f].peers[1].freshness.fresh_at == 102.1
    # No stale read for a while: renewals stop.
    c.now = 120.0
    c.tick()
    assert wire.count(MessageType.READ_INDEX) == 1


def test_a_lost_renewal_is_retried_after_a_quarter_of_the_bound(c: CoreCluster) -> None:
    f = a_follower(c)
    freshen(c, f)
    ask(c, f, "r", STALE, 4.0)
    c.stabilize()
    wire = Wire(c)
    wire.drop = lambda m: m.message.type == MessageType.READ_INDEX
    c.now = 102.1
    c.tick()
    assert wire.count(MessageType.READ_INDEX) == 1
    c.now = 102.5
    c.tick()
    assert wire.count(MessageType.READ_INDEX) == 1  # spaced
    wire.drop = lambda m: False
    c.now = 103.2
    c.tick()
    assert wire.count(MessageType.READ_INDEX) == 2
    assert c.cores[f].peers[1].freshness.fresh_at == 103.2


def test_without_stale_reads_a_follower_starts_no_rounds(c: CoreCluster) -> None:
    f = a_follower(c)
    freshen(c, f)
    wire = Wire(c)
    for t in (105.0, 110.0, 200.0):
        c.now = t
        c.tick()
    assert wire.count(MessageType.READ_INDEX) == 0


def test_freshness_keeps_the_tightest_bound_asked_lately() -> None:
    f = Freshness(fresh_at=10.0)
    f.asked(10.0, 4.0)
    f.asked(10.5, 1.0)
    f.asked(11.0, 8.0)
    assert f.want == 1.0
    assert f.wants_renewal(11.0)  # 1 s old, half of 1 s gone
    f.asked(20.0, 8.0)  # the 1 s demand lapsed long ago
    assert f.want == 8.0
    assert f.staleness(9.0) == 0.0


# -- the KV service -------------------------------------------------------------


REGION = region(1, stores=(1,))
CTX = kv.Context(REGION.id, REGION.epoch, REGION.peers[0])


class RecordingNode:
    """Grants every read at once, with a staleness of 1.2345 s for stale
    reads, and records how each was asked."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.asked: list[tuple[str, Consistency | None, float | None]] = []

    def submit_read(
        self,
        ctx: kv.Context,
        bounds: Sequence[bytes],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        self.asked.append(("strong", None, None))
        done(ReadPermit(REGION))

    def submit_replica_read(
        self,
        ctx: kv.Context,
        bounds: Sequence[bytes],
        consistency: Consistency,
        max_staleness: float,
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        self.asked.append(("replica", consistency, max_staleness))
        done(ReadPermit(REGION, 1.2345 if consistency == STALE else 0.0))

    def count_read(self, region_id: int, nbytes: int, nkeys: int) -> None:
        pass  # the read flow has its own tests (test_kv_service)


def _call(service: KvService, request: object) -> Any:
    handler = service.handlers()[type(request)]
    assert isinstance(handler, Deferred)
    answers: list[object] = []
    handler.fn(request, RequestContext("test", 1, 1), answers.append)
    assert len(answers) == 1
    return answers[0]


READS = [
    lambda **kw: kv.RawGetRequest(CTX, b"k", **kw),
    lambda **kw: kv.RawBatchGetRequest(CTX, (b"k",), **kw),
    lambda **kw: kv.RawScanRequest(CTX, b"", b"", 10, **kw),
]


@pytest.mark.parametrize("make", READS, ids=["get", "batch_get", "scan"])
def test_the_service_passes_the_mode_on_and_answers_the_staleness(
    tmp_path: Path, make: Callable[..., object]
) -> None:
    node = RecordingNode(Engine(tmp_path))
    service = KvService(node, Limits())  # type: ignore[arg-type]
    assert _call(service, make()).staleness_ms == 0
    assert _call(service, make(consistency=FOLLOWER)).staleness_ms == 0
    resp = _call(service, make(consistency=STALE, max_staleness_ms=2500))
    assert resp.error is None and resp.region_error is None
    assert resp.staleness_ms == 1235  # rounded up
    assert node.asked == [
        ("strong", None, None),
        ("replica", FOLLOWER, 0.0),
        ("replica", STALE, 2.5),
    ]
    node.engine.close()


@pytest.mark.parametrize("make", READS, ids=["get", "batch_get", "scan"])
@pytest.mark.parametrize(
    "fields",
    [{"max_staleness_ms": -1}, {"consistency": 7}, {"consistency": True}, {"consistency": "stale"}],
    ids=["negative-staleness", "unknown-consistency", "bool", "str"],
)
def test_invalid_read_modes_are_invalid_arguments(
    tmp_path: Path, make: Callable[..., object], fields: dict[str, object]
) -> None:
    node = RecordingNode(Engine(tmp_path))
    service = KvService(node, Limits())  # type: ignore[arg-type]
    resp = _call(service, make(**fields))
    assert resp.error is not None and resp.error.code == kv.KvErrorCode.INVALID_ARGUMENT
    assert node.asked == []
    node.engine.close()

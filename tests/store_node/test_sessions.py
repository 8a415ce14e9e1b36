"""Exactly-once writes on the store: the session table of a region (apply
level, real LMDB) and its life through leader changes, splits and snapshots
(StoreCore level)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvproto import codec
from kvproto.kvrpcpb import Context, KvErrorCode, SessionRef
from kvproto.metapb import Region
from kvproto.raft_cmdpb import (
    ClientWrite,
    CompareAndSet,
    Put,
    RaftRequestHeader,
    WriteCommand,
    WriteResult,
)
from raft.types import Entry
from store_node import keys, sessions
from store_node.apply import ApplyTask, apply_task
from store_node.config import CoreConfig
from store_node.engine import Engine
from store_node.log_gc import LogGcConfig
from store_node.peer import WriteDone
from store_node.records import ApplyState, decode_session_meta
from tests.factories import region
from tests.store_node.harness import CoreCluster, bootstrapped

SID = b"s" * 16
OTHER = b"o" * 16
REGION = region(1, stores=(1,))
TTL = 60_000


def ref(seq: int, *, sid: bytes = SID, acked: int = 1, retry: bool = False) -> SessionRef:
    return SessionRef(sid, seq, acked, retry, opened_at_ms=1_000)


class Log:
    """Applies WriteCommands to one region of a real engine, entry by entry."""

    def __init__(self, path: Path) -> None:
        self.engine = Engine(path)
        self.state = ApplyState(5, 5, 5, 5)
        self.index = 5

    def apply(
        self, *writes: ClientWrite, time_ms: int = 10_000, ttl_ms: int = TTL
    ) -> tuple[object, ...]:
        self.index += 1
        header = RaftRequestHeader(REGION.id, REGION.peers[0].id, REGION.epoch)
        cmd = WriteCommand(header, time_ms, ttl_ms, writes)
        entry = Entry(term=6, index=self.index, data=codec.dumps(cmd))
        out = self.engine.write_kv(
            lambda txn: apply_task(txn, ApplyTask(REGION, self.state, (entry,)))
        )
        self.state = out.apply_state
        (res,) = out.entries
        assert res.region_error is None, res.region_error
        return res.writes

    def get(self, key: bytes) -> bytes | None:
        return self.engine.kv_get(keys.DATA_DB, key)


def cas(seq: int, expected: bytes | None, new: bytes, **kw: object) -> ClientWrite:
    return ClientWrite(ref(seq, **kw), (CompareAndSet(b"k", expected, new),))  # type: ignore[arg-type]


def put(seq: int, value: bytes, **kw: object) -> ClientWrite:
    return ClientWrite(ref(seq, **kw), (Put(b"k", value),))  # type: ignore[arg-type]


def test_a_retried_write_gets_its_stored_answer_and_is_not_applied_again(
    tmp_path: Path,
) -> None:
    log = Log(tmp_path)
    assert log.apply(cas(1, None, b"a")) == ((WriteResult(True, None),),)
    log.apply(ClientWrite(None, (Put(b"k", b"b"),)))  # someone else's write
    # The retry (in the same entry as another request, too) answers as the
    # first application did, and changes nothing.
    again = log.apply(cas(1, None, b"a", retry=True), put(2, b"c"))
    assert again == ((WriteResult(True, None),), (WriteResult(),))
    assert log.get(b"k") == b"c"


def test_a_write_without_a_session_is_applied_every_time(tmp_path: Path) -> None:
    log = Log(tmp_path)
    w = ClientWrite(None, (CompareAndSet(b"k", None, b"a"),))
    assert log.apply(w) == ((WriteResult(True, None),),)
    assert log.apply(w) == ((WriteResult(False, b"a"),),)


def test_acknowledged_answers_are_forgotten_and_a_late_copy_is_refused(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.apply(put(1, b"a"))
    log.apply(put(2, b"b", acked=2))  # the client has the answer of 1
    answers = log.engine.kv_items(keys.SESSION_DB)
    assert not any(k == keys.session_answer_key(REGION.id, SID, 1) for k, _ in answers)
    # A second copy of request 1 in the log (proposed twice) does nothing.
    (outcome,) = log.apply(put(1, b"a", acked=2))
    assert outcome == sessions.EXPIRED
    assert log.get(b"k") == b"b"


def test_idle_sessions_expire_by_the_logs_clock_and_a_retry_in_one_is_refused(
    tmp_path: Path,
) -> None:
    log = Log(tmp_path)
    log.apply(put(1, b"a"), time_ms=10_000)
    log.apply(put(1, b"x", sid=OTHER), time_ms=10_000)
    # Another session keeps writing; ours is idle for longer than the ttl.
    log.apply(put(2, b"y", sid=OTHER, acked=2), time_ms=10_000 + TTL + 20_000)
    log.apply(put(3, b"z", sid=OTHER, acked=3), time_ms=10_000 + TTL + 30_000)
    rows = log.engine.kv_items(keys.SESSION_DB)
    assert not any(k == keys.session_record_key(REGION.id, SID) for k, _ in rows)
    # Our retry of request 1 cannot be told from a first try: refused, not
    # applied a second time.
    (outcome,) = log.apply(put(1, b"a", retry=True), time_ms=10_000 + TTL + 40_000)
    assert outcome == sessions.EXPIRED
    assert log.get(b"k") == b"z"
    # A first attempt of a new request in a session it never saw is applied.
    (fresh,) = log.apply(put(1, b"n", sid=b"n" * 16), time_ms=10_000 + TTL + 50_000)
    assert fresh == (WriteResult(),)


def test_a_leader_with_a_slow_clock_cannot_move_the_session_clock_back(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.apply(put(1, b"a"), time_ms=500_000)
    log.apply(put(1, b"x", sid=OTHER), time_ms=1_000)  # a new leader's clock is behind
    raw = log.engine.kv_get(keys.SESSION_DB, keys.session_meta_key(REGION.id))
    assert raw is not None
    assert decode_session_meta(raw).clock_ms == 500_000


def test_a_session_remembers_at_most_a_window_of_answers(tmp_path: Path) -> None:
    log = Log(tmp_path)
    first = sessions.WINDOW + 10
    log.apply(put(first, b"a"))
    # The client never acknowledged request 1: it fell out of the window.
    (outcome,) = log.apply(put(1, b"old", retry=True))
    assert outcome == sessions.EXPIRED
    assert log.get(b"k") == b"a"


def test_sessions_per_region_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 5)
    log = Log(tmp_path)
    for i in range(12):
        log.apply(put(1, b"v", sid=b"%016d" % i), time_ms=10_000 + i)
    records = [
        k
        for k, _ in log.engine.kv_items(keys.SESSION_DB)
        if k.startswith(keys.session_records_prefix(REGION.id))
    ]
    assert len(records) <= 5
    # The oldest were forgotten: a retry in one is refused.
    (outcome,) = log.apply(put(1, b"v", sid=b"%016d" % 0, retry=True), time_ms=20_000)
    assert outcome == sessions.EXPIRED


# -- through the store core ----------------------------------------------------------

CONFIG = CoreConfig(
    election_ticks=10,
    heartbeat_ticks=2,
    log_gc=LogGcConfig(max_entries=20, max_follower_lag=50, hard_max_bytes=1 << 30),
)


def _write(c: CoreCluster, token: object, w: ClientWrite, region_id: int = 1) -> WriteDone:
    store, _ = c.leader_of(region_id)  # type: ignore[misc]
    ctx: Context = c.context(region_id)
    nbytes = 10
    err = c.cores[store].propose_write(token, ctx, w.ops, nbytes, w.session)
    assert err is None, err
    c.stabilize()
    reply = c.replies.pop(token)
    assert isinstance(reply.value, WriteDone), reply
    return reply.value


def test_a_retry_on_a_new_leader_after_a_split_and_a_snapshot_gets_the_first_answer(
    tmp_path: Path,
) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    first = _write(c, "w1", cas(1, None, b"a"))
    assert first.results == (WriteResult(True, None),)
    # The region splits (the key lands in the new right part), a follower
    # misses everything and catches up by snapshot, and leadership moves.
    leader, _ = c.leader_of(1)  # type: ignore[misc]
    lagging = next(s for s in (1, 2, 3) if s != leader)
    c.stop(lagging)
    region: Region = c.cores[leader].peers[1].region
    ids = [(c.alloc(), tuple(c.alloc() for _ in region.peers))]
    assert c.cores[leader].propose_split("split", 1, region.epoch, (b"j",), ids) is None
    c.stabilize()
    right = ids[0][0]
    for i in range(80):
        _write(c, ("fill", i), ClientWrite(None, (Put(b"z%03d" % i, b"v"),)), region_id=right)
    c.start(lagging)
    c.tick(30)
    assert c.cores[lagging].peers[right].initialized
    c.cores[leader].transfer_leader(right, c.cores[lagging].peers[right].meta.id)
    c.tick(10)
    assert c.leader_of(right)[0] == lagging  # type: ignore[index]
    again = _write(c, "w1-retry", cas(1, None, b"a", retry=True), region_id=right)
    assert again.results == (WriteResult(True, None),)
    assert c.engines[lagging].kv_get(keys.DATA_DB, b"k") == b"a"
    # Once the client acknowledged it, the answer goes; a late copy is refused.
    _write(c, "w2", put(2, b"b", acked=2), region_id=right)
    late = _write(c, "late", cas(1, None, b"a", acked=2), region_id=right)
    assert late.error is not None and late.error.code == KvErrorCode.SESSION_EXPIRED

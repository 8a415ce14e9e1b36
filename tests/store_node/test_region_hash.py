"""Hashing a replica's copy at one applied index (store_node.region_hash)
and the pinned reads under it (store_node.engine.Pinned), on a real engine:
a pin sees the state it was taken at; the round's transaction commits at a
check entry and the rest applies after the pin; a map that must grow while
a pin waits runs the pin's work instead of waiting for it forever."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from kvproto import codec
from kvproto.metapb import Region
from kvproto.raft_cmdpb import (
    ClientWrite,
    ComputeHashRequest,
    Put,
    RaftCmdRequest,
    RaftRequestHeader,
    WriteCommand,
)
from raft.types import Entry
from store_node import keys, region_hash
from store_node.apply import ApplyTask, apply_round
from store_node.bootstrap import load_regions, write_initial_region
from store_node.engine import Engine
from store_node.region_hash import finish_checks, region_digest
from tests.factories import region as make_region

MiB = 1 << 20
REGION = make_region(1, stores=(1,))


def header(region: Region = REGION) -> RaftRequestHeader:
    return RaftRequestHeader(region.id, region.peers[0].id, region.epoch)


def check_entry(index: int, check_id: int = 0) -> Entry:
    cmd = RaftCmdRequest(header(), admin=ComputeHashRequest(check_id))
    return Entry(1, index, data=codec.dumps(cmd))


def put_entry(index: int, key: bytes, value: bytes) -> Entry:
    cmd = WriteCommand(header(), 0, 0, (ClientWrite(None, (Put(key, value),)),))
    return Entry(1, index, data=codec.dumps(cmd))


def engine_with_region(path: Path, map_size: int = 1 << 30) -> Engine:
    engine = Engine(path, sync=False, map_size=map_size)
    write_initial_region(engine, REGION)
    return engine


def run_round(engine: Engine, entries: list[Entry]) -> list[Any]:
    (region, state) = load_regions(engine)[0]
    tasks = [ApplyTask(region, state, tuple(entries))]
    return finish_checks(engine, tasks, engine.write_kv(lambda txn: apply_round(txn, tasks)))


def digest_now(engine: Engine) -> bytes:
    return engine.pin_kv(lambda txn: region_digest(txn, REGION)).run()


def test_a_pinned_read_sees_the_state_it_was_taken_at(tmp_path: Path) -> None:
    engine = engine_with_region(tmp_path)
    engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"a", b"1"))
    pin = engine.pin_kv(lambda txn: txn.get(keys.DATA_DB, b"a"))
    engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"a", b"2"))
    assert engine.pinned_kv() == 1
    assert pin.run() == b"1"
    assert pin.run() == b"1"  # run once; the result is kept
    assert engine.pinned_kv() == 0
    engine.close()


def test_the_round_commits_at_a_check_and_applies_the_rest_after(tmp_path: Path) -> None:
    engine = engine_with_region(tmp_path)
    run_round(engine, [put_entry(6, b"a", b"1")])
    expected = digest_now(engine)
    (out,) = run_round(
        engine, [put_entry(7, b"b", b"2"), check_entry(8, 5), put_entry(9, b"c", b"3")]
    )
    assert [e.index for e in out.entries] == [7, 8, 9]
    assert out.apply_state.applied_index == 9
    (job,) = out.hash_jobs
    assert (job.index, job.check_id, job.region) == (8, 5, REGION)
    with_b = job.pinned.run()
    assert with_b != expected  # b is in, c is not
    assert engine.kv_get(keys.DATA_DB, b"c") == b"3"
    engine.write_kv(lambda txn: txn.delete(keys.DATA_DB, b"c"))
    assert digest_now(engine) == with_b
    engine.close()


def test_two_checks_in_one_round_are_each_pinned_at_their_entry(tmp_path: Path) -> None:
    engine = engine_with_region(tmp_path)
    (out,) = run_round(
        engine, [check_entry(6), put_entry(7, b"a", b"1"), check_entry(8), put_entry(9, b"b", b"2")]
    )
    first, second = out.hash_jobs
    assert (first.index, second.index) == (6, 8)
    d1, d2 = first.pinned.run(), second.pinned.run()
    assert d1 != d2 != digest_now(engine)
    assert out.apply_state.applied_index == 9
    engine.close()


def test_a_map_that_must_grow_runs_the_pinned_work_instead_of_waiting(tmp_path: Path) -> None:
    # The pin is taken in the round (by the writing thread) and would only
    # be hashed once the round is over: growing the map may not wait for it.
    engine = engine_with_region(tmp_path, map_size=1 * MiB)
    run_round(engine, [put_entry(6, b"a", b"1")])
    expected = digest_now(engine)
    big = [put_entry(8 + i, b"big%02d" % i, b"x" * (256 << 10)) for i in range(12)]
    result: list[Any] = []
    writer = threading.Thread(
        target=lambda: result.append(run_round(engine, [check_entry(7), *big])), daemon=True
    )
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive(), "the writer waited for its own pinned read"
    ((out,),) = result
    (job,) = out.hash_jobs
    assert job.pinned.run() == expected
    assert out.apply_state.applied_index == 19
    assert engine.kv_get(keys.DATA_DB, b"big11") == b"x" * (256 << 10)
    engine.close()


def test_a_pin_blocks_a_growing_map_only_until_its_work_ran(tmp_path: Path) -> None:
    engine = engine_with_region(tmp_path, map_size=1 * MiB)
    pin = engine.pin_kv(lambda txn: sum(1 for _ in txn.scan(keys.DATA_DB, b"", b"")))
    engine.write_kv(
        lambda txn: [txn.put(keys.DATA_DB, b"k%d" % i, b"v" * 4096) for i in range(1000)]
    )
    assert pin.run() == 0
    engine.close()


def test_beyond_the_pin_limit_a_check_is_skipped_here_and_the_rest_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(region_hash, "MAX_PINNED", 1)
    engine = engine_with_region(tmp_path)
    other = engine.pin_kv(lambda txn: None)
    with caplog.at_level(logging.WARNING, logger="store_node.region_hash"):
        (out,) = run_round(engine, [check_entry(6), put_entry(7, b"a", b"1")])
    assert out.hash_jobs == []
    assert out.apply_state.applied_index == 7
    assert "consistency check at 6 skipped here" in caplog.text
    other.close()
    engine.close()


def test_a_failed_write_after_a_pin_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_with_region(tmp_path)
    (region, state) = load_regions(engine)[0]
    tasks = [ApplyTask(region, state, (check_entry(6), put_entry(7, b"a", b"1")))]
    first = engine.write_kv(lambda txn: apply_round(txn, tasks))

    def failing(fn: Any) -> Any:
        raise OSError("disk on fire")

    monkeypatch.setattr(engine, "write_kv", failing)
    with pytest.raises(OSError, match="disk on fire"):
        finish_checks(engine, tasks, first)
    assert engine.pinned_kv() == 0
    engine.close()


def test_closing_the_engine_closes_open_pins(tmp_path: Path) -> None:
    engine = engine_with_region(tmp_path)
    pin = engine.pin_kv(lambda txn: b"never")
    engine.close()
    with pytest.raises(RuntimeError, match="closed before its work ran"):
        pin.run()


def test_the_digest_covers_the_region_its_sessions_and_its_state_only(tmp_path: Path) -> None:
    left = make_region(1, b"", b"m", stores=(1,))
    engine = Engine(tmp_path, sync=False)
    write_initial_region(engine, left)

    def digest() -> bytes:
        return engine.pin_kv(lambda txn: region_digest(txn, left)).run()

    def change(fn: Any) -> bytes:
        before = digest()
        engine.write_kv(fn)
        return before

    base = digest()
    assert change(lambda txn: txn.put(keys.DATA_DB, b"z", b"1")) == digest()  # not its range
    assert change(lambda txn: txn.put(keys.SESSION_DB, keys.session_meta_key(2), b"x")) == digest()
    assert change(lambda txn: txn.put(keys.DATA_DB, b"a", b"1")) != digest()
    assert change(lambda txn: txn.put(keys.SESSION_DB, keys.session_meta_key(1), b"x")) != digest()
    assert change(lambda txn: txn.put(keys.REGION_DB, keys.region_key(1), b"other")) != digest()
    # Apply state (local log truncation) is no part of it.
    assert change(lambda txn: txn.put(keys.APPLY_DB, keys.region_key(1), b"x" * 32)) == digest()
    # A key and value are told apart from their concatenation elsewhere.
    engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"a", b"1b"))
    one = digest()
    engine.write_kv(lambda txn: txn.delete(keys.DATA_DB, b"a"))
    engine.write_kv(lambda txn: txn.put(keys.DATA_DB, b"a1", b"b"))
    assert digest() != one
    assert base != one
    engine.close()

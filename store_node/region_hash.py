"""Hashing one replica's copy of a region as of one applied index, without
stalling the store loop (the replica side of `store_node.consistency`).

What is hashed: everything every replica must hold alike once it has
applied the same log, and nothing a store keeps for itself:

* the region's data, every pair in [start_key, end_key) of db "data";
* its client sessions (db "session", the region's rows): they decide
  whether a retried write is applied or answered from its record, so two
  replicas that differ there will one day apply different writes;
* its RegionLocalState (range, epoch, peers), written by the applies of
  splits and conf changes and by snapshots.

Not hashed: the apply state (every replica is at the check's index by
construction; the truncated index is local log GC) and the Raft log.

At what state: a `ComputeHashRequest` entry ends its apply task
(`store_node.apply`), so the round's kv/ transaction commits with the
region exactly at that entry; `finish_checks` then pins a read transaction
of kv/ (`engine.Pinned`: it sees that commit and nothing later, however
long it waits) and applies the rest of the task in a transaction of its
own. The shell hashes the pinned read in a worker thread, one region at a
time (`hash_region`), and hands the digest to the core.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

import trio

from kvproto.metapb import Region
from plumbing.logs import log_fields
from store_node import keys, sessions
from store_node.apply import ApplyOutcome, ApplyTask, apply_task
from store_node.core import StoreCore
from store_node.engine import Engine, KvTxn, Pinned

__all__ = [
    "DIGEST_SIZE",
    "MAX_PINNED",
    "HashJob",
    "finish_checks",
    "hash_region",
    "jobs_of",
    "region_digest",
]

log = logging.getLogger(__name__)

DIGEST_SIZE: Final = 16
# Bytes fed to the hash at once: hashlib releases the GIL for the update of
# a large buffer, so the store loop runs meanwhile.
_CHUNK: Final = 64 << 10
_ITEM: Final = struct.Struct(">cII")  # kind, key length, value length
# Pinned reads open at once on one store beyond which a check is skipped
# here (each holds an LMDB reader slot; LMDB has 126 by default).
MAX_PINNED: Final = 32


def region_digest(txn: KvTxn, region: Region) -> bytes:
    """The digest of `region`'s copy in `txn` (see the module docstring)."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE, person=b"shardkv-region1")
    buf = bytearray()

    def add(kind: bytes, key: bytes, value: bytes) -> None:
        buf.extend(_ITEM.pack(kind, len(key), len(value)))
        buf.extend(key)
        buf.extend(value)
        if len(buf) >= _CHUNK:
            h.update(buf)
            buf.clear()

    add(b"R", b"", txn.get(keys.REGION_DB, keys.region_key(region.id)) or b"")
    for k, v in txn.scan(keys.DATA_DB, region.start_key, region.end_key):
        add(b"D", k, v)
    for k, v in sessions.region_rows(txn, region.id):
        add(b"S", k, v)
    h.update(buf)
    return h.digest()


@dataclass(slots=True)
class HashJob:
    """One replica's copy of `region` pinned at the ComputeHash entry at
    `index` (of check `check_id`), to be hashed."""

    region: Region
    index: int
    check_id: int
    pinned: Pinned[bytes]


def finish_checks(
    engine: Engine, tasks: Sequence[ApplyTask], outcomes: list[ApplyOutcome]
) -> list[ApplyOutcome]:
    """After the round's kv/ transaction committed: pin the copy of every
    region whose task stopped at a ComputeHash entry (a read begun now
    sees the region exactly at that entry), then apply the rest of those
    tasks in a transaction of their own, and so on until none stops.
    Outcomes are completed in place. (Several commits in one round are
    fine: each leaves every region at a consistent applied index.)"""
    if all(o.hash_check is None for o in outcomes):
        return outcomes
    skips = {t.region.id: t.skip_regions for t in tasks}
    pinned: list[HashJob] = []
    try:
        while stopped := [o for o in outcomes if o.hash_check is not None]:
            for o in stopped:
                job = _pin(engine, o)
                if job is not None:
                    o.hash_jobs.append(job)
                    pinned.append(job)
                o.hash_check = None
            resumed = [o for o in stopped if o.rest]
            if not resumed:
                break

            def rest(txn: KvTxn, resumed: list[ApplyOutcome] = resumed) -> list[ApplyOutcome]:
                return [
                    apply_task(txn, ApplyTask(o.region, o.apply_state, o.rest, skips[o.region.id]))
                    for o in resumed
                ]

            for o, more in zip(resumed, engine.write_kv(rest), strict=True):
                _extend(o, more)
    except BaseException:
        for job in pinned:
            job.pinned.close()
        raise
    return outcomes


def _pin(engine: Engine, o: ApplyOutcome) -> HashJob | None:
    index, check_id = o.apply_state.applied_index, o.hash_check
    assert check_id is not None
    if engine.pinned_kv() >= MAX_PINNED:
        log.warning(
            "region %d: consistency check at %d skipped here: %d checks are being hashed",
            o.region.id,
            index,
            MAX_PINNED,
            extra=log_fields(region=o.region.id),
        )
        return None
    pinned = engine.pin_kv(partial(region_digest, region=o.region))
    return HashJob(o.region, index, check_id, pinned)


def _extend(o: ApplyOutcome, more: ApplyOutcome) -> None:
    """`o` followed by `more` (the same task's next transaction)."""
    o.region = more.region
    o.apply_state = more.apply_state
    o.entries.extend(more.entries)
    o.region_changed = o.region_changed or more.region_changed
    o.size_hint_bytes += more.size_hint_bytes
    o.size_hint_keys += more.size_hint_keys
    o.new_regions.extend(more.new_regions)
    o.hash_check = more.hash_check
    o.rest = more.rest


def jobs_of(outcomes: Sequence[ApplyOutcome]) -> list[HashJob]:
    return [job for o in outcomes for job in o.hash_jobs]


async def hash_region(
    job: HashJob,
    limiter: trio.CapacityLimiter,
    submit: Callable[[Callable[[StoreCore], None]], Awaitable[None]],
) -> None:
    """Hash a pinned copy in a worker thread (`limiter`: one at a time)
    and hand the digest to the core through the loop (`submit`)."""
    region_id, index = job.region.id, job.index
    try:
        started = time.perf_counter()
        digest = await trio.to_thread.run_sync(job.pinned.run, limiter=limiter)
    except Exception:
        log.exception("region %d: hashing its copy at %d failed", region_id, index)
        return
    finally:
        job.pinned.close()  # cancelled before its turn: the read ends anyway
    log.debug(
        "region %d: hashed at %d in %.3f s: %s",
        region_id,
        index,
        time.perf_counter() - started,
        digest.hex(),
        extra=log_fields(region=region_id),
    )
    computed = partial(StoreCore.on_hash_computed, region_id=region_id, index=index, digest=digest)
    await submit(computed)

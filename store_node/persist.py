"""The blocking half of a round: persist the Raft batch, then apply.

Runs in the store's worker thread (one thread hop per round, not per
region). Order, and why:

1. the Raft batch (one transaction, one fsync): entries must be durable
   before any of them is applied, as the `Ready` contract asks;
2. one `kv/` transaction: committed entries, snapshot installs, peer
   destructions and apply-state updates (log truncation points); a region
   with a consistency check among its entries commits there and applies
   the rest in a transaction of its own (`region_hash.finish_checks`);
3. if the round resets or deletes any log prefix: fsync `kv/`, then write
   those Raft changes. A log is never shortened before the kv state that
   makes it unnecessary is durable.
"""

from __future__ import annotations

import time

from store_node.apply import ApplyOutcome, apply_round, write_apply_state
from store_node.engine import Engine, KvTxn
from store_node.region_hash import finish_checks
from store_node.region_tasks import destroy_peer, install_snapshot
from store_node.round_output import RoundOutput

# Applying this much entry data inline would stall the loop for too long.
INLINE_APPLY_BYTES = 256 << 10


def must_block(engine: Engine, out: RoundOutput, idle: bool, flushed: bool) -> bool:
    """Whether the round's writes run in the worker thread rather than inline.

    Long work (a snapshot, a big apply, a log reset) always goes to the
    thread, so the loop keeps receiving. An fsync does too under load; but
    when the store is `idle` apart from this round and the round carries at
    most one client write, blocking the loop for the fsync costs nobody
    anything and saves the thread hop (a third of a lone write's latency).
    `flushed`: the round's messages to send now were all handed to their
    connections already.
    """
    if out.raft_batch.ops:
        if out.must_sync and engine.sync:
            # Messages to send now (a leader's appends) must not wait for
            # this fsync: the transport's tasks run only while the loop waits,
            # so they must have left already (`flushed`).
            lone = (
                idle
                and out.proposed_writes <= 1
                and (flushed or not out.messages_now)
                and out.raft_batch.nbytes <= 64 << 10
            )
            if not lone:
                return True
        elif out.proposed_writes > 1:
            # Even without an fsync, a busy round's write goes to the thread:
            # the loop admits the next requests meanwhile, and they batch.
            return True
    if out.raft_after_kv.ops or out.snapshot_tasks or out.destroy_tasks:
        return True
    size = sum(len(e.data) for t in out.apply_tasks for e in t.entries)
    return size > INLINE_APPLY_BYTES


def persist_and_apply(engine: Engine, out: RoundOutput) -> list[ApplyOutcome]:
    persist_raft(engine, out)
    return apply_and_truncate(engine, out)


def persist_raft(engine: Engine, out: RoundOutput) -> None:
    """Step 1: the round's raft/ batch (timed when it is fsynced)."""
    if out.must_sync and engine.sync and out.raft_batch.ops:
        started = time.perf_counter()
        engine.write_raft(out.raft_batch, out.must_sync)
        out.fsync_seconds = time.perf_counter() - started
    else:
        engine.write_raft(out.raft_batch, out.must_sync)


def apply_and_truncate(engine: Engine, out: RoundOutput) -> list[ApplyOutcome]:
    """Steps 2 and 3: the kv/ transaction, then the raft/ writes that must
    follow it."""
    outcomes: list[ApplyOutcome] = []
    if out.apply_tasks or out.snapshot_tasks or out.destroy_tasks or out.apply_states:

        def kv(txn: KvTxn) -> list[ApplyOutcome]:
            for task in out.snapshot_tasks:
                install_snapshot(txn, task)
            res = apply_round(txn, out.apply_tasks)
            for region_id, state in out.apply_states:
                write_apply_state(txn, region_id, state)
            for d in out.destroy_tasks:
                destroy_peer(txn, d)
            return res

        started = time.perf_counter()
        outcomes = finish_checks(engine, out.apply_tasks, engine.write_kv(kv))
        out.apply_seconds = time.perf_counter() - started
    if out.raft_after_kv.ops:
        engine.sync_kv()
        engine.write_raft(out.raft_after_kv, out.must_sync_after_kv)
    return outcomes

"""The blocking half of a round: persist the Raft batch, then apply.

Runs in the store's worker thread (one thread hop per round, not per
region); the Raft write is durable before any entry is applied, as the
`Ready` contract asks.
"""

from __future__ import annotations

from store_node.apply import ApplyOutcome, apply_round
from store_node.core import RoundOutput
from store_node.engine import Engine


def persist_and_apply(engine: Engine, out: RoundOutput) -> list[ApplyOutcome]:
    engine.write_raft(out.raft_batch, out.must_sync)
    if not out.apply_tasks:
        return []
    tasks = out.apply_tasks
    return engine.write_kv(lambda txn: apply_round(txn, tasks))

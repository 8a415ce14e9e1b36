"""balance-leader: spread the leaders over the Up stores by leader count
(TiKV PD's balance-leader-scheduler, count policy). Pure, over a
`ScheduleContext`.

Each proposal moves one leader, with a `TransferLeader` operator (kind
LEADER, bounded by `leader_schedule_limit`), to a healthy voter (not
reported down or pending) on an Up store that no evict-leader scheduler is
emptying. Only regions free to plan (`ScheduleContext.free`) whose healthy
voters are a majority are moved (a region without a quorum cannot take
leadership changes anyway).

When to move is a judgment on the whole cluster: while the most-led store
and the least-led target differ by more than the tolerance (2 * ratio,
`schedule_context`). What to move is then any move that narrows the
spread: from a store to a voter whose store leads at least 2 fewer. It
never turns a pair around (the difference goes from d >= 2 to d - 2 >= 0
the other way), so there is no flapping, and the sum of the squared scores
drops with every move, so it ends. Sources are tried from the highest score
down; of a source's regions the one whose best voter's store leads the
fewest goes first (ties: key order).

Why not only "from the most-led store to the least-led": with 3 replicas a
region's voters cover few of the stores. Five stores leading 14/12/12/11/11
stall that rule when every region store 1 leads has its other voters on the
12s (14 - 12 is within 2): the move 14 -> 12 and then 12 -> 11 is what
balances them (benchmarks/rebalance.py stalled there before this rule).
"""

from __future__ import annotations

import logging
from typing import Final

from kvproto.metapb import Peer, StoreId
from placement_driver.operators import Operator, OperatorKind, TransferLeader
from placement_driver.regions import RegionRecord
from placement_driver.schedule_context import ScheduleContext

__all__ = ["BalanceLeader"]

log = logging.getLogger(__name__)

# A move from a store to one leading this many fewer narrows their
# difference without reversing it (the difference changes by 2).
NARROWING: Final = 2


class BalanceLeader:
    __slots__ = ()

    name = "balance-leader"
    kind = OperatorKind.LEADER
    store_id: StoreId | None = None

    def propose(self, ctx: ScheduleContext) -> Operator | None:
        targets = [s.id for s in ctx.up_stores() if s.id not in ctx.evicting]
        if not targets:
            return None
        lowest = min(ctx.leader_score(s) for s in targets)
        highest = max(ctx.leader_score(s.id) for s in ctx.up_stores())
        if highest - lowest <= 2 * ctx.tolerance():
            return None
        for source, score in ctx.sources(ctx.leader_score, lowest, NARROWING - 1):
            move = self._best_move(ctx, source, lowest)
            if move is None:
                continue
            record, to = move
            if score - ctx.leader_score(to.store_id) < NARROWING:
                continue
            log.debug(
                "balance-leader: region %d from store %d (%d leaders) to store %d (%d)",
                record.region.id,
                source,
                score,
                to.store_id,
                ctx.leader_score(to.store_id),
            )
            return ctx.operator(record, self.name, self.kind, [TransferLeader(to)])
        return None

    @staticmethod
    def _best_move(
        ctx: ScheduleContext, source: StoreId, lowest: int
    ) -> tuple[RegionRecord, Peer] | None:
        """Of the source's movable regions, the one whose best voter's store
        leads the fewest (the first in key order among equals)."""
        best: tuple[RegionRecord, Peer] | None = None
        best_score = 0
        for record, to in ctx.leader_moves(source):
            to_score = ctx.leader_score(to.store_id)
            if best is None or to_score < best_score:
                best, best_score = (record, to), to_score
                if to_score <= lowest:
                    break  # nothing can lead fewer
        return best

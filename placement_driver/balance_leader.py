"""balance-leader: spread the leaders over the Up stores by leader count
(TiKV PD's balance-leader-scheduler, count policy). Pure, over a
`ScheduleContext`.

Each proposal moves one leader, with a `TransferLeader` operator (kind
LEADER, bounded by `leader_schedule_limit`), from the store with the
highest leader score to the voter of that region with the lowest: a
healthy voter (not reported down or pending) on an Up store that no
evict-leader scheduler is emptying. Only regions free to plan
(`ScheduleContext.free`) whose healthy voters are a majority are moved (a
region without a quorum cannot take leadership changes anyway). The move
must respect the tolerance: source score - target score > 2 * ratio.
Sources are tried from the highest score down, their regions in key order,
until one region has a target; stores whose score is within the tolerance
of the lowest target's are not tried at all (the usual, balanced case costs
no pass over the regions).
"""

from __future__ import annotations

import logging

from kvproto.metapb import StoreId
from placement_driver.operators import Operator, OperatorKind, TransferLeader
from placement_driver.schedule_context import ScheduleContext

__all__ = ["BalanceLeader"]

log = logging.getLogger(__name__)


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
        margin = 2 * ctx.tolerance()
        for source, score in ctx.sources(ctx.leader_score, lowest, margin):
            for record, to in ctx.leader_moves(source):
                if score - ctx.leader_score(to.store_id) <= margin:
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

"""evict-leader-<store_id>: move every leader off one store, e.g. before
its maintenance (TiKV PD's evict-leader-scheduler). Pure, over a
`ScheduleContext`.

Each proposal moves the leadership of one region led on the store (in key
order, among the regions free to plan whose healthy voters are a
majority) to the healthy voter on an Up store with the lowest leader
score, never to a store another evict-leader scheduler empties: a
`TransferLeader` operator of kind LEADER (bounded by
`leader_schedule_limit`). A region with no such voter keeps its leader
(and is tried again next run). While the scheduler exists, no scheduler
moves a leadership to the store (`ScheduleContext.evicting`), and a
leadership that comes back (an election, the replica checker's handoff) is
moved off again.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvproto.metapb import StoreId
from placement_driver.operators import Operator, OperatorKind, TransferLeader
from placement_driver.schedule_context import ScheduleContext

__all__ = ["EVICT_LEADER", "EvictLeader"]

EVICT_LEADER = "evict-leader"  # the kind's name; a scheduler's is "evict-leader-<store_id>"


@dataclass(frozen=True, slots=True)
class EvictLeader:
    store_id: StoreId

    kind = OperatorKind.LEADER

    @property
    def name(self) -> str:
        return f"{EVICT_LEADER}-{self.store_id}"

    def propose(self, ctx: ScheduleContext) -> Operator | None:
        move = next(ctx.leader_moves(self.store_id), None)
        if move is None:
            return None
        record, to = move
        return ctx.operator(record, EVICT_LEADER, self.kind, [TransferLeader(to)])

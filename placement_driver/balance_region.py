"""balance-region: spread the replicas over the Up stores by region score
(region count and approximate size: TiKV PD's balance-region-scheduler).
Pure, over a `ScheduleContext`.

Each proposal moves one voter of one region from the store with the
highest region score to the store with the lowest that may take it, with
the replica checker's replacement plan (`RegionCheck.move_voter`):
[`TransferLeader` away if the voter leads, to a healthy voter on a store
that is not evicting], `AddLearner` on the target, `ChangePeers` (promote
it and demote the old voter, joint: the voter count never drops),
`RemovePeer` the old one. Kind REGION, bounded by `region_schedule_limit`.

Which regions move: free to plan (`ScheduleContext.free`), exactly
`max_replicas` voters and no learner (the replica checker's business
first), every voter healthy (no down or pending peer, no voter on a Down
or Tombstone store), and a plan that keeps a healthy majority after every
step. Followers before leaders (a follower moves without a leader
transfer), then key order.

Where to: a store that accepts a new peer (`region_check.accepts_peers`:
Up, known, not busy, space left, under `max_snapshot_count` and
`max_pending_peer_count`, counting running operators) and holds no peer of
the region (so a region never has two replicas on one store); the lowest
region score first. The move must respect the tolerance: source score -
target score > 2 * ratio * the region's weight. Sources are tried from the
highest score down; those within the tolerance of the lowest store that
may take a peer are not tried at all (the usual, balanced case costs no
pass over the regions).
"""

from __future__ import annotations

import logging

from kvproto.metapb import PeerRole, StoreId
from placement_driver.operators import Operator, OperatorKind
from placement_driver.region_check import accepts_peers
from placement_driver.regions import RegionRecord
from placement_driver.schedule_context import ScheduleContext
from placement_driver.stores import StoreInfo

__all__ = ["BalanceRegion"]

log = logging.getLogger(__name__)


class BalanceRegion:
    __slots__ = ()

    name = "balance-region"
    kind = OperatorKind.REGION
    store_id: StoreId | None = None

    def propose(self, ctx: ScheduleContext) -> Operator | None:
        fit = [s for s in ctx.up_stores() if accepts_peers(ctx.view, ctx.influence, s)]
        if not fit:
            return None
        lowest = min(ctx.region_score(s.id) for s in fit)
        ratio = ctx.tolerance()
        # A region weighs at least 1: the margin of the lightest.
        for source, score in ctx.sources(ctx.region_score, lowest, 2 * ratio):
            # Where a region of weight 1 could go, the emptiest first.
            targets = sorted(
                (s for s in fit if score - ctx.region_score(s.id) > 2 * ratio),
                key=lambda s: (ctx.region_score(s.id), s.id),
            )
            # Followers first: they move without a leader transfer.
            hosted = sorted(ctx.hosted_on(source), key=lambda r: _leads(r, source))
            for record in hosted:
                op = self._move(
                    ctx, record, source, score - 2 * ratio * record.stat.weight, targets
                )
                if op is not None:
                    return op
        return None

    def _move(
        self,
        ctx: ScheduleContext,
        record: RegionRecord,
        source: StoreId,
        below: float,
        targets: list[StoreInfo],
    ) -> Operator | None:
        """The move of the region's voter on `source` to the first of
        `targets` without a peer of the region, if it scores below `below`."""
        region = record.region
        voter = region.peer_on_store(source)
        if not ctx.free(record) or voter is None or voter.role != PeerRole.VOTER:
            return None
        voters = [p for p in region.peers if p.role == PeerRole.VOTER]
        if len(voters) != ctx.view.config.max_replicas or len(voters) != len(region.peers):
            return None
        check = ctx.check(record)
        if not all(check.healthy(v) for v in voters):
            return None
        target = next((s for s in targets if region.peer_on_store(s.id) is None), None)
        if target is None or ctx.region_score(target.id) >= below:
            return None
        steps = check.move_voter(voter, target)
        if steps is None:
            return None
        log.debug(
            "balance-region: region %d from store %d to store %d (score %d)",
            region.id,
            source,
            target.id,
            ctx.region_score(target.id),
        )
        return ctx.operator(record, self.name, self.kind, steps)


def _leads(record: RegionRecord, store_id: StoreId) -> bool:
    return record.leader is not None and record.leader.store_id == store_id

"""The PD's side of replica consistency checks (`store_node.consistency`
is the stores'): it orders the checks administrators ask for, and compares
the digests every replica reports.

* An order (`request`, from the admin API) gets a check id from the id
  allocator, waits for the region's leader to heartbeat (the leader's store
  is asked to report the region at once, `regions_waiting`), and goes out in
  the answer (`order_for`: `RegionHeartbeatResponse.consistency_check`);
  sent again after `RESEND_AFTER` while no replica has reported it (a leader
  change can lose the proposal), given up after `ORDER_TTL`.
* Every replica of the region at the check's index reports its digest
  (`report`); a check is *pending* until all of them did, *match* when all
  agree, *mismatch* as soon as two differ. A mismatch names the stores
  outside the largest group of equal digests (all of them when no group is
  larger than every other), is logged at ERROR once, and shows in the admin
  API (`placement_driver.http_consistency`). Periodic checks (check id 0)
  land here the same way.

Pure and in memory: a restarted PD knows of no check until the next
reports (its orders are lost; the administrator asks again).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from kvproto import pdpb
from kvproto.metapb import RegionId, StoreId
from placement_driver.cluster import Cluster
from placement_driver.errors import PdRequestError, failed_precondition

__all__ = ["CheckState", "ConsistencyChecks", "RegionCheck"]

log = logging.getLogger(__name__)

# An order no replica has answered is sent again after this many seconds,
# and given up after ORDER_TTL.
RESEND_AFTER: Final = 10.0
ORDER_TTL: Final = 120.0
# Orders waiting at once, at most (each check reads a region on every replica).
MAX_ORDERS: Final = 64
# Checks kept per region (the newest).
HISTORY: Final = 4
# A digest is 16 bytes; anything much longer is not one.
MAX_DIGEST: Final = 64


class CheckState(enum.Enum):
    REQUESTED = "requested"  # ordered; no replica has reported yet
    PENDING = "pending"  # some replicas reported, all alike so far
    MATCH = "match"
    MISMATCH = "mismatch"


@dataclass(slots=True)
class RegionCheck:
    """One check of one region: the digests its replicas reported."""

    region_id: int
    check_id: int  # 0: periodic
    index: int = 0  # 0 until a replica reports
    stores: tuple[StoreId, ...] = ()  # the replicas at `index`
    digests: dict[StoreId, bytes] = field(default_factory=dict)
    requested_at: float | None = None
    reported_at: float | None = None  # the latest report
    logged: bool = False

    @property
    def state(self) -> CheckState:
        if not self.digests:
            return CheckState.REQUESTED
        if len(set(self.digests.values())) > 1:
            return CheckState.MISMATCH
        if self.missing():
            return CheckState.PENDING
        return CheckState.MATCH

    def missing(self) -> list[StoreId]:
        return [s for s in self.stores if s not in self.digests]

    def differing(self) -> list[StoreId]:
        """The stores whose digest is not the majority's (every store that
        reported when no digest is held by more stores than each other)."""
        counts = Counter(self.digests.values())
        if len(counts) < 2:
            return []
        (top, n), (_, runner_up) = counts.most_common(2)
        return sorted(s for s, d in self.digests.items() if n == runner_up or d != top)


@dataclass(slots=True)
class _Order:
    check: RegionCheck
    sent_at: float | None = None


class ConsistencyChecks:
    def __init__(self) -> None:
        self._checks: dict[int, list[RegionCheck]] = {}  # by region, oldest first
        self._orders: dict[int, _Order] = {}  # by region

    # -- orders -------------------------------------------------------------------

    def request(self, cluster: Cluster, region_id: int, now: float) -> RegionCheck:
        """Order a check of the region (one already waiting is answered
        instead); REGION_NOT_FOUND, or FAILED_PRECONDITION with no leader
        known or too many orders waiting."""
        cluster.check_bootstrapped()
        self._expire(now)
        record = cluster.region_by_id(region_id)
        if record is None:
            raise PdRequestError(pdpb.PdErrorCode.REGION_NOT_FOUND, f"region {region_id} not found")
        order = self._orders.get(region_id)
        if order is not None:
            return order.check
        if record.leader is None:
            raise failed_precondition(f"region {region_id} has no known leader yet")
        if len(self._orders) >= MAX_ORDERS:
            raise failed_precondition(
                f"{MAX_ORDERS} consistency checks are waiting for their regions already"
            )
        (check_id,) = cluster.alloc_ids(1)
        check = RegionCheck(region_id, check_id, requested_at=now)
        self._orders[region_id] = _Order(check)
        log.info("consistency check %d of region %d ordered", check_id, region_id)
        return check

    def order_for(self, region_id: int, now: float) -> int:
        """The check id the region's leader must start now (0: none)."""
        order = self._orders.get(region_id)
        if order is None or not self._due(order, now):
            return 0
        order.sent_at = now
        return order.check.check_id

    def regions_waiting(self, cluster: Cluster, store_id: StoreId) -> tuple[RegionId, ...]:
        """Regions led on the store with an order to send: the store is
        asked to report them at once."""
        out: list[RegionId] = []
        for region_id, order in self._orders.items():
            record = cluster.region_by_id(region_id)
            if record is None or record.leader is None or record.leader.store_id != store_id:
                continue
            if order.sent_at is None:
                out.append(RegionId(region_id))
        return tuple(out)

    def _due(self, order: _Order, now: float) -> bool:
        return order.sent_at is None or now - order.sent_at >= RESEND_AFTER

    def _expire(self, now: float) -> None:
        for region_id, order in list(self._orders.items()):
            requested = order.check.requested_at
            if requested is not None and now - requested > ORDER_TTL:
                del self._orders[region_id]
                log.warning(
                    "consistency check %d of region %d: no replica reported it within %.0f s",
                    order.check.check_id,
                    region_id,
                    ORDER_TTL,
                )

    # -- reports ------------------------------------------------------------------

    def report(
        self, cluster: Cluster, req: pdpb.ReportRegionHashRequest, now: float
    ) -> RegionCheck | None:
        """A replica's digest; None if it is ignored (a region the PD does
        not know, a store not among the replicas, a check older than the
        ones kept)."""
        self._expire(now)
        region_id = req.region.id
        if cluster.region_by_id(region_id) is None or len(req.hash) > MAX_DIGEST:
            return None
        stores = tuple(p.store_id for p in req.region.peers)
        if req.store_id not in stores:
            return None
        check = self._check_at(region_id, req.check_id, req.index, stores)
        if check is None:
            return None
        check.digests[req.store_id] = req.hash
        check.reported_at = now
        state = check.state
        if state is CheckState.MISMATCH and not check.logged:
            check.logged = True
            log.error(
                "consistency check of region %d at applied index %d: replicas differ: %s",
                region_id,
                check.index,
                ", ".join(f"store {s} {d.hex()}" for s, d in sorted(check.digests.items())),
            )
        elif state is CheckState.MATCH:
            log.debug("consistency check of region %d at %d: match", region_id, check.index)
        return check

    def _check_at(
        self, region_id: int, check_id: int, index: int, stores: tuple[StoreId, ...]
    ) -> RegionCheck | None:
        kept = self._checks.setdefault(region_id, [])
        for check in kept:
            if check.index == index:
                return check
        if len(kept) >= HISTORY and index < kept[0].index:
            return None
        order = self._orders.get(region_id)
        if check_id and order is not None and order.check.check_id == check_id:
            del self._orders[region_id]
            check = order.check
        else:
            check = RegionCheck(region_id, check_id)
        check.index, check.stores = index, stores
        kept.append(check)
        kept.sort(key=lambda c: c.index)
        del kept[:-HISTORY]
        return check

    # -- views --------------------------------------------------------------------

    def find(self, region_id: int, check_id: int | None = None) -> RegionCheck | None:
        """The region's check `check_id` (ordered or reported), else its
        latest reported one."""
        order = self._orders.get(region_id)
        if check_id is not None and order is not None and order.check.check_id == check_id:
            return order.check
        kept = self._checks.get(region_id, [])
        if check_id is None:
            return kept[-1] if kept else None
        return next((c for c in kept if c.check_id == check_id), None)

    def latest(self) -> list[RegionCheck]:
        """Each region's latest reported check, by region id."""
        return [kept[-1] for _, kept in sorted(self._checks.items()) if kept]

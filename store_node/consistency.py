"""Replica consistency checks, as TiKV's ComputeHash / VerifyHash: the
core's side (pure: no I/O, no clock but store ticks).

1. A region's leader proposes a `ComputeHashRequest` through Raft: on a
   configured interval (store setting `consistency_check_interval`, off by
   default), or when the PD orders a check an administrator asked for.
2. Every replica applies it at the same index and hashes its copy of the
   region as of that index (`store_node.region_hash`, in a worker thread);
   each sends its digest to the PD (`ReportRegionHashRequest`), which
   compares them all and shows the result (`placement_driver.consistency`).
3. The replica that leads when its own digest is ready proposes a
   `VerifyHashRequest` with it; every replica applying it compares its own
   digest (whichever of the two comes first waits for the other). A
   mismatch is logged at ERROR with the region, the index, both stores
   and both digests, and counted (`consistency_mismatches`).

Why a second entry rather than followers sending their digests to the
leader: it needs no new channel between stores, every replica learns the
verdict by itself (a store alone with a bad copy says so in its own log),
and the simulation gets it for free: it is all Raft entries applied by the
real core. The PD sees every replica's digest anyway, so it names the
stores that differ even when the leader's copy is the odd one out.

Periodic checks: each store starts at most one at a time (the next when the
leader's digest is in, or after `IN_FLIGHT_TICKS`), for the led region
checked longest ago, once per interval per region; a region first seen
here counts as checked a random part of an interval ago, so leaders
stagger. A sleeping region is checked too (the proposal wakes it: a copy at
rest can rot as well); it falls asleep again once idle.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvproto import codec, pdpb
from kvproto.metapb import Region, StoreId
from kvproto.raft_cmdpb import ComputeHashRequest, VerifyHashRequest
from plumbing.logs import log_fields
from raft.errors import ProposalDroppedError
from store_node.peer import Peer

if TYPE_CHECKING:
    from store_node.region_hash import HashJob

log = logging.getLogger(__name__)

# A periodic check whose leader digest has not come in this many store
# ticks is given up (its entry was lost with a leader change, or the
# leadership moved away): the next one may start.
IN_FLIGHT_TICKS = 600
# Checks sent to the PD not yet taken by the PD worker, at most (a PD away
# for long must not grow them without bound; the oldest go first).
MAX_REPORTS = 1024


def interval_ticks(interval: float, tick_interval: float) -> int:
    """The store setting in store ticks (0: off)."""
    if interval <= 0:
        return 0
    return max(1, round(interval / tick_interval))


@dataclass(slots=True)
class ReplicaCheck:
    """This replica's part in its region's latest check."""

    index: int
    check_id: int
    region: Region  # as of `index`
    digest: bytes | None = None
    leader_digest: bytes | None = None
    leader_store: int = 0
    judged: bool = False


class ConsistencyChecks:
    """The checks of one store's peers (`peers`: the core's, by region id).
    `stats` is the core's counters; `touch(region_id)` runs a region in
    the next round, awake; `run_round(region_id)` only runs the next round."""

    def __init__(
        self,
        store_id: StoreId,
        peers: Mapping[int, Peer],
        stats: defaultdict[str, int],
        interval_ticks: int,
        rng: random.Random,
        *,
        touch: Callable[[int], None],
        run_round: Callable[[int], None],
    ) -> None:
        self.store_id = store_id
        self.peers = peers
        self.stats = stats
        self.interval = interval_ticks
        self.rng = rng
        self._touch = touch
        self._run_round = run_round
        # Region id -> this replica's latest check.
        self.checks: dict[int, ReplicaCheck] = {}
        # Region id -> store tick its latest check applied here.
        self.last_checked: dict[int, int] = {}
        # The periodic check under way: (region id, tick proposed).
        self.in_flight: tuple[int, int] | None = None
        # Digests to send to the PD (`take_reports`).
        self.reports: list[pdpb.ReportRegionHashRequest] = []
        self._scan_every = max(1, min(50, interval_ticks // 4))

    # -- leaders -----------------------------------------------------------------

    def start(self, region_id: int, check_id: int) -> str | None:
        """Propose a check of a region led here; why not, or None."""
        peer = self.peers.get(region_id)
        if peer is None or not peer.initialized or not peer.is_leader():
            return f"region {region_id} is not led here"
        refused = propose_compute_hash(peer, check_id)
        if refused is None:
            self._touch(region_id)  # a sleeping region is checked too: wake it
            self.stats["consistency_checks_proposed"] += 1
            log.log(
                logging.INFO if check_id else logging.DEBUG,
                "region %d: consistency check %d proposed",
                region_id,
                check_id,
                extra=log_fields(region=region_id),
            )
        return refused

    def on_tick(self, now_tick: int) -> None:
        """Start the periodic check due now, if any (looked for every few
        ticks: a pass is over every peer of the store)."""
        if not self.interval or now_tick % self._scan_every:
            return
        if self.in_flight is not None:
            if now_tick - self.in_flight[1] < IN_FLIGHT_TICKS:
                return
            self.in_flight = None
        oldest: int | None = None
        oldest_tick = 0
        for rid, peer in self.peers.items():
            if not peer.is_leader() or not peer.initialized:
                continue
            last = self.last_checked.get(rid)
            if last is None:
                last = self.last_checked[rid] = now_tick - self.rng.randrange(self.interval)
            if now_tick - last >= self.interval and (oldest is None or last < oldest_tick):
                oldest, oldest_tick = rid, last
        if oldest is not None:
            self.last_checked[oldest] = now_tick
            if self.start(oldest, 0) is None:
                self.in_flight = (oldest, now_tick)

    # -- every replica -------------------------------------------------------------

    def pinned(self, jobs: Sequence[HashJob], now_tick: int) -> None:
        """Checks applied here in a round: their copies are being hashed."""
        for job in jobs:
            self.checks[job.region.id] = ReplicaCheck(job.index, job.check_id, job.region)
            self.last_checked[job.region.id] = now_tick

    def applied(self, region_id: int, req: ComputeHashRequest | VerifyHashRequest) -> None:
        """A check's entry applied here (a ComputeHash counts through its
        pinned copy, `pinned`)."""
        if isinstance(req, VerifyHashRequest):
            self._verify(region_id, req)

    def computed(self, region_id: int, index: int, digest: bytes) -> None:
        """This replica's digest at `index` is in: reported to the PD,
        compared if the leader's is known, and proposed for the others to
        compare if this replica leads. Ignored if a later check replaced
        that one meanwhile."""
        check = self.checks.get(region_id)
        if check is None or check.index != index:
            return
        check.digest = digest
        self.stats["consistency_checks_computed"] += 1
        if self.in_flight is not None and self.in_flight[0] == region_id:
            self.in_flight = None
        self.reports.append(
            pdpb.ReportRegionHashRequest(
                pdpb.RequestHeader(), check.region, check.check_id, index, self.store_id, digest
            )
        )
        del self.reports[:-MAX_REPORTS]
        self._run_round(region_id)
        self._judge(check)
        peer = self.peers.get(region_id)
        if peer is not None and peer.is_leader():
            refused = propose_verify_hash(peer, index, digest, self.store_id)
            if refused is None:
                self._touch(region_id)
            else:
                log.info("region %d: digest at %d not proposed: %s", region_id, index, refused)

    def take_reports(self) -> list[pdpb.ReportRegionHashRequest]:
        reports, self.reports = self.reports, []
        return reports

    def forget(self, region_id: int) -> None:
        """The peer is gone from this store."""
        self.checks.pop(region_id, None)
        self.last_checked.pop(region_id, None)

    def _verify(self, region_id: int, req: VerifyHashRequest) -> None:
        check = self.checks.get(region_id)
        if check is None or check.index != req.index:
            # This replica did not apply that ComputeHash (a snapshot took it
            # past it) or restarted since: it has nothing to compare.
            log.debug("region %d: no digest at %d here to verify", region_id, req.index)
            return
        if check.leader_digest is None:
            check.leader_digest = req.hash
            check.leader_store = req.store_id
            self._judge(check)

    def _judge(self, check: ReplicaCheck) -> None:
        if check.judged or check.digest is None or check.leader_digest is None:
            return
        check.judged = True
        region = check.region
        if check.digest == check.leader_digest:
            self.stats["consistency_checks_matched"] += 1
            log.debug("region %d: consistent at %d", region.id, check.index)
            return
        self.stats["consistency_mismatches"] += 1
        log.error(
            "region %d: replicas differ at applied index %d: store %d has %s, "
            "the leader's store %d has %s (range [%r, %r))",
            region.id,
            check.index,
            self.store_id,
            check.digest.hex(),
            check.leader_store,
            check.leader_digest.hex(),
            region.start_key,
            region.end_key,
            extra=log_fields(region=region.id),
        )


def propose_compute_hash(peer: Peer, check_id: int) -> str | None:
    """Propose a check of the leader's region; why not, or None."""
    return _propose(peer, ComputeHashRequest(check_id))


def propose_verify_hash(peer: Peer, index: int, digest: bytes, store_id: StoreId) -> str | None:
    """Propose the leader's digest at `index` for every replica to compare."""
    return _propose(peer, VerifyHashRequest(index, digest, store_id))


def _propose(peer: Peer, req: ComputeHashRequest | VerifyHashRequest) -> str | None:
    # Nobody waits for these entries: no Proposal is recorded.
    try:
        peer.node.propose(codec.dumps(peer.command(req)))
    except ProposalDroppedError as e:
        return str(e) or type(e).__name__
    return None

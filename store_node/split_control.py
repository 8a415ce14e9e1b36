"""The splits of a store's regions, as the core sees them: when a leader's
region must be measured, what a measure decides, the Raft messages that
arrive for a region a pending split will create here, and the splits to
report to the PD.

Owns its state; knows nothing of rounds or I/O. `StoreCore` calls it when
an apply changes a region's size, when a split applies, when a measure
comes back, and at each tick and round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from kvproto.metapb import Region
from kvproto.raft_serverpb import RaftMessage
from store_node.peer import Peer

# Messages kept per region a pending split will create (beyond: dropped,
# Raft retries them).
MAX_EARLY_MESSAGES = 16


class SplitControl:
    def __init__(self) -> None:
        # Split thresholds learnt from the PD: (region_max_size, region_max_keys).
        self.limits: tuple[int, int] | None = None
        # Regions to measure in the next round.
        self._due: set[int] = set()
        # Messages for regions a pending split here will create (the sender
        # applied the split first), replayed when the split creates the peer.
        self._early: dict[int, list[RaftMessage]] = defaultdict(list)
        # Splits applied by a leader here, to report to the PD.
        self.reports: list[tuple[Region, ...]] = []

    # -- measuring -----------------------------------------------------------

    @property
    def has_due(self) -> bool:
        return bool(self._due)

    def on_size_changed(self, peer: Peer) -> None:
        """An apply changed the leader's size estimate: measure the region if
        it may now be over a threshold (or its size is unknown)."""
        limits = self.limits
        if limits is None or peer.split_checking or not peer.is_leader():
            return
        size, count = peer.approximate_size, peer.approximate_keys
        if size is None or count is None or size > limits[0] or count > limits[1]:
            self._due.add(peer.region_id)

    def schedule_all(self, peers: Iterable[Peer]) -> list[int]:
        """Measure again every leader's region written since it was last
        measured (the estimates only grow at apply; deletes and overwrites
        shrink regions; a region nobody wrote to keeps its size, and ten
        thousand idle regions need no scan a minute). Returns their ids."""
        ids = [
            p.region_id
            for p in peers
            if p.size_changed and p.is_leader() and p.initialized and not p.split_checking
        ]
        self._due.update(ids)
        return ids

    def take_due(self, peers: Mapping[int, Peer]) -> list[Region]:
        """The regions (as of now) to measure, each marked as being measured."""
        regions = []
        for rid in sorted(self._due):
            peer = peers.get(rid)
            if peer is not None and peer.is_leader() and peer.initialized:
                peer.split_checking = True
                peer.size_changed = False  # a write from now on is measured next time
                regions.append(peer.region)
        self._due.clear()
        return regions

    def on_measured(
        self, peer: Peer, size: int, keys: int, split_keys: tuple[bytes, ...], version: int
    ) -> Region | None:
        """A scan measured the region: record its size; returns the region to
        split at `split_keys` if it should be (and did not change meanwhile)."""
        peer.split_checking = False
        if peer.region.epoch.version != version:
            return None  # split or merged since: the next check decides
        peer.approximate_size, peer.approximate_keys = size, keys
        if not split_keys or not peer.is_leader():
            return None
        return peer.region

    # -- applied splits ----------------------------------------------------------

    def on_split(self, peer: Peer, regions: tuple[Region, ...]) -> None:
        """A split applied to `peer`'s region (`regions`: the original first)."""
        peer.split_siblings = regions[1:]
        # The parts' sizes are unknown until measured: split the estimate.
        n = len(regions)
        if peer.approximate_size is not None:
            peer.approximate_size //= n
        if peer.approximate_keys is not None:
            peer.approximate_keys //= n
        if peer.is_leader():
            self.reports.append(regions)

    def take_reports(self) -> list[tuple[Region, ...]]:
        reports, self.reports = self.reports, []
        return reports

    # -- messages ahead of a split ------------------------------------------------

    def keep_early(self, msg: RaftMessage) -> None:
        early = self._early[msg.region_id]
        if len(early) < MAX_EARLY_MESSAGES:
            early.append(msg)

    def take_early(self, region_id: int) -> list[RaftMessage]:
        return self._early.pop(region_id, [])

    def on_tick(self) -> None:
        # Raft retries on its own what was kept longer than a tick.
        self._early.clear()

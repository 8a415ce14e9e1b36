"""When a peer compacts its Raft log (per region, locally): the policy.

Compacting a region's log moves its truncation point (the index from which
a snapshot of its kv/ state can stand in for the log: kv/ is the snapshot,
a follower's copy is generated from it on demand) up to at most the applied
index, and deletes the log prefix before it, once the kv/ state that
replaces it is durable (`store_node.persist`: a log prefix is deleted only
after `sync_kv()`). No CompactLog proposals: each store decides alone.

A region's log is compacted when any trigger holds (`Trigger`), counting
only what can go (below):

* BYTES: more than `max_bytes` bytes of it can go (as stored, counted
  exactly by `PeerStorage.sizes` as entries are appended and truncated: no
  scans);
* ENTRIES: more than `max_entries` entries of it can go;
* INTERVAL: `interval_ticks` have passed since its last compaction (or
  since the peer started) and anything can go, so that a quiet region's
  leftover log goes too.

What can go: the entries up to the applied index; on a leader, not those a
follower within `max_follower_lag` entries still needs (one further behind
gets a snapshot instead, so one slow or dead replica never makes a log grow
without bound), unless the log holds more than `hard_max_bytes`. Counting
what can go, not the log, is what amortizes: a follower lagging steadily
behind holds the log above the limits without making a compaction, and
the kv/ fsync it costs, of a few entries every round.

The triggers are looked at when a region applies entries, and for the
interval by a timer (`LogGc.on_tick`: one entry per region in a heap of due
ticks, at most `INTERVAL_BATCH` regions decided a tick, so that regions due
together do not make one huge round).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    # Only for annotations: store_node.config imports LogGcConfig from here,
    # and the CLI, without the server extra, must not pull in lmdb.
    from store_node.peer import Peer
    from store_node.round_output import RoundOutput

__all__ = ["INTERVAL_BATCH", "LogGc", "LogGcConfig", "Trigger", "truncate_point"]

# Interval compactions decided per tick at most (the rest wait a tick).
INTERVAL_BATCH: Final = 64


class Trigger(enum.Enum):
    """Why a region's log was compacted (the first that holds, in this order)."""

    BYTES = "bytes"
    ENTRIES = "entries"
    INTERVAL = "interval"

    @property
    def stat(self) -> str:
        """Its counter in `StoreCore.stats`."""
        return f"log_truncations_by_{self.value}"


@dataclass(frozen=True, slots=True)
class LogGcConfig:
    max_entries: int = 128
    max_bytes: int = 16 << 20
    # 0: no interval trigger (the store's default comes from its config).
    interval_ticks: int = 0
    max_follower_lag: int = 10_000
    hard_max_bytes: int = 64 << 20


def truncate_point(peer: Peer, cfg: LogGcConfig, interval_up: bool) -> tuple[int, Trigger] | None:
    """The index to truncate the log to and the trigger that holds (with
    `interval_up`: its interval has passed), or None to leave it alone."""
    storage = peer.storage
    a = storage.apply_state
    applied, truncated = a.applied_index, a.truncated_index
    if applied <= truncated:
        return None
    if (
        not interval_up
        and applied - truncated <= cfg.max_entries
        and storage.sizes.up_to(applied) <= cfg.max_bytes
    ):
        return None  # not enough even if everything applied could go
    target = applied
    if peer.is_leader() and storage.log_bytes <= cfg.hard_max_bytes:
        status = peer.node.status()
        for node_id, pr in status.progress.items():
            if node_id == status.id:
                continue
            if applied - pr.match <= cfg.max_follower_lag:
                # Within the allowance: keep what it still needs.
                target = min(target, pr.match)
    if target <= truncated:
        return None
    if storage.sizes.up_to(target) > cfg.max_bytes:
        return target, Trigger.BYTES
    if target - truncated > cfg.max_entries:
        return target, Trigger.ENTRIES
    return (target, Trigger.INTERVAL) if interval_up else None


@dataclass(slots=True)
class LogGc:
    """The store's log compaction: what is decided for the next round, and,
    with an interval, when each region was last compacted and when to look
    at it next. Time is the store's ticks."""

    config: LogGcConfig
    # region -> (index, term, trigger) to truncate to in the next round.
    truncations: dict[int, tuple[int, int, Trigger]] = field(default_factory=dict)
    # region -> the tick of its last compaction (or of its peer's start).
    _last: dict[int, int] = field(default_factory=dict)
    # (tick due, region), one entry per region: when to look at it next.
    _due: list[tuple[int, int]] = field(default_factory=list)
    _queued: set[int] = field(default_factory=set)

    def start(self, region_id: int, ticks: int) -> None:
        """A peer of the region started (its interval counts from now)."""
        self._compacted(region_id, ticks)

    def on_applied(self, peer: Peer, ticks: int) -> bool:
        """The peer applied entries: decide whether a trigger holds and how
        far; whether a truncation is now due."""
        interval = self.config.interval_ticks
        since = ticks - self._last.get(peer.region_id, ticks)
        return self._decide(peer, interval_up=bool(interval) and since >= interval)

    def on_tick(self, peers: Mapping[int, Peer], ticks: int) -> None:
        """Decide the regions whose interval is up (at most `INTERVAL_BATCH`
        a tick; the rest wait for the next)."""
        interval = self.config.interval_ticks
        decided = 0
        while self._due and self._due[0][0] <= ticks and decided < INTERVAL_BATCH:
            _, rid = heapq.heappop(self._due)
            last = self._last.get(rid)
            peer = peers.get(rid)
            if last is None or peer is None:  # destroyed
                self._last.pop(rid, None)
                self._queued.discard(rid)
                continue
            if ticks - last < interval:  # compacted since it was queued
                heapq.heappush(self._due, (last + interval, rid))
                continue
            decided += 1
            if peer.initialized:
                self._decide(peer, interval_up=True)
            # Looked at again an interval from now, or from its compaction.
            heapq.heappush(self._due, (ticks + interval, rid))

    def write(self, peers: Mapping[int, Peer], out: RoundOutput, ticks: int) -> dict[Trigger, int]:
        """Add the decided truncations to the round (`write_truncations`);
        the compactions written, by trigger."""
        done: dict[Trigger, int] = {}
        decided = {rid: (index, term) for rid, (index, term, _) in self.truncations.items()}
        for rid in write_truncations(peers, decided, out):
            trigger = self.truncations[rid][2]
            done[trigger] = done.get(trigger, 0) + 1
            self._compacted(rid, ticks)
        self.truncations.clear()
        return done

    def _decide(self, peer: Peer, *, interval_up: bool) -> bool:
        point = truncate_point(peer, self.config, interval_up)
        if point is None:
            return False
        index, trigger = point
        self.truncations[peer.region_id] = (index, peer.storage.term(index), trigger)
        return True

    def _compacted(self, region_id: int, ticks: int) -> None:
        interval = self.config.interval_ticks
        if not interval:
            return  # nothing is timed
        self._last[region_id] = ticks
        if region_id not in self._queued:
            self._queued.add(region_id)
            heapq.heappush(self._due, (ticks + interval, region_id))


def write_truncations(
    peers: Mapping[int, Peer], truncations: Mapping[int, tuple[int, int]], out: RoundOutput
) -> list[int]:
    """Add the decided truncations (region -> (index, term)) to the round:
    the log deletions after the kv/ write, the apply states with the new
    truncation point (in the region's apply task if it has one, which
    writes the apply state anyway). Returns the regions written."""
    with_task = {t.region.id for t in out.apply_tasks}
    written = []
    for rid, (index, term) in sorted(truncations.items()):
        peer = peers.get(rid)
        if peer is None or index <= peer.storage.apply_state.truncated_index:
            continue
        peer.storage.truncate_to(index, term, out.raft_after_kv)
        written.append(rid)
        if rid in with_task:
            for i, t in enumerate(out.apply_tasks):
                if t.region.id == rid:
                    out.apply_tasks[i] = replace(t, apply_state=peer.storage.apply_state)
        else:
            out.apply_states.append((rid, peer.storage.apply_state))
    return written

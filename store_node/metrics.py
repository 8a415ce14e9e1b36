"""A store's Prometheus metrics, served as `GET /metrics` on its status
port (`store_node.status_http`).

One `CollectorRegistry` per `StoreNode` (not prometheus_client's global
one): tests run several stores in one process.

The cost model. The store loop runs thousands of rounds a second, and a
prometheus_client Counter takes a lock on every `inc`. So:

* counters are plain ints where they happen: `StoreCore.stats` (the core's
  events: proposals, log appends, snapshots, splits, reads...), the shell's
  `StoreNode.loop_counters()` (rounds, Raft messages); `StoreCollector` reads
  them, and the gauges (regions and leaders hosted, log sizes, the loop's
  queue), only when scraped;
* the disk's state (`store_node.disk.DiskMonitor`: full or not, free bytes)
  is read from its last sample when scraped;
* latencies are prometheus_client Histograms observed by the shell once per
  round from the durations `store_node.persist` measured (about a
  microsecond per round for the two), and once per PD heartbeat.

Scrapes run on the trio thread, like the store loop, so reading the core
between two of its steps needs no lock; they do not wait for the loop (a
store stuck in a long round still answers).

Every counter is `shardkv_store_<name>_total` for a counter `<name>` of the
core or the shell (documented in `COUNTER_HELP`), except the proposals,
`shardkv_store_proposals_total{type=write|conf_change|split}`, and the log
compactions, `shardkv_store_log_truncations_total{trigger=bytes|entries|interval}`.

Log growth per region without a series per region (10,000 regions would be
10,000 series): the totals, the largest region's log, and how many regions'
logs fall in each size bucket (gauge histograms, `LOG_BYTES_BUCKETS` and
`LOG_ENTRIES_BUCKETS`); `GET /status` lists every region's.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from plumbing.metrics import LATENCY_BUCKETS
from store_node.blob_files import BlobStats
from store_node.core import StoreCore
from store_node.disk import DiskMonitor
from store_node.log_gc import Trigger
from store_node.round_output import RoundOutput

__all__ = [
    "COUNTER_HELP",
    "LOG_BYTES_BUCKETS",
    "LOG_ENTRIES_BUCKETS",
    "MetricsSource",
    "StoreCollector",
    "StoreMetrics",
]

log = logging.getLogger(__name__)

# The counters of `StoreCore.stats` folded into shardkv_store_proposals_total.
PROPOSAL_TYPES: Final = {
    "proposed_writes": "write",
    "conf_changes_proposed": "conf_change",
    "splits_proposed": "split",
}

# The counters of `StoreCore.stats` folded into shardkv_store_log_truncations_total.
TRUNCATION_TRIGGERS: Final = {t.stat: t.value for t in Trigger}

# Upper bounds of the buckets of regions by the size of their log.
LOG_BYTES_BUCKETS: Final = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20)
LOG_ENTRIES_BUCKETS: Final = (16, 64, 128, 256, 1024, 4096, 16384)

# Every counter kept by the core or the shell, with its meaning. All are
# exported from the start (at 0); a counter missing here is still exported,
# with a generic help text.
COUNTER_HELP: Final = {
    "rounds": "Rounds of the store loop (each one raft/ write batch for every region)",
    "raft_messages_sent": "Raft messages handed to a connection to another store",
    "raft_frames_sent": "Frames (batches of Raft messages) written to other stores",
    "raft_messages_received": "Raft messages received from other stores",
    "raft_frames_received": "Frames (batches of Raft messages) received from other stores",
    "raft_messages_dropped": "Raft messages dropped (queue full, store unreachable)",
    "raft_messages_misaddressed": "Raft messages received for another store (dropped; "
    "e.g. for the store this one replaced)",
    "log_entries_appended": "Raft log entries appended to this store's raft/",
    "log_bytes_appended": "Bytes of Raft log entry data appended to this store's raft/",
    "snapshots_generated": "Snapshots generated for followers",
    "snapshots_sent": "Snapshots sent to other stores",
    "snapshot_send_failures": "Snapshots that failed to reach another store",
    "snapshots_received": "Snapshots received and accepted",
    "full_snapshots_sent": "Snapshots sent whole",
    "delta_snapshots_sent": "Snapshots sent as a delta (only the sub-ranges that differ)",
    "snapshot_bytes_sent": "Bytes of snapshot files and digest exchanges sent",
    "snapshot_bytes_whole": "Bytes the snapshots sent would have been whole",
    "delta_snapshots_refused": "Delta snapshots refused: the copy moved or changed range",
    "delta_snapshots_installed": "Delta snapshots installed",
    "splits": "Region splits applied by a leader on this store",
    "peers_created": "Peers created on this store by a message of their region",
    "peers_destroyed": "Peers removed from this store",
    "lease_reads": "Reads answered from a leader's lease (no ReadIndex round)",
    "follower_reads": "Follower reads forwarded to the leader for a read index",
    "stale_reads": "Stale reads served from the applied state",
    "stale_reads_refused": "Stale reads too stale, served as follower reads",
    "ticks_skipped": "Raft ticks skipped because the last one still waited for the loop "
    "(an overloaded store's Raft clock runs slow)",
    "consistency_checks_proposed": "Consistency checks proposed by leaders on this store",
    "consistency_checks_computed": "Region copies hashed here for consistency checks",
    "consistency_checks_matched": "Consistency checks whose digest here matched the leader's",
    "consistency_mismatches": "Consistency checks whose digest here differed from the "
    "leader's (this replica or the leader holds a corrupt copy; the PD names which)",
}


class MetricsSource(Protocol):
    """What the collector reads (`StoreNode` has it): the core once it
    exists, the shell's counters, the loop's queue, the disk's state."""

    @property
    def core(self) -> StoreCore | None: ...

    @property
    def disk(self) -> DiskMonitor: ...

    def blob_usage(self) -> BlobStats: ...

    def loop_counters(self) -> dict[str, int]: ...

    def queued_events(self) -> int: ...


class StoreMetrics:
    """The registry of one store and the histograms its shell observes."""

    def __init__(self, source: MetricsSource) -> None:
        self.registry = CollectorRegistry()
        self.fsync_seconds = Histogram(
            "shardkv_store_raft_log_fsync_seconds",
            "Time of a round's synced raft/ write (one LMDB transaction and its fsync)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "shardkv_store_apply_seconds",
            "Time of a round's kv/ transaction (committed entries applied, snapshots "
            "installed, peers destroyed)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pd_heartbeat_seconds = Histogram(
            "shardkv_store_pd_heartbeat_seconds",
            "Time from sending a heartbeat to the PD to its answer, by kind (store, region)",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Bound once: `labels()` looks the child up on every call.
        self._pd_heartbeat = {
            kind: self.pd_heartbeat_seconds.labels(kind) for kind in ("store", "region")
        }
        self.registry.register(StoreCollector(source))

    def observe_round(self, out: RoundOutput) -> None:
        """The latencies a round's persistence measured."""
        if out.fsync_seconds is not None:
            self.fsync_seconds.observe(out.fsync_seconds)
        if out.apply_seconds is not None:
            self.apply_seconds.observe(out.apply_seconds)

    def observe_pd_heartbeat(self, kind: str, seconds: float) -> None:
        self._pd_heartbeat[kind].observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class StoreCollector(Collector):
    """Reads the store's plain counters and its peers when scraped."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        # The registry is ours alone and the names are fixed: nothing to
        # check for clashes at registration.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        source = self._source
        core = source.core
        counters = dict(source.loop_counters())
        if core is not None:
            counters.update(core.stats)
            yield from _peer_gauges(core)
        yield GaugeMetricFamily(
            "shardkv_store_loop_queued_events",
            "Events waiting for the store loop (Raft messages, ticks, orders)",
            value=source.queued_events(),
        )
        yield from _disk_gauges(source.disk)
        yield from _blob_metrics(source.blob_usage())
        yield from _counters(counters)


def _disk_gauges(disk: DiskMonitor) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "shardkv_store_disk_full",
        "1 while the free disk space is below the reserve (min_free_disk) and client "
        "writes are refused, else 0",
        value=int(disk.full),
    )
    if disk.space is not None:
        yield GaugeMetricFamily(
            "shardkv_store_disk_free_bytes",
            "Free bytes on the data (or Raft) directory's disk, the tighter one, as last measured",
            value=disk.space.free,
        )


def _blob_metrics(blobs: BlobStats) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "shardkv_store_blob_files",
        "Blob files (values longer than large_value_threshold, stored apart from kv/)",
        value=blobs.files,
    )
    yield GaugeMetricFamily(
        "shardkv_store_blob_bytes", "Bytes of the blob files on disk", value=blobs.bytes
    )
    yield GaugeMetricFamily(
        "shardkv_store_blob_live_bytes",
        "Bytes of the sealed blob files that kv/ still points at, as of the last collection "
        "pass (blob_gc_interval)",
        value=blobs.live_bytes,
    )
    yield CounterMetricFamily(
        "shardkv_store_blob_files_collected",
        "Blob files deleted since the store started (no value left in them)",
        value=blobs.collected_files,
    )
    yield CounterMetricFamily(
        "shardkv_store_blob_bytes_rewritten",
        "Value bytes moved out of mostly dead blob files since the store started",
        value=blobs.rewritten_bytes,
    )


def _peer_gauges(core: StoreCore) -> Iterator[Metric]:
    regions = leaders = asleep = 0
    entries: list[int] = []
    sizes: list[int] = []
    for peer in core.peers.values():
        if not peer.initialized:
            continue
        regions += 1
        leaders += peer.is_leader()
        asleep += peer.asleep
        entries.append(peer.storage.log_entries())
        sizes.append(peer.storage.log_bytes)
    yield GaugeMetricFamily(
        "shardkv_store_regions", "Regions with an initialized peer on this store", value=regions
    )
    yield GaugeMetricFamily(
        "shardkv_store_leaders", "Regions whose peer on this store leads", value=leaders
    )
    yield GaugeMetricFamily(
        "shardkv_store_regions_asleep",
        "Regions whose peer on this store hibernates (store_node.hibernate)",
        value=asleep,
    )
    yield GaugeMetricFamily(
        "shardkv_store_raft_log_entries",
        "Raft log entries kept (not yet truncated), all regions",
        value=sum(entries),
    )
    yield GaugeMetricFamily(
        "shardkv_store_raft_log_bytes",
        "Bytes of the Raft log entries kept, as stored, all regions",
        value=sum(sizes),
    )
    yield GaugeMetricFamily(
        "shardkv_store_region_raft_log_entries_max",
        "Raft log entries kept by the region with the longest log",
        value=max(entries, default=0),
    )
    yield GaugeMetricFamily(
        "shardkv_store_region_raft_log_bytes_max",
        "Bytes of Raft log kept by the region with the largest log",
        value=max(sizes, default=0),
    )
    yield _regions_by(
        "shardkv_store_region_raft_log_entries",
        "Regions by the entries of Raft log they keep",
        entries,
        LOG_ENTRIES_BUCKETS,
    )
    yield _regions_by(
        "shardkv_store_region_raft_log_bytes",
        "Regions by the bytes of Raft log they keep",
        sizes,
        LOG_BYTES_BUCKETS,
    )


def _regions_by(name: str, doc: str, values: list[int], bounds: Sequence[int]) -> Metric:
    """A gauge histogram of `values` (one a region) over `bounds`."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    buckets = []
    total = 0
    for bound, n in zip([*map(floatToGoString, bounds), "+Inf"], counts, strict=True):
        total += n
        buckets.append((bound, total))
    return GaugeHistogramMetricFamily(name, doc, buckets=buckets, gsum_value=sum(values))


def _counters(counters: Mapping[str, int]) -> Iterator[Metric]:
    proposals = CounterMetricFamily(
        "shardkv_store_proposals",
        "Requests proposed to Raft by leaders on this store, by type: client writes "
        "(batched into log entries), conf changes, splits",
        labels=["type"],
    )
    for name, kind in PROPOSAL_TYPES.items():
        proposals.add_metric([kind], counters.get(name, 0))
    yield proposals
    truncations = CounterMetricFamily(
        "shardkv_store_log_truncations",
        "Raft log prefixes truncated (compactions), by the trigger that fired "
        "(store_node.log_gc): the log's bytes, its entries, the interval",
        labels=["trigger"],
    )
    for name, trigger in TRUNCATION_TRIGGERS.items():
        truncations.add_metric([trigger], counters.get(name, 0))
    yield truncations
    for name in sorted(COUNTER_HELP.keys() | counters.keys()):
        if name in PROPOSAL_TYPES or name in TRUNCATION_TRIGGERS:
            continue
        help_text = COUNTER_HELP.get(name, f"Store counter {name}")
        yield CounterMetricFamily(f"shardkv_store_{name}", help_text, value=counters.get(name, 0))

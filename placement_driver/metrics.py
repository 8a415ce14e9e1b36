"""The PD's Prometheus metrics, served as `GET /metrics` on its HTTP port.

One `CollectorRegistry` per `PdServer` (not prometheus_client's global
one): tests run several PDs in one process, and each must export its own.

Two kinds of metric, by cost:

* What describes the cluster's state (stores by state, regions, regions and
  leaders per store, running operators) and the operator counts kept by the
  `OperatorController` are read at scrape time by `ClusterCollector`: the
  PD core stays free of metrics code and pays nothing per heartbeat.
* Region heartbeats (count, handling latency) are observed by the shell
  (`PdServer._handle`) with prometheus_client's Counter and Histogram: at
  most a few thousand a second, where their per-call lock is negligible.

Names follow Prometheus conventions: `shardkv_pd_` prefix, `_total` for
counters, base units (seconds).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvproto import pdpb
from kvproto.metapb import StoreId, StoreState
from placement_driver.cluster import Cluster
from placement_driver.http_api import STATE_NAMES
from placement_driver.operator_controller import OperatorController
from placement_driver.operators import OperatorKind
from plumbing.metrics import LATENCY_BUCKETS

__all__ = ["CONTENT_TYPE_LATEST", "ClusterCollector", "PdMetrics"]

log = logging.getLogger(__name__)


class PdMetrics:
    """The registry of one PD and the metrics its shell observes.

    `cluster` returns the running PD's `Cluster` (None before `run` made it
    or after it stopped: the cluster metrics are then left out);
    `controller` is the operator controller, if the PD schedules."""

    def __init__(
        self,
        cluster: Callable[[], Cluster | None],
        controller: OperatorController | None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.region_heartbeats = Counter(
            "shardkv_pd_region_heartbeats",
            "Region heartbeats received, by result (ok, or the PD error code of a refusal)",
            ["result"],
            registry=self.registry,
        )
        self.region_heartbeat_seconds = Histogram(
            "shardkv_pd_region_heartbeat_seconds",
            "Time to handle a region heartbeat (region tree update and operator step)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ClusterCollector(cluster, controller))

    def observe_region_heartbeat(
        self, seconds: float, response: pdpb.RegionHeartbeatResponse
    ) -> None:
        error = response.header.error
        self.region_heartbeats.labels("ok" if error is None else error.code.name.lower()).inc()
        self.region_heartbeat_seconds.observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (`CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)


class ClusterCollector(Collector):
    """Reads the PD core when scraped (on the trio thread, like every other
    reader of `Cluster`: no lock is needed)."""

    def __init__(
        self,
        cluster: Callable[[], Cluster | None],
        controller: OperatorController | None,
    ) -> None:
        self._cluster = cluster
        self._controller = controller

    def collect(self) -> Iterator[Metric]:
        cluster = self._cluster()
        if cluster is not None:
            yield from _cluster_metrics(cluster)
        if self._controller is not None:
            yield from _operator_metrics(self._controller)

    def describe(self) -> Iterator[Metric]:
        # Nothing to check for name clashes at registration: the names here
        # are fixed and the registry is ours alone.
        return iter(())


def _cluster_metrics(cluster: Cluster) -> Iterator[Metric]:
    stores = cluster.stores()
    by_state = Tally(info.state for info in stores)
    states = GaugeMetricFamily(
        "shardkv_pd_stores", "Stores known to the PD, by state", labels=["state"]
    )
    for state in StoreState:
        states.add_metric([STATE_NAMES[state]], by_state[state])
    yield states
    yield GaugeMetricFamily(
        "shardkv_pd_regions", "Regions in the PD's region tree", value=cluster.region_count
    )
    # One pass over the tree counts the leaders (what the last heartbeat of
    # each region named); the peers per store are kept by the tree already.
    leaders: Tally[StoreId] = Tally()
    for record in cluster.regions():
        leader = record.leader
        if leader is not None:
            leaders[leader.store_id] += 1
    regions = GaugeMetricFamily(
        "shardkv_pd_store_regions",
        "Regions with a peer (any role) on the store, in the PD's region tree",
        labels=["store"],
    )
    led = GaugeMetricFamily(
        "shardkv_pd_store_leaders",
        "Regions whose leader (as last reported) is on the store",
        labels=["store"],
    )
    for info in stores:
        if info.is_tombstone:
            continue
        label = [str(info.id)]
        regions.add_metric(label, cluster.store_region_count(info.id))
        led.add_metric(label, leaders[info.id])
    yield regions
    yield led


def _operator_metrics(controller: OperatorController) -> Iterator[Metric]:
    running = GaugeMetricFamily(
        "shardkv_pd_operators_running", "Operators running, by kind", labels=["kind"]
    )
    by_kind = Tally(op.kind for op in controller.running())
    for operator_kind in OperatorKind:
        running.add_metric([operator_kind.value], by_kind[operator_kind])
    yield running
    created = CounterMetricFamily(
        "shardkv_pd_operators_created",
        "Operators started, by kind (who made it) and type (what it is for)",
        labels=["kind", "type"],
    )
    for (kind, desc), n in sorted(controller.created_counts.items()):
        created.add_metric([kind, desc], n)
    yield created
    finished = CounterMetricFamily(
        "shardkv_pd_operators_finished",
        "Operators finished, by kind, type and result (success, timeout, canceled)",
        labels=["kind", "type", "result"],
    )
    for (kind, desc, result), n in sorted(controller.finished_counts.items()):
        finished.add_metric([kind, desc, result], n)
    yield finished
    scheduled = CounterMetricFamily(
        "shardkv_pd_scheduler_operators",
        "Operators started by each scheduler (OperatorController.add(..., scheduler=name))",
        labels=["scheduler"],
    )
    for name, n in sorted(controller.scheduler_counts.items()):
        scheduled.add_metric([name], n)
    yield scheduled

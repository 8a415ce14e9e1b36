"""What the PD's and the stores' Prometheus metrics share (the metrics
themselves live with each process: placement_driver.metrics,
store_node.metrics)."""

from __future__ import annotations

from typing import Final

__all__ = ["LATENCY_BUCKETS"]

# Histogram bounds in seconds for every latency: from an fsync on a fast SSD
# or an in-memory handler (tens of microseconds) to a write stuck behind a
# busy disk (seconds).
LATENCY_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

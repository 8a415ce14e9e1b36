"""What a chaos run is made of: the fault kinds, each fault injected, and
the run's tallies (light: imported when the command line is built)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

__all__ = ["FAULTS", "OWN_CLUSTER_FAULTS", "PROCESS_FAULTS", "Fault", "Run"]

FAULTS: Final = ("kill", "pause", "pd-kill", "partition", "transfer", "split", "move", "disk")
# Signals to store processes: a cluster started elsewhere only with --allow-kill.
PROCESS_FAULTS: Final = frozenset({"kill", "pause"})
# Need the processes and the network this tool made.
OWN_CLUSTER_FAULTS: Final = frozenset({"pd-kill", "partition", "disk"})


@dataclass(slots=True)
class Fault:
    at: float  # seconds since the clients started
    kind: str
    target: str
    outcome: str = "applied"
    healed_at: float | None = None


@dataclass(slots=True)
class Run:
    faults: list[Fault]
    outcomes: Counter[str]
    recovery_seconds: float | None = None
    replicas: str = ""  # the replica comparison's summary
    # What the nemesis itself saw go wrong (a store carrying on after a
    # failed sync): the run fails on any.
    violations: list[str] = field(default_factory=list)

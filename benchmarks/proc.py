"""CPU time and memory of processes, from /proc (Linux): what the scaling
benchmarks charge to the cluster.

Not a benchmark itself. `cpu_seconds(pid)` is utime + stime of every thread
of the process (children it waited for are not counted: a store and the PD
start none); `rss_bytes(pid)` its resident set. `CpuMeter` takes a snapshot
of named processes and tells how much CPU each used since.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available() -> bool:
    """Whether this machine has a /proc to read processes' CPU from."""
    return Path(f"/proc/{os.getpid()}/stat").exists()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used by the process so far (all threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """The process's resident set size (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(slots=True)
class CpuMeter:
    """CPU seconds of named processes since `start()` (or since created)."""

    pids: Mapping[str, int]
    _cpu0: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._t0 = time.perf_counter()

    def used(self) -> dict[str, float]:
        """CPU seconds per process since the start."""
        return {name: cpu_seconds(pid) - self._cpu0[name] for name, pid in self.pids.items()}

    def elapsed(self) -> float:
        """Wall seconds since the start."""
        return time.perf_counter() - self._t0

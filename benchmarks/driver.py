"""The shared driver of peers.py and ycsb.py: N trio tasks calling one async
operation for S seconds (or until a number of operations), latencies by
operation type, percentiles, medians of runs, tables, JSON and plots.

Not a benchmark itself. The operation is ``async def op(i) -> str | None``:
`i` numbers the calls of one measurement (0, 1, 2, ... across all tasks) and
the result names the operation type its latency is filed under (None: the
measurement's default type). An exception fails the measurement: nothing is
counted as an error and carried on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

Op = Callable[[int], Awaitable[str | None]]


def progress(message: str) -> None:
    """A progress line on stderr (stdout keeps the tables)."""
    print(f"  {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir(keep: str | None, name: str) -> Iterator[Path]:
    """A fresh directory for one system's data and logs: `keep`/`name`
    (emptied first, kept afterwards) or a temporary one (removed)."""
    if keep is not None:
        path = Path(keep) / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as d:
        yield Path(d)


def add_output_flags(parser: Any, plot_help: str = "save a chart (matplotlib)") -> None:
    """--json, --plot and --dir, as the cluster benchmarks take them (with
    `workdir` for --dir)."""
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    parser.add_argument("--plot", default=None, metavar="PATH.png", help=plot_help)
    parser.add_argument(
        "--dir", default=None, help="keep data and logs under DIR (default: temporary, removed)"
    )


def run_main(main: Callable[[Any], Awaitable[None]], args: Any) -> None:
    """trio.run(main, args); Ctrl-C ends it with a line instead of a
    traceback, once every process it started has been stopped."""
    try:
        trio.run(main, args)
    except* KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        raise SystemExit(130) from None


def load_average() -> float:
    """The machine's 1-minute load average (NaN where unknown)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def machine_line(load_at_start: float) -> str:
    """What the figures shared the machine with."""
    return (
        f"machine: {os.cpu_count()} CPUs shared by every process (servers, this driver, "
        f"anything else running); 1-min load average {load_at_start:.1f} at the start, "
        f"{load_average():.1f} at the end"
    )


def percentile(sorted_xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of an ascending sequence."""
    if not sorted_xs:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_xs)))
    return sorted_xs[min(rank, len(sorted_xs)) - 1]


@dataclass(slots=True)
class Sample:
    """One measurement: the latencies (seconds) of each operation type, the
    wall time from the first call to the end of the last, and this process's
    CPU time over it (the driver's own cost: client library, encoding).
    `server_cpu`: the CPU seconds each server process used over it, where
    the benchmark measured them (benchmarks/proc.py)."""

    seconds: float
    cpu_seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    server_cpu: dict[str, float] = field(default_factory=dict)

    def kinds(self) -> list[str]:
        return sorted(self.latencies)

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return sum(len(xs) for xs in self.latencies.values())
        return len(self.latencies.get(kind, ()))

    def throughput(self, kind: str | None = None) -> float:
        """Operations (of `kind`, or all) per second."""
        return self.count(kind) / self.seconds if self.seconds > 0 else math.nan

    def latency_ms(self, p: float, kind: str | None = None) -> float:
        if kind is None:
            xs = sorted(x for ys in self.latencies.values() for x in ys)
        else:
            xs = sorted(self.latencies.get(kind, ()))
        return percentile(xs, p) * 1000

    def cpu_us_per_op(self) -> float:
        n = self.count()
        return self.cpu_seconds / n * 1e6 if n else math.nan

    def server_cpu_seconds(self) -> float:
        """The servers' CPU seconds, summed (NaN if not measured)."""
        return sum(self.server_cpu.values()) if self.server_cpu else math.nan

    def ops_per_server_cpu_second(self) -> float:
        """Operations per CPU-second of all server processes (NaN if not
        measured): what the work costs the cluster, whatever the cores."""
        cpu = self.server_cpu_seconds()
        return self.count() / cpu if cpu > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: per type and for all operations."""
        out: dict[str, Any] = {
            "seconds": round(self.seconds, 4),
            "ops": self.count(),
            "ops_per_s": round(self.throughput(), 1),
            "driver_cpu_us_per_op": round(self.cpu_us_per_op(), 1),
            "by_type": {},
        }
        if self.server_cpu:
            out["server_cpu_s"] = {k: round(v, 3) for k, v in self.server_cpu.items()}
            out["ops_per_server_cpu_s"] = round(self.ops_per_server_cpu_second(), 1)
        for kind in self.kinds():
            out["by_type"][kind] = {
                "ops": self.count(kind),
                "ops_per_s": round(self.throughput(kind), 1),
                **{f"p{p}_ms": round(self.latency_ms(p, kind), 3) for p in (50, 95, 99)},
            }
        return out


async def run_for(
    op: Op,
    tasks: int,
    seconds: float | None,
    *,
    max_ops: int | None = None,
    warmup: float = 0.0,
    kind: str = "op",
) -> Sample:
    """Run `tasks` concurrent loops of `op` until `seconds` pass or `max_ops`
    calls were started (whichever first; at least one must be given).
    `warmup` seconds of the same loops run first, unrecorded (connections
    get opened, caches filled)."""
    if seconds is None and max_ops is None:
        raise ValueError("give seconds or max_ops")
    if warmup > 0 and max_ops is None:
        await _run(op, tasks, warmup, None, kind, record=False)
    return await _run(op, tasks, seconds, max_ops, kind, record=True)


async def _run(
    op: Op, tasks: int, seconds: float | None, max_ops: int | None, kind: str, *, record: bool
) -> Sample:
    latencies: dict[str, list[float]] = {}
    next_i = 0
    clock = time.perf_counter
    deadline = math.inf if seconds is None else clock() + seconds

    async def loop() -> None:
        nonlocal next_i
        while clock() < deadline and (max_ops is None or next_i < max_ops):
            i = next_i
            next_i += 1
            started = clock()
            got = await op(i)
            if record:
                latencies.setdefault(got or kind, []).append(clock() - started)

    cpu0, t0 = time.process_time(), clock()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(loop)
    return Sample(clock() - t0, time.process_time() - cpu0, latencies)


# -- results of several runs -------------------------------------------------


@dataclass(slots=True)
class Results:
    """Samples labelled by what was measured (system, op, tasks, run...)."""

    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[dict[str, Any], Sample]] = field(default_factory=list)

    def add(self, sample: Sample, **labels: Any) -> None:
        self.rows.append((labels, sample))

    def samples(self, **labels: Any) -> list[Sample]:
        return [s for lab, s in self.rows if all(lab.get(k) == v for k, v in labels.items())]

    def values(self, **labels: Any) -> list[Any]:
        """The distinct values of one label, in the order first added:
        ``values(system=None)`` lists the systems."""
        (name,) = labels
        seen: dict[Any, None] = {}
        for lab, _ in self.rows:
            if name in lab:
                seen.setdefault(lab[name])
        return list(seen)

    def write_json(self, path: str | Path) -> None:
        doc = {
            "meta": self.meta,
            "results": [{**lab, **s.summary()} for lab, s in self.rows],
        }
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def median(xs: Iterable[float]) -> float:
    ys = [x for x in xs if not math.isnan(x)]
    return statistics.median(ys) if ys else math.nan


def fmt_rate(samples: Sequence[Sample], kind: str | None = None) -> str:
    """Median ops/s over runs, with (min-max) when there are several."""
    xs = [s.throughput(kind) for s in samples]
    if not xs:
        return "-"
    text = f"{median(xs):,.0f}"
    return f"{text} ({min(xs):,.0f}-{max(xs):,.0f})" if len(xs) > 1 else text


def fmt_ms(samples: Sequence[Sample], p: float, kind: str | None = None) -> str:
    """Median over runs of each run's p-th percentile latency, in ms."""
    m = median(s.latency_ms(p, kind) for s in samples)
    return "-" if math.isnan(m) else f"{m:.2f}"


def ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain text table on stdout: text columns left, numbers right."""
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(headers)]
    numeric = [all(_numeric(r[c]) for r in rows) for c in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return " | ".join(out).rstrip()

    print()
    print(title)
    print(line(headers))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def _numeric(cell: str) -> bool:
    return cell == "-" or cell[:1].isdigit()


# -- plots (matplotlib, imported only when a plot is asked for) ---------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: python3 -m pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(
    path: str | Path,
    title: str,
    lines: dict[str, list[tuple[float, float]]],
    *,
    xlabel: str,
    ylabel: str,
    logx: bool = True,
    logy: bool = False,
) -> None:
    """One line per label (x, y points), one colour per label's first word;
    labels ending in "get" are dashed. The x ticks are the xs given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colors: dict[str, str] = {}
    ticks: set[float] = set()
    for label, points in lines.items():
        xs, ys = zip(*sorted(points), strict=True) if points else ((), ())
        ticks.update(xs)
        system = label.split()[0]
        color = colors.setdefault(system, f"C{len(colors)}")
        style = "--" if label.endswith("get") else "-"
        ax.plot(xs, ys, style, marker="o", color=color, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
    ax.set_xticks([], minor=True)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_panels(
    path: str | Path,
    title: str,
    panels: Sequence[tuple[str, dict[str, list[tuple[float, float]]]]],
    *,
    xlabel: str,
    series: bool = False,
    logx: bool = False,
) -> None:
    """One panel per (y label, {label: (x, y) points}), side by side, y from
    0, x linear (or log 10); the x ticks are the xs given (`series`: a time
    series, matplotlib's ticks and no markers). NaN points are left out."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0, :], panels, strict=True):
        ticks: set[float] = set()
        for k, (label, points) in enumerate(lines.items()):
            kept = sorted((x, y) for x, y in points if not math.isnan(y))
            if not kept:
                continue
            xs, ys = zip(*kept, strict=True)
            ticks.update(xs)
            marker = None if series else "o"
            ax.plot(xs, ys, marker=marker, color=f"C{k}", label=label)
        if logx:
            ax.set_xscale("log")
        if not series:
            ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
            ax.set_xticks([], minor=True)
        ax.set_ylim(bottom=0)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(
    path: str | Path,
    title: str,
    categories: Sequence[str],
    panels: Sequence[tuple[str, dict[str, list[float]]]],
) -> None:
    """One panel per (y label, {series: one value per category}), grouped bars."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.5 * len(panels)), squeeze=False)
    for ax, (ylabel, series) in zip(axes[:, 0], panels, strict=True):
        width = 0.8 / max(1, len(series))
        for k, (label, ys) in enumerate(series.items()):
            xs = [c + (k - (len(series) - 1) / 2) * width for c in range(len(categories))]
            ax.bar(xs, [0 if math.isnan(y) else y for y in ys], width, label=label)
        ax.set_xticks(range(len(categories)), categories)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

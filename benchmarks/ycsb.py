"""YCSB's core workloads against shardkv through the smart client (or etcd).

    load  insert --records records; measured: inserts/s until all are in
    a     50% read, 50% update                 (YCSB workload A)
    b     95% read, 5% update                  (B)
    c     100% read                            (C)
    e     95% scan of 1..--scan-max records (uniform length), 5% insert (E)

A record is one value of --value-size bytes (YCSB writes 10 fields of 100 B;
an update here rewrites the whole value). Keys are YCSB's: "user" + the
FNV-64 hash of the record number, so inserts land all over the key space.
Reads, updates and scan starts pick a record by --distribution: uniform, or
YCSB's scrambled zipfian (constant 0.99, hot records spread by the hash),
over the loaded records; E's inserts add records that the chooser does not
pick (YCSB widens its range as inserts land), and reads always find their
key (a miss fails the run). Scans read from a key on, in key order, as many
records as their length (shardkv: `scan(start, limit=n)`; etcd: a range to
the end with a limit).

Each run starts a fresh cluster of 3 replicas (shardkv: a PD and 3 stores,
durable, `client.connect`; --system etcd: 3 members as in peers.py), loads
it, then runs the workloads in order for --seconds each with --tasks
concurrent trio tasks (benchmarks/driver.py). The table shows medians over
runs (min-max) of ops/s and of each run's p50/p95/p99 latency, per
operation type and for all operations of a workload.

    python3 benchmarks/ycsb.py [--workloads load,a,b,c,e] [--distribution zipfian]
        [--records 10000] [--value-size 1000] [--tasks 16] [--seconds 3] [--runs 3]
        [--system shardkv|etcd] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.driver import (
    Op,
    Results,
    fmt_ms,
    fmt_rate,
    load_average,
    machine_line,
    median,
    plot_bars,
    print_table,
    progress,
    run_for,
    run_main,
    workdir,
)
from benchmarks.systems import Kv, open_system, unavailable

WORKLOADS: dict[str, tuple[tuple[str, float], ...]] = {
    "a": (("read", 0.5), ("update", 0.5)),
    "b": (("read", 0.95), ("update", 0.05)),
    "c": (("read", 1.0),),
    "e": (("scan", 0.95), ("insert", 0.05)),
}
KINDS = ("insert", "read", "update", "scan")

FNV_OFFSET_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 1099511628211
MASK_64 = (1 << 64) - 1


def fnv64(n: int) -> int:
    """YCSB's Utils.fnvhash64: FNV-1 over the 8 low-order bytes, Java's
    signed 64-bit arithmetic, then abs()."""
    h = FNV_OFFSET_64
    for _ in range(8):
        h = ((h ^ (n & 0xFF)) * FNV_PRIME_64) & MASK_64
        n >>= 8
    return abs(h - (1 << 64) if h >> 63 else h)


def key_of(n: int) -> bytes:
    """YCSB's key for record n (insertorder=hashed, the default)."""
    return b"user%d" % fnv64(n)


class ScrambledZipfian:
    """YCSB's ScrambledZipfianGenerator for its default constant 0.99: a
    zipfian over 10^10 items (zeta precomputed by YCSB), hashed into
    `items` so that the popular records are spread over the key space."""

    THETA = 0.99
    ITEM_COUNT = 10_000_000_000
    ZETAN = 26.46902820178302  # zeta(10^10, 0.99), YCSB's constant

    def __init__(self, items: int, rng: random.Random) -> None:
        self.items = items
        self.rng = rng
        self.alpha = 1.0 / (1.0 - self.THETA)
        zeta2 = 1.0 + 0.5**self.THETA
        self.half_pow = 1.0 + 0.5**self.THETA
        self.eta = (1.0 - (2.0 / self.ITEM_COUNT) ** (1.0 - self.THETA)) / (
            1.0 - zeta2 / self.ZETAN
        )

    def zipfian(self) -> int:
        """ZipfianGenerator.nextLong: 0 the most popular, 1 the next..."""
        u = self.rng.random()
        uz = u * self.ZETAN
        if uz < 1.0:
            return 0
        if uz < self.half_pow:
            return 1
        return int(self.ITEM_COUNT * (self.eta * u - self.eta + 1.0) ** self.alpha)

    def __call__(self) -> int:
        return fnv64(self.zipfian()) % self.items


def chooser(distribution: str, items: int, rng: random.Random) -> Callable[[], int]:
    if distribution == "zipfian":
        return ScrambledZipfian(items, rng)
    return lambda: rng.randrange(items)


class Workloads:
    """The ops of one run over one system (shared insert counter, values)."""

    def __init__(self, kv: Kv, args: argparse.Namespace, run: int) -> None:
        self.kv = kv
        self.args = args
        self.rng = random.Random(run)
        self.values = [self.rng.randbytes(args.value_size) for _ in range(16)]
        self.pick = chooser(args.distribution, args.records, self.rng)
        self.next_insert = itertools.count(args.records)

    def load_op(self) -> Op:
        async def insert(i: int) -> str:
            await self.kv.put(key_of(i), self.values[i % 16])
            return "insert"

        return insert

    def mix_op(self, name: str) -> Op:
        kinds = [k for k, _ in WORKLOADS[name]]
        cumulative = list(itertools.accumulate(p for _, p in WORKLOADS[name]))
        kv, rng, pick = self.kv, self.rng, self.pick

        async def op(i: int) -> str:
            kind = kinds[min(bisect.bisect(cumulative, rng.random()), len(kinds) - 1)]
            if kind == "read":
                if await kv.get(key_of(pick())) is None:
                    raise RuntimeError(f"{kv.name}: read found no value for a loaded record")
            elif kind == "update":
                await kv.put(key_of(pick()), self.values[i % 16])
            elif kind == "scan":
                await kv.scan(key_of(pick()), rng.randint(1, self.args.scan_max))
            else:
                await kv.put(key_of(next(self.next_insert)), self.values[i % 16])
            return kind

        return op


async def one_run(run: int, args: argparse.Namespace, results: Results) -> str:
    with workdir(args.dir, f"ycsb-{args.system}-run{run + 1}") as d:
        progress(f"run {run + 1}/{args.runs}: starting {args.system}")
        async with open_system(args.system, d, replicas=3, pool=args.tasks) as kv:
            w = Workloads(kv, args, run)
            progress(f"load: inserting {args.records:,} records of {args.value_size} B")
            sample = await run_for(w.load_op(), args.tasks, None, max_ops=args.records)
            if "load" in args.workload_list:
                results.add(sample, workload="load", run=run + 1)
            progress(f"load: {sample.throughput():,.0f} inserts/s")
            for name in args.workload_list:
                if name == "load":
                    continue
                sample = await run_for(w.mix_op(name), args.tasks, args.seconds, warmup=args.warmup)
                results.add(sample, workload=name, run=run + 1)
                by_kind = ", ".join(
                    f"{k} {sample.throughput(k):,.0f}/s p99 {sample.latency_ms(99, k):.1f} ms"
                    for k in sample.kinds()
                )
                progress(f"{name}: {sample.throughput():,.0f} ops/s ({by_kind})")
            return kv.note


def report(results: Results, args: argparse.Namespace) -> None:
    runs = f"median of {args.runs} run(s) x {args.seconds:g} s (min-max)"
    rate = "ops/s (min-max)" if args.runs > 1 else "ops/s"
    rows = []
    for name in results.values(workload=None):
        ss = results.samples(workload=name)
        kinds = sorted({k for s in ss for k in s.kinds()}, key=KINDS.index)
        for kind in ([None] if len(kinds) > 1 else []) + kinds:
            row = [name, kind or "all", fmt_rate(ss, kind)]
            rows.append(row + [fmt_ms(ss, p, kind) for p in (50, 95, 99)])
    print_table(
        f"ycsb: {args.system}, 3 replicas, {args.records:,} records x {args.value_size:,} B, "
        f"{args.distribution}, {args.tasks} tasks; load timed to the last insert, the "
        f"others {runs}",
        ["workload", "op", rate, "p50 ms", "p95 ms", "p99 ms"],
        rows,
    )


def plot(results: Results, args: argparse.Namespace) -> None:
    names = results.values(workload=None)

    def series(figure: Callable[[str, str], float]) -> dict[str, list[float]]:
        return {k: [figure(n, k) for n in names] for k in KINDS}

    def tput(n: str, k: str) -> float:
        return median(s.throughput(k) for s in results.samples(workload=n))

    def p99(n: str, k: str) -> float:
        return median(s.latency_ms(99, k) for s in results.samples(workload=n))

    plot_bars(
        args.plot,
        f"YCSB on {args.system} ({args.distribution}, {args.tasks} tasks, "
        f"{args.value_size} B values): medians of {args.runs}",
        names,
        [("ops/s", series(tput)), ("p99 latency (ms)", series(p99))],
    )
    print(f"\nplot: {args.plot}")


async def main(args: argparse.Namespace) -> None:
    why = unavailable(args.system)
    if why is not None:
        raise SystemExit(f"ycsb: cannot run {args.system}: {why}")
    results = Results(meta={**vars(args), "load_at_start": load_average()})
    note = ""
    for run in range(args.runs):
        note = await one_run(run, args, results)
    results.meta["note"] = note
    report(results, args)
    print(f"\n{args.system}: {note}")
    print(machine_line(results.meta["load_at_start"]))
    if args.json:
        results.write_json(args.json)
        print(f"json: {args.json}")
    if args.plot:
        plot(results, args)


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--system",
        choices=("shardkv", "etcd"),
        default="shardkv",
        help="shardkv (smart client) or etcd (as in peers.py); default %(default)s",
    )
    parser.add_argument(
        "--workloads",
        default="load,a,b,c,e",
        help="comma-separated, run in this order (the load always runs; 'load' reports it)",
    )
    parser.add_argument("--records", type=int, default=10_000, help="records loaded")
    parser.add_argument("--value-size", type=int, default=1000, help="bytes per record")
    parser.add_argument(
        "--distribution",
        choices=("uniform", "zipfian"),
        default="zipfian",
        help="record choice: YCSB's scrambled zipfian (0.99, its default) or uniform",
    )
    parser.add_argument("--scan-max", type=int, default=100, help="longest scan (E)")
    parser.add_argument("--tasks", type=int, default=16, help="concurrent tasks")
    parser.add_argument("--seconds", type=float, default=3.0, help="per workload")
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh cluster")
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="unrecorded seconds before each workload"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    parser.add_argument(
        "--plot", default=None, metavar="PATH.png", help="save a chart (matplotlib)"
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="keep the data and logs under DIR (default: temporary, removed)",
    )
    args = parser.parse_args()
    args.workload_list = [w.strip().lower() for w in args.workloads.split(",")]
    for w in args.workload_list:
        if w != "load" and w not in WORKLOADS:
            parser.error(f"unknown workload {w!r} (known: load, {', '.join(WORKLOADS)})")
    run_main(main, args)


if __name__ == "__main__":
    cli()

"""shardkv beside etcd and PySyncObj: puts and gets of 100-byte values, three
replicas each, one driver, in one go (issue 13: "reads faster than etcd's").

Every system runs as separate processes on 127.0.0.1 in a temporary
directory: shardkv as a PD and 3 stores (--max-replicas 3, durable) behind
the public smart client; etcd (Debian's etcd-server) as 3 members, fsync on,
through its HTTP/JSON gateway with linearizable reads, requests to the
leader, over a minimal HTTP/1.1 client (httpx, --etcd-http httpx, costs the
driver ~10x the CPU per request: see benchmarks/etcd_kv.py); PySyncObj as 3
processes with a ReplDict each, behind a tiny TCP server per node (see
benchmarks/pysyncobj_kv.py for what that measures: its journal is never
fsynced and its gets are local, not linearizable).

The same trio driver (benchmarks/driver.py) drives each: N concurrent tasks
loop puts (then gets) for --seconds per task count, on 16-byte keys drawn
from --keys keys preloaded first, so every get finds its key. Each run
starts every system afresh in turn (shardkv run 1, etcd run 1, pysyncobj
run 1, then run 2, the first system rotating) so that noise on the shared
machine hits them alike; the driver shares the machine's cores with the
servers. The table shows medians over runs (min-max) of ops/s and of each
run's p50/p99 latency, then shardkv's throughput over each peer's.

    python3 -m pip install -e '.[server,bench]'   # httpx, pysyncobj, matplotlib
    apt-get install -y etcd-server etcd-client    # etcd (skipped if missing)
    python3 benchmarks/peers.py [--systems shardkv,etcd,pysyncobj] [--tasks 1,16,64,256]
        [--seconds 3] [--runs 3] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.driver import (
    Op,
    Results,
    Sample,
    fmt_ms,
    fmt_rate,
    load_average,
    machine_line,
    median,
    plot_lines,
    print_table,
    progress,
    ratio,
    run_for,
    run_main,
    workdir,
)
from benchmarks.systems import SYSTEMS, Kv, open_system, unavailable

KEY_SIZE = 16
OPS = ("put", "get")


def make_keys(n: int) -> list[bytes]:
    keys = [b"k%015d" % i for i in range(n)]
    assert all(len(k) == KEY_SIZE for k in keys)
    return keys


def make_op(kv: Kv, op: str, keys: Sequence[bytes], value: bytes) -> Op:
    """The measured call: call i uses key (i * a prime) mod len(keys), so
    concurrent tasks spread over the key set."""
    n = len(keys)
    if op == "put":

        async def put(i: int) -> None:
            await kv.put(keys[(i * 7919) % n], value)

        return put

    async def get(i: int) -> None:
        if await kv.get(keys[(i * 7919) % n]) is None:
            raise RuntimeError(f"{kv.name}: get found no value for a preloaded key")

    return get


async def measure_system(
    name: str, run: int, args: argparse.Namespace, results: Results, notes: dict[str, str]
) -> None:
    tasks_list = args.task_counts
    keys = make_keys(args.keys)
    value = random.Random(run).randbytes(args.value_size)
    with workdir(args.dir, f"peers-{name}-run{run + 1}") as d:
        progress(f"run {run + 1}/{args.runs}: starting {name}")
        async with open_system(
            name,
            d,
            replicas=3,
            pool=max(tasks_list),
            etcd_http=args.etcd_http,
            pysyncobj_batch=args.pysyncobj_batch,
        ) as kv:
            notes[name] = kv.note
            progress(f"{name}: preloading {len(keys):,} keys")
            await kv.load([(k, value) for k in keys])
            for op in OPS:
                for tasks in tasks_list:
                    sample = await run_for(
                        make_op(kv, op, keys, value),
                        tasks,
                        args.seconds,
                        warmup=args.warmup,
                        kind=op,
                    )
                    results.add(sample, system=name, op=op, tasks=tasks, run=run + 1)
                    progress(
                        f"{name:9} {op} {tasks:3} tasks: {sample.throughput():9,.0f} ops/s  "
                        f"p50 {sample.latency_ms(50):6.2f} ms  p99 {sample.latency_ms(99):7.2f} ms"
                    )
        progress(f"{name}: stopped")


def report(results: Results, systems: list[str], args: argparse.Namespace) -> None:
    runs = f"median of {args.runs} run(s) x {args.seconds:g} s (min-max)"
    headers = ["system", "tasks"]
    for op in OPS:
        headers += [f"{op}/s {'(min-max)' if args.runs > 1 else ''}".strip(), "p50 ms", "p99 ms"]
    rows = []
    for name in systems:
        for tasks in args.task_counts:
            row = [name, str(tasks)]
            for op in OPS:
                ss = results.samples(system=name, op=op, tasks=tasks)
                row += [fmt_rate(ss), fmt_ms(ss, 50), fmt_ms(ss, 99)]
            rows.append(row)
    print_table(
        f"peers: 3 replicas each, {KEY_SIZE}-byte keys, {args.value_size}-byte values, "
        f"{args.keys:,} keys; {runs}",
        headers,
        rows,
    )
    peers = [p for p in systems if p != "shardkv"]
    if "shardkv" in systems and peers:
        headers = ["tasks"]
        for peer in peers:
            headers += [f"put shardkv/{peer}", f"get shardkv/{peer}"]
        rows = []
        for tasks in args.task_counts:
            row = [str(tasks)]
            for peer in peers:
                for op in OPS:
                    ours = _median_tput(results.samples(system="shardkv", op=op, tasks=tasks))
                    theirs = _median_tput(results.samples(system=peer, op=op, tasks=tasks))
                    row.append(ratio(ours, theirs))
            rows.append(row)
        print_table("throughput ratios (medians; > 1: shardkv faster)", headers, rows)
    headers = ["system", "op", "driver CPU us/op (median over task counts and runs)"]
    rows = [
        [name, op, f"{median(s.cpu_us_per_op() for s in results.samples(system=name, op=op)):.0f}"]
        for name in systems
        for op in OPS
    ]
    title = "this driver's own CPU per operation (client library, HTTP, encoding)"
    print_table(title, headers, rows)


def _median_tput(samples: list[Sample]) -> float:
    return median(s.throughput() for s in samples)


def plot(results: Results, systems: list[str], args: argparse.Namespace) -> None:
    lines = {
        f"{name} {op}": [
            (float(t), _median_tput(results.samples(system=name, op=op, tasks=t)))
            for t in args.task_counts
        ]
        for name in systems
        for op in OPS
    }
    plot_lines(
        args.plot,
        f"3 replicas, {args.value_size}-byte values: throughput (median of {args.runs})",
        lines,
        xlabel="concurrent tasks",
        ylabel="ops/s (log scale)",
        logy=True,
    )
    print(f"\nplot: {args.plot}")


async def main(args: argparse.Namespace) -> None:
    systems: list[str] = []
    skipped: dict[str, str] = {}
    for name in args.systems.split(","):
        why = unavailable(name, etcd_http=args.etcd_http)
        if why is None:
            systems.append(name)
        else:
            skipped[name] = why
            print(f"peers: skipping {name}: {why}", file=sys.stderr)
    if not systems:
        raise SystemExit("peers: no system to benchmark")
    results = Results(meta={**vars(args), "systems": systems, "skipped": skipped})
    results.meta["load_at_start"] = load_average()
    notes: dict[str, str] = {}
    for run in range(args.runs):
        order = systems[run % len(systems) :] + systems[: run % len(systems)]
        for name in order:
            await measure_system(name, run, args, results, notes)
    results.meta["notes"] = notes
    report(results, systems, args)
    print()
    for name in systems:
        print(f"{name}: {notes[name]}")
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}")
    print(machine_line(results.meta["load_at_start"]))
    if args.json:
        results.write_json(args.json)
        print(f"json: {args.json}")
    if args.plot:
        plot(results, systems, args)


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated, from %(default)s (a system not installed is skipped)",
    )
    parser.add_argument("--tasks", default="1,16,64,256", help="concurrent task counts")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs, each a fresh start")
    parser.add_argument("--keys", type=int, default=10_000, help="keys preloaded and used")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="unrecorded seconds before each measurement"
    )
    parser.add_argument(
        "--etcd-http",
        choices=("raw", "httpx"),
        default="raw",
        help="etcd's HTTP client: a minimal one on trio (default) or httpx (~10x the CPU)",
    )
    parser.add_argument(
        "--pysyncobj-batch",
        action="store_true",
        help="PySyncObj's appendEntriesUseBatch=True (its default: entries wait for the "
        "next 0.1 s append round); off here",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    parser.add_argument(
        "--plot", default=None, metavar="PATH.png", help="save a chart of ops/s (matplotlib)"
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="keep each system's data and logs under DIR (default: temporary, removed)",
    )
    args = parser.parse_args()
    args.task_counts = [int(x) for x in args.tasks.split(",")]
    run_main(main, args)


if __name__ == "__main__":
    cli()

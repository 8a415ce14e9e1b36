"""Horizontal scaling: 1, 3, 5 and 7 stores x 1, 16 and 256 pre-split
regions, a mixed put/get load from one driver; throughput and what it costs
the cluster in CPU (issue 14).

For each store count, each run starts a fresh cluster on loopback (a PD and
N stores, --max-replicas min(3, N), durable, the stores' default settings;
the PD with --leader-schedule-limit 64 so that balancing the leaders of
hundreds of fresh regions takes a minute rather than several: setup only),
preloads --keys keys, then for each region count in ascending order:

1. splits the key range into that many regions through the PD's split
   operators (POST /pd/api/v1/regions/split, many keys per request), the
   split points evenly spaced over the keys, the balance schedulers paused
   meanwhile (resumed after);
2. waits until the PD's API shows every region with its replicas (voters
   only) and a leader, and the stores balanced the way the PD's schedulers
   judge it: leaders and region scores within the tolerance on every store
   (benchmarks/pd_admin.py), in two readings in a row (if nothing moves
   for --stall seconds short of that, or --balance-timeout passes, it
   measures anyway and says so);
3. measures the cluster's CPU over --idle seconds without load (its ticks
   and heartbeats: the idle cost the load's figures carry);
4. runs the load: --tasks trio tasks (benchmarks/driver.py), each call a put
   (--put-percent of them) or a get of one of the keys, spread over the key
   space (so over every region), for --seconds after --warmup, through the
   smart client. Over the measurement it reads utime + stime of the PD and
   every store from /proc/<pid>/stat.

Figures: ops/s, and ops per CPU-second of all cluster processes (the
driver's own CPU is shown apart). On a machine with few cores, more stores
cannot add throughput: every store shares the same cores, and each adds
replication and coordination work, so ops/s falls as stores are added; ops
per CPU-second is the figure that shows the overhead of scaling out (and,
on real machines, what adding one buys). It carries the idle cost of every
region (ticks, heartbeats), which weighs more the fewer operations there
are to share it, so it is also shown above idle: operations per CPU-second
the load added. The last lines print the ratios of both, and the issue's
targets: ops per CPU-second at 7 stores over 3, and at 256 regions over 1,
each to fall by at most 15% (ratio >= 0.85).

--pd ADDR --pd-http URL measures a cluster started by hand (on real
machines): no process is started, the stores are those Up at the PD, the
replicas its max_replicas; each region count splits the benchmark's key
range further (splits cannot be undone: counts only grow). CPU is not
measured then (the processes are elsewhere): only ops/s.

    python3 benchmarks/scaling.py [--stores 1,3,5,7] [--regions 1,16,256] [--runs 3]
        [--tasks 64] [--seconds 5] [--json out.json] [--plot out.png]
    python3 benchmarks/scaling.py --pd 10.0.0.1:2379 --pd-http http://10.0.0.1:2380
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import trio

import client
from benchmarks import proc
from benchmarks.driver import (
    Op,
    Results,
    Sample,
    add_output_flags,
    fmt_ms,
    load_average,
    machine_line,
    median,
    plot_panels,
    print_table,
    progress,
    run_for,
    run_main,
    workdir,
)
from benchmarks.pd_admin import (
    PdAdmin,
    activity,
    open_pd_admin,
    scrape_stores,
    split_at,
    wait_balanced,
)
from benchmarks.systems import ShardKv, cluster_pids, start_shardkv
from shardkv.local_cluster import LocalCluster

TARGET_RATIO = 0.85  # "falls by at most 15%"
# The PD's leader_schedule_limit while setting up (the default is 4).
SETUP_PD_FLAGS = {"--leader-schedule-limit": "64"}


def key(i: int) -> bytes:
    return b"s%09d" % i


def split_keys(regions: int, keys: int) -> list[bytes]:
    """`regions - 1` keys cutting keys 0..keys-1 into equal ranges."""
    return [key(j * keys // regions) for j in range(1, regions)]


def mixed_op(kv: ShardKv, keys: int, value: bytes, put_percent: int) -> Op:
    """Call i puts or gets key (i * a prime) mod keys: concurrent tasks
    spread over the key space; (i * 37) mod 100 < put_percent makes a put."""

    async def op(i: int) -> str:
        k = key((i * 7919) % keys)
        if (i * 37) % 100 < put_percent:
            await kv.put(k, value)
            return "put"
        await kv.get(k)
        return "get"

    return op


async def measure(
    kv: ShardKv, args: argparse.Namespace, cluster: LocalCluster | None, value: bytes
) -> tuple[Sample, dict[str, float]]:
    """The load's sample (with the cluster's CPU) and what the stores did
    meanwhile (`pd_admin.activity`, and "idle cores": the cluster's CPU over
    --idle seconds without load just before; with a local cluster only)."""
    op = mixed_op(kv, args.keys, value, args.put_percent)
    if cluster is None:
        if args.warmup > 0:
            await run_for(op, args.tasks, args.warmup)
        return await run_for(op, args.tasks, args.seconds), {}
    pids = cluster_pids(cluster)
    idle = proc.CpuMeter(pids)
    await trio.sleep(args.idle)
    idle_cores = sum(idle.used().values()) / idle.elapsed()
    if args.warmup > 0:
        await run_for(op, args.tasks, args.warmup)
    urls = {s.child.name: s.status_url for s in cluster.store_specs}
    async with httpx.AsyncClient(timeout=30) as http:
        before = await scrape_stores(http, urls)
        meter = proc.CpuMeter(pids)
        sample = await run_for(op, args.tasks, args.seconds)
        sample.server_cpu = meter.used()
        did = activity(before, await scrape_stores(http, urls), sample.seconds)
    return sample, {**did, "idle cores": idle_cores}


def above_idle(sample: Sample, idle_cores: float) -> float:
    """Operations per CPU-second of the cluster beyond its idle cost (its
    ticks and heartbeats over the same time): the load's own cost."""
    busy = sample.server_cpu_seconds() - idle_cores * sample.seconds
    return sample.count() / busy if busy > 0 else math.nan


async def settle(
    pd: PdAdmin, regions: int, replicas: int, stores: int, args: argparse.Namespace
) -> tuple[float, str]:
    """Split to `regions` and wait for balance; (seconds taken, what was
    still unbalanced when --balance-timeout ran out, or "")."""
    started = time.perf_counter()
    with trio.fail_after(args.split_timeout):
        await split_at(pd, split_keys(regions, args.keys), progress=progress)
    with trio.move_on_after(args.balance_timeout) as waiting:
        done = await wait_balanced(pd, replicas, stores=stores, progress=progress, stall=args.stall)
        if done.stalled:
            why = f"nothing moved for {args.stall:g} s short of balance: {done.stalled}"
            progress(f"{why}; measuring anyway")
            return time.perf_counter() - started, why
        progress(f"balanced: {done.placement.summary()}")
    if waiting.cancelled_caught:
        placement = await pd.placement()
        why = placement.unbalanced(replicas, stores) or "?"
        progress(f"not balanced after {args.balance_timeout:g} s ({why}); measuring anyway")
        return time.perf_counter() - started, why
    return time.perf_counter() - started, ""


async def run_local(
    stores: int, run: int, args: argparse.Namespace, results: Results, notes: list[str]
) -> None:
    replicas = min(3, stores)
    value = random.Random(run).randbytes(args.value_size)
    with workdir(args.dir, f"scaling-{stores}stores-run{run + 1}") as d:
        progress(f"run {run + 1}/{args.runs}: starting {stores} store(s), {replicas} replica(s)")
        async with (
            start_shardkv(d, stores=stores, replicas=replicas, pd_flags=SETUP_PD_FLAGS) as cluster,
            open_pd_admin(cluster.http_url) as pd,
            client.connect([cluster.pd_address]) as c,
        ):
            kv = ShardKv(c, replicas)
            await kv.load([(key(i), value) for i in range(args.keys)])
            for regions in args.region_counts:
                setup, unbalanced = await settle(pd, regions, replicas, stores, args)
                if unbalanced:
                    notes.append(f"{stores} stores, {regions} regions, run {run + 1}: {unbalanced}")
                sample, did = await measure(kv, args, cluster, value)
                results.add(
                    sample,
                    stores=stores,
                    regions=regions,
                    run=run + 1,
                    setup_s=round(setup, 1),
                    store_activity={k: round(v, 2) for k, v in did.items()},
                )
                progress_line(stores, regions, sample)


async def run_remote(args: argparse.Namespace, results: Results, notes: list[str]) -> None:
    value = random.Random(0).randbytes(args.value_size)
    async with open_pd_admin(args.pd_http) as pd, client.connect([args.pd]) as c:
        stores = len(await pd.up_stores())
        replicas = int((await pd.config())["max_replicas"])
        notes.append(
            f"cluster at {args.pd}: {stores} Up stores, max_replicas {replicas}; "
            "CPU not measured (its processes run elsewhere)"
        )
        kv = ShardKv(c, replicas)
        progress(f"{stores} stores, {replicas} replicas: preloading {args.keys:,} keys")
        await kv.load([(key(i), value) for i in range(args.keys)])
        for run in range(args.runs):
            for regions in args.region_counts:
                setup, unbalanced = await settle(pd, regions, replicas, stores, args)
                if unbalanced:
                    notes.append(f"{regions} regions, run {run + 1}: {unbalanced}")
                spanning = await regions_over_keys(pd, args.keys)
                if spanning != regions:
                    notes.append(
                        f"{regions} regions, run {run + 1}: the keys span {spanning} regions "
                        "(splits of earlier counts or runs, or the cluster's own)"
                    )
                sample, _ = await measure(kv, args, None, value)
                results.add(
                    sample, stores=stores, regions=regions, run=run + 1, setup_s=round(setup, 1)
                )
                progress_line(stores, regions, sample)


async def regions_over_keys(pd: PdAdmin, keys: int) -> int:
    """How many regions the benchmark's keys span."""
    first, last = key(0), key(keys - 1)
    return sum(
        1
        for r in await pd.regions()
        if (not r.end_key or r.end_key > first) and r.start_key <= last
    )


def progress_line(stores: int, regions: int, s: Sample) -> None:
    cpu = s.server_cpu_seconds()
    progress(
        f"{stores} stores {regions:4} regions: {s.throughput():8,.0f} ops/s, "
        f"cluster CPU {cpu / s.seconds:4.2f} cores, "
        f"{s.ops_per_server_cpu_second():7,.0f} ops per CPU-s"
    )


def fmt_spread(xs: Sequence[float], digits: int = 0) -> str:
    """Median (min-max) of the values; "-" if none."""
    ys = [x for x in xs if not math.isnan(x)]
    if not ys:
        return "-"
    text = f"{median(ys):,.{digits}f}"
    if len(ys) > 1:
        text += f" ({min(ys):,.{digits}f}-{max(ys):,.{digits}f})"
    return text


def fmt_num(x: float, digits: int = 0) -> str:
    return "-" if math.isnan(x) else f"{x:,.{digits}f}"


def cell_median(results: Results, stores: int, regions: int, what: str) -> float:
    """The median over runs of one cell's ops/s ("ops"), ops per CPU-second
    ("cpu") or ops per CPU-second above idle ("above")."""
    cell = [
        (lab, s) for lab, s in results.rows if (lab["stores"], lab["regions"]) == (stores, regions)
    ]
    if what == "ops":
        return median(s.throughput() for _, s in cell)
    if what == "above":
        return median(
            above_idle(s, lab.get("store_activity", {}).get("idle cores", math.nan))
            for lab, s in cell
        )
    return median(s.ops_per_server_cpu_second() for _, s in cell)


def report(results: Results, args: argparse.Namespace, notes: list[str]) -> None:
    store_counts = results.values(stores=None)
    headers = [
        "stores",
        "replicas",
        "regions",
        "ops/s (min-max)",
        "put p50 ms",
        "get p50 ms",
        "cluster CPU (cores)",
        "ops per CPU-s (min-max)",
        "idle cores",
        "ops per CPU-s above idle",
        "PD CPU %",
        "driver us/op",
        "msgs/s",
        "fsyncs/s",
        "fsync ms",
        "setup s",
    ]
    rows = []
    for stores in store_counts:
        for regions in args.region_counts:
            ss = results.samples(stores=stores, regions=regions)
            if not ss:
                continue
            labels = [
                lab
                for lab, _ in results.rows
                if (lab["stores"], lab["regions"]) == (stores, regions)
            ]
            setup = median(lab["setup_s"] for lab in labels)

            def did(name: str, labels: list[dict[str, Any]] = labels) -> float:
                return median(lab.get("store_activity", {}).get(name, math.nan) for lab in labels)

            cores = median(s.server_cpu_seconds() / s.seconds for s in ss)
            beyond = [
                above_idle(s, lab.get("store_activity", {}).get("idle cores", math.nan))
                for lab, s in zip(labels, ss, strict=True)
            ]
            pd_share = median(
                s.server_cpu.get("pd", math.nan) / s.server_cpu_seconds() * 100 for s in ss
            )
            rows.append(
                [
                    str(stores),
                    str(min(3, stores) if args.pd is None else args.replicas),
                    str(regions),
                    fmt_spread([s.throughput() for s in ss]),
                    fmt_ms(ss, 50, "put"),
                    fmt_ms(ss, 50, "get"),
                    "-" if math.isnan(cores) else f"{cores:.2f}",
                    fmt_spread([s.ops_per_server_cpu_second() for s in ss]),
                    fmt_num(did("idle cores"), 2),
                    fmt_spread(beyond),
                    "-" if math.isnan(pd_share) else f"{pd_share:.0f}",
                    f"{median(s.cpu_us_per_op() for s in ss):.0f}",
                    fmt_num(did("raft msgs sent/s")),
                    fmt_num(did("fsyncs/s")),
                    fmt_num(did("fsync ms"), 2),
                    f"{setup:.0f}",
                ]
            )
    print_table(
        f"scaling: {args.put_percent}% puts / {100 - args.put_percent}% gets of "
        f"{args.value_size}-byte values over {args.keys:,} keys, {args.tasks} tasks, "
        f"median of {args.runs} run(s) x {args.seconds:g} s",
        headers,
        rows,
    )
    print()
    print(
        "cluster CPU: utime + stime of the PD and every store over the measurement "
        "(/proc/<pid>/stat), in cores busy; ops per CPU-s = operations / those CPU seconds; "
        "idle cores: the same over --idle seconds without load just before (ticks, "
        "heartbeats); above idle: operations / (CPU seconds - idle cores x seconds); "
        "driver us/op: this process's CPU (client library); msgs/s, fsyncs/s: Raft messages "
        "sent and synced raft/ writes per second per store, fsync ms their mean duration "
        "(the stores' /metrics); setup s: split + balance."
    )
    for note in notes:
        print(f"note: {note}")
    print(machine_line(results.meta["load_at_start"]))
    cores = os.cpu_count() or 0
    if args.pd is not None:
        print(
            f"cores here (the driver's machine): {cores}. CPU not measured: the cluster's "
            "processes are not on this machine (--pd), so only ops/s and latencies are shown."
        )
        return
    print(
        f"cores: {cores}. Every store, the PD and this driver share them, so with {cores} "
        "cores more stores cannot add throughput (ops/s shows the cost of more stores on "
        "the same cores, not what more machines would give); ops per CPU-second is the "
        "figure that shows the overhead of scaling out."
    )
    print()
    print(ratio_line(results, args, "stores", 3, 7, "above"))
    print(ratio_line(results, args, "regions", 1, 256, "above"))
    print(ratio_line(results, args, "stores", 3, 7))
    print(ratio_line(results, args, "regions", 1, 256))


def ratio_line(
    results: Results,
    args: argparse.Namespace,
    axis: str,
    low: int,
    high: int,
    what: str = "cpu",
) -> str:
    """Ops per CPU-second (`what` "cpu", or "above" idle) at `high` over
    `low` along `axis`, at each value of the other axis; the "cpu" figure is
    judged against the target."""
    if axis == "stores":
        pairs = [(o, (low, o), (high, o)) for o in args.region_counts]
        ratio_of, other_name = f"{high} stores / {low} stores", "region"
    else:
        pairs = [(o, (o, low), (o, high)) for o in results.values(stores=None)]
        ratio_of, other_name = f"{high} regions / {low} region", "store"
    figure = "ops per CPU-second" + (" above idle" if what == "above" else "")
    parts = []
    ratios = []
    for other, (s0, r0), (s1, r1) in pairs:
        a = cell_median(results, s1, r1, what)
        b = cell_median(results, s0, r0, what)
        if math.isnan(a) or math.isnan(b) or b == 0:
            continue
        ratios.append(a / b)
        parts.append(f"{other} {other_name}{'s' if other > 1 else ''}: {a / b:.2f}")
    if not ratios:
        return f"{figure}, {ratio_of}: not measured (needs both in --{axis})"
    line = f"{figure}, {ratio_of}: {', '.join(parts)}"
    if what != "cpu":
        return line
    worst = min(ratios)
    verdict = "met" if worst >= TARGET_RATIO else "NOT met"
    return f"{line}; target >= {TARGET_RATIO} (falls at most 15%): {verdict} (worst {worst:.2f})"


def plot(results: Results, args: argparse.Namespace) -> None:
    store_counts = results.values(stores=None)
    panels = []
    for ylabel, what in (("ops/s", "ops"), ("ops per CPU-second of the cluster", "cpu")):
        lines = {
            f"{regions} region{'s' if regions > 1 else ''}": [
                (float(s), cell_median(results, s, regions, what)) for s in store_counts
            ]
            for regions in args.region_counts
        }
        panels.append((ylabel, lines))
    plot_panels(
        args.plot,
        f"mixed {args.put_percent}% puts, {args.tasks} tasks, {os.cpu_count()} shared cores "
        f"(median of {args.runs})",
        panels,
        xlabel="stores",
    )
    print(f"\nplot: {args.plot}")


async def main(args: argparse.Namespace) -> None:
    results = Results(meta={**vars(args), "cpu_count": os.cpu_count()})
    results.meta["load_at_start"] = load_average()
    notes: list[str] = []
    if args.pd is None:
        if not proc.available():
            raise SystemExit("scaling: no /proc here to read the processes' CPU from")
        for run in range(args.runs):
            for stores in args.store_counts:
                await run_local(stores, run, args, results, notes)
    else:
        async with open_pd_admin(args.pd_http) as pd:
            args.replicas = int((await pd.config())["max_replicas"])
        await run_remote(args, results, notes)
    report(results, args, notes)
    if args.json:
        results.write_json(args.json)
        print(f"json: {args.json}")
    if args.plot:
        plot(results, args)


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", default="1,3,5,7", help="store counts (default %(default)s)")
    parser.add_argument(
        "--regions", default="1,16,256", help="region counts, measured ascending on each cluster"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs, each a fresh cluster per count")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent driver tasks")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before")
    parser.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="seconds of the cluster's idle CPU measured before each load (default %(default)s)",
    )
    parser.add_argument("--keys", type=int, default=10_000, help="keys preloaded and used")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument("--put-percent", type=int, default=50, help="share of puts (0-100)")
    parser.add_argument(
        "--split-timeout", type=float, default=600.0, help="seconds allowed for the splits"
    )
    parser.add_argument(
        "--balance-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for balance after the splits (then measured anyway, noted)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="stop waiting for balance once nothing moved this long (noted; default %(default)s)",
    )
    parser.add_argument(
        "--pd", default=None, metavar="HOST:PORT", help="measure this running cluster instead"
    )
    parser.add_argument(
        "--pd-http", default=None, metavar="URL", help="its PD's admin HTTP root (with --pd)"
    )
    add_output_flags(parser)
    args = parser.parse_args()
    if (args.pd is None) != (args.pd_http is None):
        parser.error("--pd and --pd-http go together")
    args.store_counts = [int(x) for x in args.stores.split(",")]
    args.region_counts = sorted(int(x) for x in args.regions.split(","))
    if min(args.store_counts) < 1 or min(args.region_counts) < 1:
        parser.error("store and region counts start at 1")
    if max(args.region_counts) > args.keys:
        parser.error("--keys must be at least the largest region count")
    if not 0 <= args.put_percent <= 100:
        parser.error("--put-percent is 0 to 100")
    run_main(main, args)


if __name__ == "__main__":
    cli()

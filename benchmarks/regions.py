"""Many regions on 3 stores: what idle regions cost each store (CPU, memory),
and write throughput spread over all of them (issue 14: 1, 100, 1,000 and
10,000 regions; target: 10,000 idle regions under 5% of one core per store).

For each region count, a fresh cluster on loopback: a PD and 3 stores, 3
replicas, durable, the stores' default settings (tick 100 ms, region
heartbeats every 10 s), the PD with --leader-schedule-limit 64 (setup
only: spreading the leaders of thousands of fresh regions is otherwise
slow). It preloads --keys keys (at least as many as the largest region
count), then:

1. split the key range into that many equal regions through the PD's split
   operator (POST /pd/api/v1/regions/split, 1,000 keys a request, the PD's
   most: 10,000 regions take 10 batch splits, each round waiting up to
   --split-pace seconds for the new regions to fall asleep: 10 rounds in
   one burst keep 10,000 fresh regions awake at once, whose elections and
   heartbeats overload the leader store on this machine), and wait until
   every region has 3 voters and a leader the PD knows (--settle-timeout);
   then wait for the leaders and regions to be balanced (--balance-timeout
   or --stall; past it the figures are taken anyway, with the leaders per
   store shown);
2. leave the cluster alone --quiet seconds, then measure --idle seconds of
   idleness: CPU of each store and of the PD (utime + stime from
   /proc/<pid>/stat, in percent of one core), each store's resident memory
   (VmRSS), and from each store's status port (GET /metrics) what it did
   meanwhile: loop rounds, Raft messages sent, region heartbeats, fsyncs
   (per second);
3. write one key in every region (fills the client's region cache), then
   --tasks tasks put --value-size-byte values for --seconds, on keys spread
   over the whole key range (so over every region): puts/s and puts per
   CPU-second of the cluster, and the stores' rounds, Raft messages and
   fsyncs (count and mean duration) meanwhile.

The per-region idle cost is the growth in a store's idle CPU per region
added between the two largest counts measured; the last lines extrapolate
it linearly to 10,000 regions (unless measured) and judge the target.
Regions hibernate (the stores' default): an idle region sleeps once its
followers caught up, and a sleeping leader reports to the PD every 60 s
(`asleep_region_heartbeat_interval`), so --idle should span a minute for
those reports to be counted.

Every process shares this machine's cores (printed): once the stores'
idle work exceeds them, ticks run late and the figures only say "more than
there is". A level whose splits do not settle within --settle-timeout is
measured as it stands (said so), and no larger level is tried.

    python3 benchmarks/regions.py [--regions 1,100,1000,10000] [--idle 20] [--seconds 5]
        [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import trio

import client
from benchmarks import proc
from benchmarks.driver import (
    Op,
    add_output_flags,
    load_average,
    machine_line,
    plot_panels,
    print_table,
    progress,
    run_for,
    run_main,
    workdir,
)
from benchmarks.pd_admin import (
    BALANCE_SCHEDULERS,
    STORE_COUNTERS,
    PdAdmin,
    Placement,
    activity,
    open_pd_admin,
    scrape_stores,
    split_at,
    wait_balanced,
)
from benchmarks.systems import ShardKv, cluster_pids, start_shardkv

STORES = 3
TARGET_REGIONS = 10_000
TARGET_PERCENT = 5.0
SETUP_PD_FLAGS = {"--leader-schedule-limit": "64"}
MiB = 1 << 20


def key(i: int) -> bytes:
    return b"r%09d" % i


@dataclass(slots=True)
class Level:
    """What one region count measured."""

    regions: int
    reached: int = 0  # regions the PD listed when the measurements began
    setup_s: float = math.nan
    settled: str = ""  # "" if settled and balanced, else what was not
    leaders: list[int] = field(default_factory=list)  # per store, in store order
    idle_percent: list[float] = field(default_factory=list)  # of one core, per store
    pd_idle_percent: float = math.nan
    rss_mib: list[float] = field(default_factory=list)
    idle_rates: dict[str, float] = field(default_factory=dict)  # per store, mean
    write_rates: dict[str, float] = field(default_factory=dict)
    puts_per_s: float = math.nan
    put_p50_ms: float = math.nan
    put_p99_ms: float = math.nan
    write_cores: float = math.nan
    puts_per_cpu_s: float = math.nan

    def label(self) -> str:
        if self.reached and self.reached != self.regions:
            return f"{self.regions:,} ({self.reached:,} reached)"
        return f"{self.regions:,}"

    def mean_idle(self) -> float:
        return statistics.fmean(self.idle_percent) if self.idle_percent else math.nan

    def mean_rss(self) -> float:
        return statistics.fmean(self.rss_mib) if self.rss_mib else math.nan


async def wait_asleep(
    http: httpx.AsyncClient, status_urls: dict[str, str], limit: float, share: float = 0.95
) -> None:
    """Wait (at most `limit` s) until every store has `share` of its regions
    asleep (hibernating), from the stores' /metrics."""
    with trio.move_on_after(limit):
        while True:
            try:
                stores = await scrape_stores(http, status_urls)
            except httpx.HTTPError:  # a busy store closed a kept-alive connection
                await trio.sleep(0.5)
                continue
            if all(
                m.get("shardkv_store_regions_asleep", 0)
                >= share * m.get("shardkv_store_regions", 0)
                for m in stores.values()
            ):
                return
            await trio.sleep(0.5)


async def settle(
    pd: PdAdmin,
    level: Level,
    args: argparse.Namespace,
    http: httpx.AsyncClient,
    status_urls: dict[str, str],
) -> Placement:
    """Split to the level's count (each round of splits paced by
    --split-pace), wait for replicas and leaders, then for balance; notes on
    `level` what did not happen in time."""
    started = time.perf_counter()
    keys = [key(j * args.keys // level.regions) for j in range(1, level.regions)]

    async def pace() -> None:
        if args.split_pace > 0:
            await wait_asleep(http, status_urls, args.split_pace)

    with trio.move_on_after(args.settle_timeout) as settling:
        await split_at(pd, keys, progress=progress, after_round=pace)
        await wait_balanced(pd, 3, stores=STORES, progress=progress, poll=1.0, balance=False)
    if settling.cancelled_caught:
        placement = await pd.placement()
        level.settled = "not settled after {:g} s: {}".format(
            args.settle_timeout,
            f"{len(placement.regions):,} regions"
            + (f", {why}" if (why := placement.unsettled(3, STORES)) else ""),
        )
        progress(level.settled + "; measuring as it stands")
    else:
        with trio.move_on_after(args.balance_timeout) as balancing:
            done = await wait_balanced(
                pd, 3, stores=STORES, progress=progress, poll=1.0, stall=args.stall
            )
            if done.stalled:
                level.settled = f"nothing moved for {args.stall:g} s short of balance: " + (
                    done.stalled
                )
                progress(level.settled + "; measuring anyway")
        if balancing.cancelled_caught:
            placement = await pd.placement()
            level.settled = f"not balanced after {args.balance_timeout:g} s: " + (
                placement.unbalanced(3, STORES) or "?"
            )
            progress(level.settled + "; measuring anyway")
    level.setup_s = time.perf_counter() - started
    placement = await pd.placement()
    leaders = placement.leaders()
    level.leaders = [leaders[s] for s in sorted(placement.stores)]
    level.reached = len(placement.regions)
    progress(f"{placement.summary()} after {level.setup_s:.0f} s")
    return placement


async def measure_idle(
    http: httpx.AsyncClient,
    level: Level,
    pids: dict[str, int],
    status_urls: dict[str, str],
    args: argparse.Namespace,
) -> None:
    progress(f"{level.regions:,} regions: {args.quiet:g} s quiet, then {args.idle:g} s idle")
    await trio.sleep(args.quiet)
    before = await scrape_stores(http, status_urls)
    meter = proc.CpuMeter(pids)
    await trio.sleep(args.idle)
    used, elapsed = meter.used(), meter.elapsed()
    after = await scrape_stores(http, status_urls)
    stores = sorted(status_urls, key=lambda n: int(n.split("-")[1]))
    level.idle_percent = [used[s] / elapsed * 100 for s in stores]
    level.pd_idle_percent = used["pd"] / elapsed * 100
    level.rss_mib = [proc.rss_bytes(pids[s]) / MiB for s in stores]
    level.idle_rates = activity(before, after, elapsed)
    progress(
        f"idle: stores {'/'.join(f'{x:.1f}' for x in level.idle_percent)}% of a core, "
        f"PD {level.pd_idle_percent:.1f}%, RSS {'/'.join(f'{x:.0f}' for x in level.rss_mib)} MiB"
    )


def put_op(kv: ShardKv, keys: int, value: bytes) -> Op:
    async def op(i: int) -> None:
        await kv.put(key((i * 7919) % keys), value)

    return op


async def measure_writes(
    kv: ShardKv,
    http: httpx.AsyncClient,
    level: Level,
    pids: dict[str, int],
    status_urls: dict[str, str],
    value: bytes,
    args: argparse.Namespace,
) -> None:
    # One key in every region first: the client learns every region.
    n = level.regions
    await kv.load([(key(j * args.keys // n), value) for j in range(n)])
    op = put_op(kv, args.keys, value)
    if args.warmup > 0:
        await run_for(op, args.tasks, args.warmup)
    before = await scrape_stores(http, status_urls)
    meter = proc.CpuMeter(pids)
    sample = await run_for(op, args.tasks, args.seconds, kind="put")
    sample.server_cpu = meter.used()
    level.write_rates = activity(before, await scrape_stores(http, status_urls), sample.seconds)
    level.puts_per_s = sample.throughput()
    level.put_p50_ms = sample.latency_ms(50)
    level.put_p99_ms = sample.latency_ms(99)
    level.write_cores = sample.server_cpu_seconds() / sample.seconds
    level.puts_per_cpu_s = sample.ops_per_server_cpu_second()
    progress(
        f"writes: {level.puts_per_s:,.0f} puts/s, cluster CPU {level.write_cores:.2f} cores, "
        f"{level.puts_per_cpu_s:,.0f} puts per CPU-s"
    )


async def measure_level(level: Level, value: bytes, args: argparse.Namespace) -> None:
    """A fresh cluster, split to the level's count, measured idle and under
    writes, stopped."""
    with workdir(args.dir, f"regions-{level.regions}") as d:
        progress(f"{level.regions:,} regions: starting a PD and {STORES} stores")
        async with (
            start_shardkv(d, stores=STORES, replicas=3, pd_flags=SETUP_PD_FLAGS) as cluster,
            open_pd_admin(cluster.http_url) as pd,
            httpx.AsyncClient(timeout=60) as http,
            client.connect([cluster.pd_address]) as c,
        ):
            kv = ShardKv(c, 3)
            progress(f"preloading {args.keys:,} keys")
            await kv.load([(key(i), value) for i in range(args.keys)])
            pids = cluster_pids(cluster)
            status_urls = {s.child.name: s.status_url for s in cluster.store_specs}
            await settle(pd, level, args, http, status_urls)
            if level.settled and not level.settled.startswith("not settled"):
                # Still balancing: idle means no scheduling either. Pause the
                # balance schedulers and let the regions they moved fall asleep.
                for name in BALANCE_SCHEDULERS:
                    await pd.pause(name, args.quiet + args.idle + 60)
                await wait_asleep(http, status_urls, 60)
                level.settled += "; balance schedulers paused for the idle window"
            await measure_idle(http, level, pids, status_urls, args)
            if level.settled.startswith("not settled"):
                # Regions without a leader would fail the client's calls.
                progress("writes not measured: the regions did not settle")
            else:
                try:
                    await measure_writes(kv, http, level, pids, status_urls, value, args)
                except Exception as e:  # a write that failed: say so, keep the rest
                    while isinstance(e, BaseExceptionGroup) and e.exceptions:
                        e = e.exceptions[0]  # the first failure, not "1 sub-exception"
                    failed = f"writes failed: {str(e).splitlines()[0][:200]}"
                    level.settled = "; ".join(x for x in (level.settled, failed) if x)
                    progress(level.settled)


async def main(args: argparse.Namespace) -> None:
    if not proc.available():
        raise SystemExit("regions: no /proc here to read the processes' CPU from")
    load_at_start = load_average()
    levels: list[Level] = []
    value = random.Random(0).randbytes(args.value_size)
    for regions in args.region_counts:
        level = Level(regions)
        levels.append(level)
        await measure_level(level, value, args)
        if level.settled.startswith("not settled"):
            skipped = [r for r in args.region_counts if r > regions]
            if skipped:
                level.settled += f"; larger counts not tried: {skipped}"
            break
    report(levels, args, load_at_start)
    if args.json:
        write_json(levels, args)
    if args.plot:
        plot(levels, args)


def write_json(levels: list[Level], args: argparse.Namespace) -> None:
    meta = {**vars(args), "cpu_count": os.cpu_count()}
    doc = {"meta": meta, "levels": [asdict(lv) for lv in levels]}
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"json: {args.json}")


def settled(levels: list[Level]) -> list[Level]:
    return [lv for lv in levels if not lv.settled.startswith("not settled")]


def fit(levels: list[Level]) -> tuple[Level, Level] | None:
    """The two largest settled counts: the per-region idle cost between
    them is the marginal one (it falls as regions grow: a store round and a
    message frame serve many regions), so a line through them is the
    kindest extrapolation the measurements allow."""
    ok = settled(levels)
    return (ok[-2], ok[-1]) if len(ok) >= 2 else None


def fmt(x: float, digits: int = 0) -> str:
    return "-" if math.isnan(x) else f"{x:,.{digits}f}"


def report(levels: list[Level], args: argparse.Namespace, load_at_start: float) -> None:
    def per_store(xs: list[float] | list[int], digits: int = 1) -> str:
        return "/".join(f"{x:.{digits}f}" for x in xs) if xs else "-"

    headers = ["regions", "leaders per store", "idle CPU % per store", "mean %", "PD %"]
    headers += ["RSS MiB per store", *(label for label, _ in STORE_COUNTERS), "setup s"]
    rows = []
    for lv in levels:
        rows.append(
            [
                lv.label(),
                "/".join(map(str, lv.leaders)),
                per_store(lv.idle_percent),
                f"{lv.mean_idle():.1f}",
                f"{lv.pd_idle_percent:.1f}",
                per_store(lv.rss_mib, 0),
                *(f"{lv.idle_rates.get(label, math.nan):,.1f}" for label, _ in STORE_COUNTERS),
                f"{lv.setup_s:.0f}",
            ]
        )
    print_table(
        f"regions: idle cost on {STORES} stores x 3 replicas ({args.idle:g} s idle after "
        f"{args.quiet:g} s quiet; CPU in % of one core; counters per store per second)",
        headers,
        rows,
    )
    rows = [
        [
            lv.label(),
            fmt(lv.puts_per_s),
            fmt(lv.put_p50_ms, 2),
            fmt(lv.put_p99_ms, 2),
            fmt(lv.write_cores, 2),
            fmt(lv.puts_per_cpu_s),
            fmt(lv.write_rates.get("rounds/s", math.nan)),
            fmt(lv.write_rates.get("raft msgs sent/s", math.nan)),
            fmt(lv.write_rates.get("fsyncs/s", math.nan)),
            fmt(lv.write_rates.get("fsync ms", math.nan), 2),
        ]
        for lv in levels
    ]
    print_table(
        f"writes spread over every region: {args.tasks} tasks, {args.value_size}-byte values "
        f"over {args.keys:,} keys, {args.seconds:g} s (store counters: per store, mean)",
        [
            "regions",
            "puts/s",
            "p50 ms",
            "p99 ms",
            "cluster CPU (cores)",
            "puts per CPU-s",
            "rounds/s",
            "raft msgs sent/s",
            "fsyncs/s",
            "fsync ms",
        ],
        rows,
    )
    print()
    for lv in levels:
        if lv.settled:
            print(f"note: {lv.regions:,} regions: {lv.settled}")
    print(machine_line(load_at_start))
    cores = os.cpu_count() or 0
    print(
        f"cores: {cores}, shared by the 3 stores, the PD and this driver: a store's idle "
        f"CPU cannot exceed about {100 * cores / 3:.0f}% here once all three are busy."
    )
    pair = fit(levels)
    if pair is None:
        print("per-region idle cost: needs two settled region counts")
        return
    low, high = pair
    span = high.regions - low.regions
    slope = (high.mean_idle() - low.mean_idle()) / span
    rss = (high.mean_rss() - low.mean_rss()) / span * 1024
    print(
        f"per region (from {low.regions:,} to {high.regions:,} regions): idle CPU "
        f"{slope * 1000:.1f}% of one core per 1,000 regions per store; memory "
        f"{rss:.0f} KiB per region per store"
    )
    measured = [lv for lv in settled(levels) if lv.regions == TARGET_REGIONS]
    if measured:
        figure = measured[0].mean_idle()
        how = "measured"
    else:
        figure = high.mean_idle() + slope * (TARGET_REGIONS - high.regions)
        how = f"extrapolated linearly from {low.regions:,} and {high.regions:,} regions"
    verdict = "met" if figure < TARGET_PERCENT else "NOT met"
    print(
        f"{TARGET_REGIONS:,} idle regions: {figure:.0f}% of one core per store, {how}; "
        f"target < {TARGET_PERCENT:g}%: {verdict}"
    )


def plot(levels: list[Level], args: argparse.Namespace) -> None:
    xs = [float(lv.reached or lv.regions) for lv in levels]
    idle = {
        f"store {i + 1}": [(x, lv.idle_percent[i]) for x, lv in zip(xs, levels, strict=True)]
        for i in range(STORES)
    }
    idle["PD"] = [(x, lv.pd_idle_percent) for x, lv in zip(xs, levels, strict=True)]
    rss = {
        f"store {i + 1}": [(x, lv.rss_mib[i]) for x, lv in zip(xs, levels, strict=True)]
        for i in range(STORES)
    }
    plot_panels(
        args.plot,
        f"idle regions on {STORES} stores ({os.cpu_count()} shared cores)"
        + ("; the last count did not settle" if len(settled(levels)) < len(levels) else ""),
        [("idle CPU, % of one core", idle), ("resident memory, MiB", rss)],
        xlabel="regions (reached)",
        logx=True,
    )
    print(f"\nplot: {args.plot}")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--regions", default="1,100,1000,10000", help="region counts (default %(default)s)"
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=60.0,
        help="seconds of idleness measured (default %(default)s)",
    )
    parser.add_argument(
        "--quiet", type=float, default=5.0, help="seconds left alone before the idle window"
    )
    parser.add_argument("--tasks", type=int, default=64, help="concurrent writers")
    parser.add_argument("--seconds", type=float, default=5.0, help="of writes per count")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before")
    parser.add_argument(
        "--keys", type=int, default=10_000, help="keys (raised to the largest region count)"
    )
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=600.0,
        help="seconds for a count's splits, replicas and leaders (default %(default)s)",
    )
    parser.add_argument(
        "--balance-timeout",
        type=float,
        default=120.0,
        help="seconds then waited for balance (then measured anyway; default %(default)s)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="stop waiting for balance once nothing moved this long (default %(default)s)",
    )
    parser.add_argument(
        "--split-pace",
        type=float,
        default=60.0,
        help="after each round of splits, wait up to this many seconds for 95%% of every "
        "store's regions to sleep before the next (0: split in one burst; default %(default)s)",
    )
    add_output_flags(parser)
    args = parser.parse_args()
    args.region_counts = sorted(int(x) for x in args.regions.split(","))
    if min(args.region_counts) < 1:
        parser.error("region counts start at 1")
    args.keys = max(args.keys, *args.region_counts)
    run_main(main, args)


if __name__ == "__main__":
    cli()

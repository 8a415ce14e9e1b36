"""Adding stores under load: 3 stores holding 60 regions get 2 more; how long
until leaders and regions are balanced again, while a client writes and
reads, and how many errors the client saw (issue 14's target: under 60 s,
no error surfaced).

Each run starts a fresh cluster on loopback: a PD and 3 stores, 3 replicas,
durable, the default settings of both (the target is about the defaults;
--pd-flag and --store-flag change them, e.g. --store-flag
store-heartbeat-interval=1s, to see what bounds the time). It preloads
--keys keys, splits them into --regions equal regions through the PD's
split operator (POST /pd/api/v1/regions/split) and waits for the PD's
schedulers to balance the 3 stores. Then --tasks client tasks loop, each
over its own keys spread over the whole range: put a fresh value, get it
back, compare. --before seconds later 2 stores start; from then on the PD's
API is read every --poll seconds until the 5 stores are balanced the way
its schedulers judge it (every region at 3 voters and nothing else, a
known leader, leaders and region scores within the tolerance:
benchmarks/pd_admin.py) in two readings in a row. The time reported is
from the start of the new stores to the first of those readings (so it
includes their start and registration); the readings also say when the
regions alone, and the leaders alone, were first within the tolerance. The
client keeps going --after seconds more.

Errors surfaced: every exception a put or get raised to the caller (the
smart client retries region errors inside its --client-timeout deadline;
only what escapes counts), by type, and every get that did not return the
value just put. Operators: those the balance schedulers started, and the
PD's count of operators finished by result (GET /metrics).

    python3 benchmarks/rebalance.py [--runs 3] [--regions 60] [--tasks 8]
        [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import trio

import client
from benchmarks.driver import (
    add_output_flags,
    load_average,
    machine_line,
    median,
    percentile,
    plot_panels,
    print_table,
    progress,
    run_main,
    workdir,
)
from benchmarks.pd_admin import (
    PdAdmin,
    Placement,
    open_pd_admin,
    scrape,
    split_at,
    wait_balanced,
)
from benchmarks.systems import ShardKv, start_shardkv
from shardkv.local_cluster import LocalCluster

STORES, ADDED = 3, 2
TARGET_SECONDS = 60.0


def key(i: int) -> bytes:
    return b"b%09d" % i


@dataclass(slots=True)
class Reading:
    """One poll of the PD after the stores were added."""

    t: float  # seconds since the new stores started
    voters: dict[int, int]
    leaders: dict[int, int]
    regions_ok: bool  # all settled, region scores within the tolerance
    leaders_ok: bool  # all settled, leaders within the tolerance


@dataclass(slots=True)
class Run:
    balanced_s: float = math.nan  # nan: not within --timeout
    regions_s: float = math.nan
    leaders_s: float = math.nan
    last_move_s: float = math.nan
    setup_s: float = 0.0
    setup_note: str = ""
    final: str = ""
    operators: dict[str, int] = field(default_factory=dict)  # by scheduler, delta
    finished: dict[str, int] = field(default_factory=dict)  # by result, delta
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p99_ms: float = math.nan
    max_ms: float = math.nan
    readings: list[Reading] = field(default_factory=list)

    def error_count(self) -> int:
        return sum(self.errors.values())


def judge(placement: Placement, t: float) -> Reading:
    voters, leaders = placement.peers(), placement.leaders()
    settled = placement.unsettled(3, STORES + ADDED) is None
    margin = 2 * placement.ratio()
    heaviest = max((r.weight for r in placement.regions), default=1)
    scores = placement.scores().values()
    regions_ok = settled and max(scores) - min(scores) <= margin * heaviest
    leaders_ok = settled and max(leaders.values()) - min(leaders.values()) <= margin
    return Reading(round(t, 2), dict(voters), dict(leaders), regions_ok, leaders_ok)


async def finished_by_result(http: httpx.AsyncClient, url: str) -> Counter[str]:
    """The PD's operators finished so far, by result (from GET /metrics)."""
    out: Counter[str] = Counter()
    for name, value in (await scrape(http, url + "/metrics")).items():
        if name.startswith("shardkv_pd_operators_finished_total{"):
            result = name.split('result="')[1].split('"')[0]
            out[result] += int(value)
    return out


class Client:
    """The load: tasks putting then reading back their own keys."""

    def __init__(self, kv: client.Client, keys: int, tasks: int) -> None:
        self.kv = kv
        self.keys = keys
        self.tasks = tasks
        self.ops = 0
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.measuring = False
        self.stop = trio.Event()

    async def task(self, t: int) -> None:
        own = self.keys // self.tasks
        m = 0
        while not self.stop.is_set():
            k = key(((m * 7919) % own) * self.tasks + t)
            value = b"%d:%d" % (t, m)
            m += 1
            started = time.perf_counter()
            try:
                await self.kv.put(k, value)
                got = await self.kv.get(k)
            except Exception as e:  # every error surfaced to the caller counts
                if self.measuring:
                    self.errors[type(e).__name__] += 1
                await trio.sleep(0.05)
                continue
            if self.measuring:
                self.latencies.append(time.perf_counter() - started)
                self.ops += 2
                if got != value:
                    self.errors["wrong read"] += 1


async def one_run(run_no: int, args: argparse.Namespace) -> Run:
    run = Run()
    with workdir(args.dir, f"rebalance-run{run_no}") as d:
        progress(f"run {run_no}/{args.runs}: starting {STORES} stores")
        started = time.perf_counter()
        async with (
            start_shardkv(
                d, stores=STORES, replicas=3, pd_flags=args.pd_flags, store_flags=args.store_flags
            ) as cluster,
            open_pd_admin(cluster.http_url) as pd,
            httpx.AsyncClient(timeout=30) as http,
            client.connect([cluster.pd_address], timeout=args.client_timeout) as c,
        ):
            value = random.Random(run_no).randbytes(100)
            await ShardKv(c, 3).load([(key(i), value) for i in range(args.keys)])
            keys = [key(j * args.keys // args.regions) for j in range(1, args.regions)]
            with trio.fail_after(args.timeout):
                await split_at(pd, keys, progress=progress)
                done = await wait_balanced(
                    pd, 3, stores=STORES, progress=progress, stall=args.stall
                )
            run.setup_s = time.perf_counter() - started
            if done.stalled:
                run.setup_note = f"the {STORES} stores were not balanced first: {done.stalled}"
                progress(run.setup_note)
            progress(f"{done.placement.summary()}; setup {run.setup_s:.0f} s")
            load = Client(c, args.keys, args.tasks)
            async with trio.open_nursery() as nursery:
                for t in range(args.tasks):
                    nursery.start_soon(load.task, t)
                load.measuring = True
                await trio.sleep(args.before)
                await add_stores_and_wait(cluster, pd, http, run, args)
                await trio.sleep(args.after)
                load.stop.set()
            run.ops = load.ops
            run.errors = dict(load.errors)
            lat = sorted(load.latencies)
            run.p99_ms = percentile(lat, 99) * 1000
            run.max_ms = (lat[-1] if lat else math.nan) * 1000
    progress(
        f"run {run_no}: balanced in {run.balanced_s:.1f} s, {run.ops:,} client ops, "
        f"{run.error_count()} errors"
    )
    return run


async def add_stores_and_wait(
    cluster: LocalCluster, pd: PdAdmin, http: httpx.AsyncClient, run: Run, args: argparse.Namespace
) -> None:
    created0 = await pd.operators_created()
    finished0 = await finished_by_result(http, cluster.http_url)
    t0 = time.perf_counter()
    for _ in range(ADDED):
        spec = cluster.add_store()
        await cluster.start_store(spec.index)
    progress(f"{ADDED} stores started; waiting for balance")

    def on_reading(taken: float, placement: Placement) -> None:
        run.readings.append(judge(placement, taken - t0))

    with trio.move_on_after(args.timeout) as waiting:
        done = await wait_balanced(
            pd,
            3,
            stores=STORES + ADDED,
            progress=progress,
            on_reading=on_reading,
            poll=args.poll,
            stall=args.stall,
        )
        if done.stalled:
            run.final = (
                f"stalled: nothing moved from {done.since - t0:.1f} s to "
                f"{run.readings[-1].t:.1f} s, {done.stalled}; {done.placement.summary()}; "
                + leader_diagnosis(done.placement)
            )
            progress(run.final)
        else:
            run.balanced_s = done.since - t0
            run.final = done.placement.summary()
    if waiting.cancelled_caught:
        placement = await pd.placement()
        run.final = f"not balanced after {args.timeout:g} s: " + (
            placement.unbalanced(3, STORES + ADDED) or "?"
        )
        progress(run.final)
    moves = [
        b.t
        for a, b in itertools.pairwise(run.readings)
        if (a.voters, a.leaders) != (b.voters, b.leaders)
    ]
    run.last_move_s = moves[-1] if moves else math.nan
    run.regions_s = next((r.t for r in run.readings if r.regions_ok), math.nan)
    run.leaders_s = next((r.t for r in run.readings if r.leaders_ok), math.nan)
    created = await pd.operators_created()
    run.operators = {k: v - created0.get(k, 0) for k, v in created.items()}
    finished = await finished_by_result(http, cluster.http_url)
    run.finished = dict(finished - finished0)


def leader_diagnosis(placement: Placement) -> str:
    """Why balance-leader may have nothing to move: it moves a leader only
    to a voter whose store leads at least 2 fewer than the leader's."""
    leaders = placement.leaders()
    narrowing = [
        r
        for r in placement.regions
        if r.leader_store is not None
        and any(leaders[r.leader_store] - leaders[v] >= 2 for v in r.voters)
    ]
    if narrowing:
        return f"{len(narrowing)} region(s) still have a voter leading at least 2 fewer"
    return "no region has a voter whose store leads at least 2 fewer than its leader's"


def report(runs: list[Run], args: argparse.Namespace, load_at_start: float) -> None:
    def s(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.1f}"

    headers = ["run", "balanced s", "regions s", "leaders s", "last move s"]
    headers += ["region moves", "leader moves"]
    headers += ["ops finished", "client ops", "errors", "p99 ms", "max ms", "setup s"]
    rows = []
    for i, r in enumerate(runs, 1):
        rows.append(
            [
                str(i),
                s(r.balanced_s),
                s(r.regions_s),
                s(r.leaders_s),
                s(r.last_move_s),
                str(r.operators.get("balance-region", 0)),
                str(r.operators.get("balance-leader", 0)),
                ", ".join(f"{k} {v}" for k, v in sorted(r.finished.items())) or "-",
                f"{r.ops:,}",
                str(r.error_count()),
                s(r.p99_ms),
                s(r.max_ms),
                f"{r.setup_s:.0f}",
            ]
        )
    print_table(
        f"rebalance: {STORES} stores with {args.regions} regions (3 replicas) + {ADDED} stores, "
        f"{args.tasks} client tasks putting and reading back",
        headers,
        rows,
    )
    print()
    print(
        "balanced s: from starting the new stores to the first of two balanced readings of "
        "the PD (regions at 3 voters, leaders known, leaders and region scores within the "
        "tolerance); regions s / leaders s: the first reading with that part alone within it; "
        "last move s: the last reading that differed from the one before (voters or leaders "
        "per store); moves: operators the balance schedulers started; ops finished: every "
        "operator the PD finished meanwhile (the replica checker's too), by result; "
        "p99/max: a put + get pair."
    )
    for i, r in enumerate(runs, 1):
        print(f"run {i}: {r.final}")
        if r.setup_note:
            print(f"run {i}: {r.setup_note}")
        for name, n in sorted(r.errors.items()):
            print(f"run {i}: client error {name}: {n}")
    flags = [f"pd {k} {v}" for k, v in args.pd_flags.items()]
    flags += [f"stores {k} {v}" for k, v in args.store_flags.items()]
    print(f"settings: {'defaults' if not flags else ', '.join(flags)}")
    print(machine_line(load_at_start))
    print(f"cores: {os.cpu_count()}, shared by the 5 stores, the PD and this driver.")
    times = [r.balanced_s for r in runs]
    errors = sum(r.error_count() for r in runs)
    reached = [t for t in times if not math.isnan(t)]
    last = median(r.last_move_s for r in runs)
    print()
    if reached:
        worst = max(times) if len(reached) == len(times) else math.nan
        what = f"median {median(reached):.1f} s over {len(reached)} of {len(runs)} run(s)"
        if math.isnan(worst):
            what += " (not balanced in the others)"
        met = not math.isnan(worst) and worst < TARGET_SECONDS and errors == 0
    else:
        what = f"not reached in any of {len(runs)} run(s)"
        met = False
    print(
        f"time to balance after adding {ADDED} stores: {what}; the schedulers' last move at "
        f"median {last:.1f} s; client errors surfaced: {errors}; target < "
        f"{TARGET_SECONDS:g} s with no error: {'met' if met else 'NOT met'}"
    )


def plot(run: Run, args: argparse.Namespace) -> None:
    stores = sorted({s for r in run.readings for s in r.voters})
    panels = []
    for ylabel, attr in (("voters per store", "voters"), ("leaders per store", "leaders")):
        lines = {
            f"store {s}": [(r.t, float(getattr(r, attr).get(s, math.nan))) for r in run.readings]
            for s in stores
        }
        panels.append((ylabel, lines))
    outcome = (
        "not balanced" if math.isnan(run.balanced_s) else f"balanced at {run.balanced_s:.1f} s"
    )
    plot_panels(
        args.plot,
        f"adding {ADDED} stores to {STORES} ({args.regions} regions): {outcome}",
        panels,
        xlabel="seconds since the new stores started",
        series=True,
    )
    print(f"\nplot: {args.plot}")


def write_json(runs: list[Run], args: argparse.Namespace) -> None:
    meta = {**vars(args), "cpu_count": os.cpu_count()}
    Path(args.json).write_text(
        json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=2) + "\n"
    )
    print(f"json: {args.json}")


async def main(args: argparse.Namespace) -> None:
    load_at_start = load_average()
    runs = [await one_run(i + 1, args) for i in range(args.runs)]
    report(runs, args, load_at_start)
    if args.json:
        write_json(runs, args)
    if args.plot:
        plot(runs[-1], args)


def flag_pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep:
            raise SystemExit(f"rebalance: a flag is NAME=VALUE, got {v!r}")
        out["--" + name.removeprefix("--")] = value
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs, each a fresh cluster")
    parser.add_argument("--regions", type=int, default=60, help="regions split before adding")
    parser.add_argument("--keys", type=int, default=6_000, help="keys preloaded and used")
    parser.add_argument("--tasks", type=int, default=8, help="client tasks (put + get loops)")
    parser.add_argument(
        "--client-timeout", type=float, default=10.0, help="each call's deadline (the default)"
    )
    parser.add_argument("--before", type=float, default=2.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=2.0, help="seconds of load after")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between PD readings")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up waiting for balance after this"
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="stop waiting once nothing moved this long short of balance (default %(default)s)",
    )
    parser.add_argument(
        "--pd-flag", action="append", default=[], metavar="NAME=VALUE", help="a PD flag"
    )
    parser.add_argument(
        "--store-flag", action="append", default=[], metavar="NAME=VALUE", help="a store flag"
    )
    add_output_flags(parser, "chart of the last run (matplotlib)")
    args = parser.parse_args()
    args.pd_flags = flag_pairs(args.pd_flag)
    args.store_flags = flag_pairs(args.store_flag)
    if args.keys < args.regions * args.tasks:
        parser.error("--keys must be at least --regions x --tasks")
    run_main(main, args)


if __name__ == "__main__":
    cli()

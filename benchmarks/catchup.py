"""Catch-up of a follower that comes back with an older copy of a region:
incremental (only the sub-ranges that differ travel, store_node.snapshot_delta)
versus the whole snapshot, measured in the same run.

Per run and mode (`--incremental-snapshots true`, then `false`): a fresh
local cluster of three stores (real processes, LocalCluster), one region of
`--mb` MB of `--value-size`-byte values (loaded on store 1 alone; the two
others join and get it whole); then a follower is stopped, `--change` of the
keys (1%, picked at random) are written anew, the leader truncates its log
past the follower, and the follower is started again. Measured: the bytes the
leader sent for it (snapshot file plus digest exchange, from its counters),
the send's time (its log: digest exchange, delta file and transfer), and the
catch-up time until the follower's applied index is the leader's, from the
moment it serves its region again (its status page shows it) and, process
start included, from its start.

    python3 benchmarks/catchup.py [--mb 100] [--runs 3] [--value-size 4096]

The last line: `catch-up: incremental N bytes in S s, full M bytes in T s`
(medians; S and T the catch-up times from the follower serving again).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.driver import load_average, machine_line, progress, run_main, workdir
from kvproto import kvrpcpb as kv
from kvproto.pd_client import PdClient, open_pd_client
from kvproto.rpc import RpcConnection, connect
from shardkv.local_cluster import LocalCluster, leader_context, wait_for_voters

SENT_LINE = re.compile(rb"snapshot \d+/\d+ sent to store (\d+): (\d+) bytes in ([0-9.]+) s")
BATCH = 16


@dataclass(slots=True)
class Result:
    mode: str  # "incremental" or "full"
    bytes_sent: int
    bytes_whole: int
    delta: bool  # the leader sent a delta
    send_seconds: float  # the leader's send, digest exchange included
    catchup_seconds: float  # the follower serving its region -> applied as far as the leader
    restart_seconds: float  # the follower's process start -> the same


def key(i: int) -> bytes:
    return b"catchup%08d" % i


def status(cluster: LocalCluster, index: int) -> dict[str, Any]:
    url = cluster.store_specs[index - 1].status_url + "/status"
    with urllib.request.urlopen(url, timeout=5) as r:
        doc: dict[str, Any] = json.load(r)
        return doc


async def region_of(cluster: LocalCluster, index: int) -> dict[str, Any] | None:
    """Store `index`'s view of the one region (None: it serves none yet)."""
    try:
        doc = await trio.to_thread.run_sync(status, cluster, index)
    except OSError:
        return None
    regions = doc["regions"]
    return regions[0] if regions else None


async def wait_until(what: str, cond: Any, limit: float = 600) -> None:
    """Poll `cond` (the stores' state is seen through their status pages)."""
    with trio.fail_after(limit):
        while not await cond():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def put_batches(conn: RpcConnection, pd: PdClient, pairs: list[tuple[bytes, bytes]]) -> None:
    ctx, _ = await leader_context(pd)
    for i in range(0, len(pairs), BATCH):
        r = await conn.call(kv.RawBatchPutRequest(ctx, tuple(pairs[i : i + BATCH])), timeout=30)
        assert r == kv.RawWriteResponse(), r


async def one_run(root: Path, incremental: bool, args: argparse.Namespace, seed: int) -> Result:
    mode = "incremental" if incremental else "full"
    nkeys = args.mb * 1_000_000 // args.value_size
    changes = max(1, int(nkeys * args.change))
    cluster = LocalCluster(
        root,
        stores=3,
        pd_flags={
            "--max-replicas": "3",
            "--region-max-size": "8GiB",
            "--region-max-keys": "100000000",
            # The leader stays where it is through the run.
            "--leader-schedule-limit": "0",
        },
        store_flags={
            "--incremental-snapshots": "true" if incremental else "false",
            # A follower further behind than a quarter of the changes is
            # left to a snapshot: the leader truncates past the stopped one.
            "--log-gc-max-entries": str(max(1, changes // 8)),
            "--log-gc-max-follower-lag": str(max(2, changes // 4)),
        },
    )
    rng = random.Random(seed)
    try:
        await cluster.start_pd()
        await cluster.start_store(1)
        async with open_pd_client([cluster.pd_address]) as pd:
            with trio.fail_after(120):
                await cluster.wait_ready(pd, min_stores=1)
            _, address = await leader_context(pd)
            async with connect(address) as conn:
                value = rng.randbytes(args.value_size)
                await put_batches(conn, pd, [(key(i), value) for i in range(nkeys)])
            progress(f"{mode}: loaded {nkeys:,} keys ({args.mb} MB); two more stores join")
            await cluster.start_store(2)
            await cluster.start_store(3)
            with trio.fail_after(600):
                await wait_for_voters(pd, 3)
            ctx, address = await leader_context(pd)
            leader = next(i for i, s in enumerate(cluster.store_specs, 1) if s.address == address)
            follower = 3 if leader != 3 else 2

            async def in_step() -> bool:
                lr, fr = await region_of(cluster, leader), await region_of(cluster, follower)
                return bool(lr and fr and fr["applied_index"] == lr["applied_index"])

            await wait_until("the follower in step", in_step)
            before = await region_of(cluster, follower)
            assert before is not None
            behind = int(before["applied_index"])
            doc = await trio.to_thread.run_sync(status, cluster, follower)
            follower_id = int(doc["store_id"])
            await cluster.stop_store(follower)
            async with connect(address) as conn:
                picked = rng.sample(range(nkeys), changes)
                for i in picked:  # one entry each: the log grows past the allowance
                    new = rng.randbytes(args.value_size)
                    r = await conn.call(kv.RawPutRequest(ctx, key(i), new))
                    assert r == kv.RawWriteResponse(), r

            async def truncated() -> bool:
                lr = await region_of(cluster, leader)
                return bool(lr and lr["truncated_index"] > behind + 1)

            await wait_until("the leader truncated past the follower", truncated)
            progress(f"{mode}: {changes:,} keys changed; the follower starts again")
            counters0 = (await trio.to_thread.run_sync(status, cluster, leader))["counters"]
            started = time.perf_counter()
            await cluster.start_store(follower)

            async def serving() -> bool:
                return await region_of(cluster, follower) is not None

            await wait_until("the follower serving", serving)
            up = time.perf_counter()
            await wait_until("the follower caught up", in_step)
            done = time.perf_counter()
            counters = (await trio.to_thread.run_sync(status, cluster, leader))["counters"]
    finally:
        await cluster.aclose()

    def grew(name: str) -> int:
        return int(counters.get(name, 0)) - int(counters0.get(name, 0))

    log = (root / "logs" / f"store-{leader}.log").read_bytes()
    sends = [float(t) for to, _, t in SENT_LINE.findall(log) if int(to) == follower_id]
    return Result(
        mode=mode,
        bytes_sent=grew("snapshot_bytes_sent"),
        bytes_whole=grew("snapshot_bytes_whole"),
        delta=grew("delta_snapshots_sent") > 0,
        send_seconds=sends[-1] if sends else float("nan"),
        catchup_seconds=done - up,
        restart_seconds=done - started,
    )


async def measure(args: argparse.Namespace, results: list[Result]) -> None:
    with workdir(args.dir, "catchup") as root:
        for run in range(args.runs):
            for incremental in (True, False):
                name = f"run{run}-{'incremental' if incremental else 'full'}"
                res = await one_run(root / name, incremental, args, seed=run)
                progress(
                    f"{name}: {res.bytes_sent:,} bytes, caught up in {res.catchup_seconds:.2f} s "
                    f"({res.restart_seconds:.2f} s from its start; send {res.send_seconds:.2f} s, "
                    f"delta {res.delta})"
                )
                results.append(res)


def report(args: argparse.Namespace, results: list[Result], load0: float) -> None:
    nkeys = args.mb * 1_000_000 // args.value_size
    print()
    print(
        f"catch-up of a follower after {args.change:.0%} of {nkeys:,} keys of {args.value_size} "
        f"bytes ({args.mb} MB) changed; median of {args.runs} runs"
    )
    print(
        f"{'mode':<12} | {'bytes sent':>12} {'of whole':>9} | {'send s':>7} | "
        f"{'catch-up s':>10} {'(min - max)':>13} | {'from start s':>12}"
    )
    print("-" * 86)
    medians: dict[str, tuple[int, float]] = {}
    for mode in ("incremental", "full"):
        rs = [r for r in results if r.mode == mode]
        sent = int(statistics.median(r.bytes_sent for r in rs))
        whole = int(statistics.median(r.bytes_whole for r in rs))
        send = statistics.median(r.send_seconds for r in rs)
        times = [r.catchup_seconds for r in rs]
        catchup = statistics.median(times)
        restart = statistics.median(r.restart_seconds for r in rs)
        share = sent / whole if whole else float("nan")
        spread = f"({min(times):.2f} - {max(times):.2f})"
        print(
            f"{mode:<12} | {sent:>12,} {share:>9.1%} | {send:>7.2f} | "
            f"{catchup:>10.2f} {spread:>13} | {restart:>12.2f}"
        )
        if mode == "incremental" and not all(r.delta for r in rs):
            print("  (some incremental runs sent the whole snapshot)")
        medians[mode] = (sent, catchup)
    print(machine_line(load0))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    (n, s), (m, t) = medians["incremental"], medians["full"]
    print(f"catch-up: incremental {n} bytes in {s:.2f} s, full {m} bytes in {t:.2f} s")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100, help="size of the region (MB)")
    parser.add_argument("--value-size", type=int, default=4096, help="bytes per value")
    parser.add_argument(
        "--change", type=float, default=0.01, help="share of the keys changed while it is down"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode (median)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every run here")
    parser.add_argument(
        "--dir", default=None, help="keep data and logs under DIR (default: temporary, removed)"
    )
    args = parser.parse_args()
    load0 = load_average()
    results: list[Result] = []
    run_main(lambda a: measure(a, results), args)
    report(args, results, load0)


if __name__ == "__main__":
    cli()

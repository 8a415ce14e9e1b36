"""Replication cost and snapshot transfer speed.

1. Puts of 100-byte values with 1, 16, 64 and 256 concurrent tasks (one
   pipelined connection to the leader, raw KV RPC), durable, on three
   stores with three replicas, and on one store with one replica as the
   baseline measured in the same run (so the ratio is fair on a noisy
   machine). Every process (PD, stores, this driver) shares this machine.
2. Snapshot transfer: a region of `--snapshot-mb` MB on one store; two
   stores join and the PD adds them as replicas, which catch up by
   snapshot. The table shows each transfer's size, time and MB/s as the
   sending store logged them.

    python3 benchmarks/replication.py [--runs 5] [--seconds 3] [--snapshot-mb 100]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.store_kv import _drive, _pct, _puts
from kvproto import kvrpcpb as kv
from kvproto.pd_client import open_pd_client
from kvproto.rpc import connect
from shardkv.local_cluster import LocalCluster, leader_context, wait_for_voters

SNAPSHOT_LINE = re.compile(rb"snapshot \d+/\d+ sent to store \d+: (\d+) bytes in ([0-9.]+) s")


async def throughput(root: Path, stores: int, args: argparse.Namespace) -> list[tuple]:
    cluster = LocalCluster(root, stores=stores, pd_flags={"--max-replicas": str(stores)})
    rows = []
    try:
        await cluster.start()
        async with open_pd_client([cluster.pd_address]) as pd:
            with trio.fail_after(120):
                await cluster.wait_ready(pd, min_stores=stores)
                await wait_for_voters(pd, stores)
            ctx, address = await leader_context(pd)
        async with connect(address) as conn:
            for tasks in [int(x) for x in args.tasks.split(",")]:
                tputs, p50s = [], []
                for _ in range(args.runs):
                    tput, lat = await _drive(conn, tasks, args.seconds, _puts(ctx))
                    tputs.append(tput)
                    p50s.append(_pct(lat, 0.5))
                rows.append((stores, tasks, tputs, p50s))
                print(
                    f"  {stores} store(s) {tasks:3} tasks: {statistics.median(tputs):8,.0f} puts/s",
                    file=sys.stderr,
                )
    finally:
        await cluster.aclose()
    return rows


async def snapshot_speed(root: Path, megabytes: int) -> list[tuple[int, float]]:
    cluster = LocalCluster(
        root,
        stores=3,
        pd_flags={
            "--max-replicas": "3",
            "--region-max-size": "4GiB",
            "--region-max-keys": "10000000",
        },
    )
    value = b"s" * (64 << 10)
    try:
        await cluster.start_pd()  # the PD, then one store alone
        await cluster.start_store(1)
        async with open_pd_client([cluster.pd_address]) as pd:
            with trio.fail_after(120):
                await cluster.wait_ready(pd, min_stores=1)
            ctx, address = await leader_context(pd)
            async with connect(address) as conn:
                batch = 16
                for i in range(0, megabytes * 16, batch):
                    pairs = tuple((b"snap%08d" % (i + j), value) for j in range(batch))
                    r = await conn.call(kv.RawBatchPutRequest(ctx, pairs))
                    assert r == kv.RawWriteResponse(), r
            print(f"  loaded {megabytes} MB; starting two more stores", file=sys.stderr)
            await cluster.start_store(2)
            await cluster.start_store(3)
            with trio.fail_after(600):
                await wait_for_voters(pd, 3)
        log = (root / "logs" / "store-1.log").read_bytes()
        return [(int(b), float(t)) for b, t in SNAPSHOT_LINE.findall(log)]
    finally:
        await cluster.aclose()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        one = await throughput(Path(d) / "one", 1, args)
        three = await throughput(Path(d) / "three", 3, args)
        snaps = await snapshot_speed(Path(d) / "snap", args.snapshot_mb)
    print()
    runs = f"median of {args.runs} runs x {args.seconds}s"
    print(f"replication: durable puts of 100-byte values, {runs}")
    one_head = f"{'1 store puts/s':>14} {'p50 ms':>7}"
    three_head = f"{'3 replicas puts/s':>17} {'p50 ms':>7}"
    print(f"{'tasks':>5} | {one_head} | {three_head} | ratio")
    print("-" * 72)
    for (_, tasks, t1, l1), (_, _, t3, l3) in zip(one, three, strict=True):
        m1, m3 = statistics.median(t1), statistics.median(t3)
        print(
            f"{tasks:5} | {m1:14,.0f} {statistics.median(l1) * 1000:7.2f} | "
            f"{m3:17,.0f} {statistics.median(l3) * 1000:7.2f} | {m3 / m1:5.2f}"
        )
    print()
    print(f"snapshot transfer of a {args.snapshot_mb} MB region to each new replica")
    for nbytes, seconds in snaps:
        mb = nbytes / 1e6
        print(f"  {mb:8.1f} MB in {seconds:6.2f} s = {mb / max(seconds, 1e-9):6.1f} MB/s")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tasks", default="1,16,64,256")
    parser.add_argument("--snapshot-mb", type=int, default=100)
    parser.add_argument("--dir", default=None, help="where the data directories go")
    trio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()

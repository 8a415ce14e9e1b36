"""Throughput and latency of one store: puts and gets of 100-byte values.

A PD and one store run as separate processes (`shardkv pd`, `shardkv
store`); this process drives them with N concurrent trio tasks sharing one
pipelined connection to the region's leader (raw KV RPC, so the figures are
the store's, not the client library's). Each configuration runs `--runs`
times for `--seconds`; the table shows medians (and min-max).

    python3 benchmarks/store_kv.py [--runs 5] [--seconds 3] [--tasks 1,16,64,256]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvproto import kvrpcpb as kv
from kvproto.pd_client import open_pd_client
from kvproto.rpc import RpcConnection, connect
from shardkv.local_cluster import LocalCluster, leader_context

VALUE = b"v" * 100


async def _drive(
    conn: RpcConnection,
    tasks: int,
    seconds: float,
    make: Callable[[int, int], object],
) -> tuple[float, list[float]]:
    """Run `tasks` loops for `seconds`; returns (ops/s, latencies in s)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    errors = 0

    async def loop(t: int) -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            r = await conn.call(make(t, i))
            latencies.append(time.perf_counter() - started)
            if getattr(r, "region_error", None) or getattr(r, "error", None):
                errors += 1
            i += 1

    started = time.perf_counter()
    async with trio.open_nursery() as n:
        for t in range(tasks):
            n.start_soon(loop, t)
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    return len(latencies) / elapsed, latencies


@contextlib.contextmanager
def _workdir(keep: str | None, name: str) -> Iterator[str]:
    """A fresh directory: under `keep` (kept, logs included) or temporary."""
    if keep is not None:
        path = Path(keep) / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        yield str(path)
        return
    with tempfile.TemporaryDirectory() as d:
        yield d


def _puts(ctx: kv.Context) -> Callable[[int, int], object]:
    return lambda t, i: kv.RawPutRequest(ctx, b"k%03d-%08d" % (t, i), VALUE)


def _gets(ctx: kv.Context) -> Callable[[int, int], object]:
    return lambda t, i: kv.RawGetRequest(ctx, b"k%06d" % ((t * 7919 + i) % 1000))


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


async def bench(args: argparse.Namespace) -> None:
    tasks_list = [int(x) for x in args.tasks.split(",")]
    rows: list[tuple[str, str, int, list[float], list[float]]] = []
    for durable in (True, False):
        with _workdir(args.dir, "durable" if durable else "nosync") as d:
            cluster = LocalCluster(
                Path(d), stores=1, store_flags={"--sync": "true" if durable else "false"}
            )
            try:
                await cluster.start()
                async with open_pd_client([cluster.pd_address]) as pd:
                    with trio.fail_after(60):
                        await cluster.wait_ready(pd)
                async with open_pd_client([cluster.pd_address]) as pd:
                    ctx, address = await leader_context(pd)
                async with connect(address) as conn:
                    # Warm up (and fill the keys the gets read).
                    for i in range(1000):
                        await conn.call(kv.RawPutRequest(ctx, b"k%06d" % i, VALUE))
                    for op in ("put", "get"):
                        for tasks in tasks_list:
                            tputs: list[float] = []
                            p50s: list[float] = []
                            make = _puts(ctx) if op == "put" else _gets(ctx)
                            for _ in range(args.runs):
                                tput, lat = await _drive(conn, tasks, args.seconds, make)
                                tputs.append(tput)
                                p50s.append(_pct(lat, 0.5))
                            mode = "durable" if durable else "no fsync"
                            rows.append((op, mode, tasks, tputs, p50s))
                            print(
                                f"  {op:3} {mode:8} {tasks:3} tasks: "
                                f"{statistics.median(tputs):9,.0f} ops/s  "
                                f"p50 {statistics.median(p50s) * 1000:6.2f} ms",
                                file=sys.stderr,
                            )
            finally:
                await cluster.aclose()
    print()
    print(f"store_kv: 100-byte values, one store, median of {args.runs} runs x {args.seconds}s")
    head = f"{'op':4} {'mode':9} {'tasks':>5} | {'ops/s median':>12} {'(min - max)':>21}"
    print(f"{head} | {'p50 ms':>7}")
    print("-" * 72)
    for op, mode, tasks, tputs, p50s in rows:
        print(
            f"{op:4} {mode:9} {tasks:5} | {statistics.median(tputs):12,.0f} "
            f"({min(tputs):8,.0f} - {max(tputs):8,.0f}) | {statistics.median(p50s) * 1000:7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tasks", default="1,16,64,256")
    parser.add_argument(
        "--dir", default=None, help="keep the data directories and logs here (default: a tmp dir)"
    )
    trio.run(bench, parser.parse_args())


if __name__ == "__main__":
    main()

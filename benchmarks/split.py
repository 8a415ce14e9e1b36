"""Loading a cluster that starts as one region: regions and write throughput
over time while splits happen.

Three stores (three replicas), tiny split thresholds (`--region-max-keys`),
`--tasks` client tasks writing batches of `--batch` keys through the smart
client until `--keys` keys are written or `--max-seconds` pass. Prints a
table per second (keys written, keys/s, regions at the PD) and saves an SVG
chart under benchmarks/results/.

    python3 benchmarks/split.py [--keys 1000000] [--max-seconds 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import client
from kvproto.pd_client import open_pd_client
from shardkv.local_cluster import LocalCluster

RESULTS = Path(__file__).resolve().parent / "results"


def svg_chart(
    path: Path, title: str, xs: list[float], series: list[tuple[str, list[float], str]]
) -> None:
    """A dependency-free line chart: one y axis per series, scaled to fit."""
    w, h, pad = 800, 400, 50
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            'font-family="sans-serif" font-size="12">'
        ),
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="15">{title}</text>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">seconds</text>',
    ]
    x_max = max(xs) if xs else 1.0
    for k, (name, ys, color) in enumerate(series):
        y_max = max(ys) if ys and max(ys) > 0 else 1.0
        points = " ".join(
            f"{pad + (x / x_max) * (w - 2 * pad):.1f},{h - pad - (y / y_max) * (h - 2 * pad):.1f}"
            for x, y in zip(xs, ys, strict=True)
        )
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        label = f"{name} (max {y_max:,.0f})"
        parts.append(f'<text x="{pad + 10}" y="{45 + 16 * k}" fill="{color}">{label}</text>')
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        cluster = LocalCluster(
            Path(d),
            stores=3,
            pd_flags={"--region-max-keys": str(args.region_max_keys), "--region-max-size": "1GiB"},
            store_flags={"--split-check-interval": "2s"},
        )
        rows: list[tuple[float, int, float, int]] = []
        try:
            await cluster.start()
            async with (
                open_pd_client([cluster.pd_address]) as pd,
                client.connect([cluster.pd_address], timeout=60) as kv,
            ):
                with trio.fail_after(120):
                    await cluster.wait_ready(pd)
                written = 0
                next_key = 0
                started = time.perf_counter()
                deadline = started + args.max_seconds
                value = b"v" * args.value_size

                async def writer() -> None:
                    nonlocal written, next_key
                    while next_key < args.keys and time.perf_counter() < deadline:
                        lo = next_key
                        next_key += args.batch
                        await kv.batch_put(
                            [
                                (b"key%09d" % i, value)
                                for i in range(lo, min(lo + args.batch, args.keys))
                            ]
                        )
                        written += min(args.batch, args.keys - lo)

                async def sampler(done: trio.Event) -> None:
                    last = 0
                    while not done.is_set():
                        with trio.move_on_after(1.0):
                            await done.wait()
                        t = time.perf_counter() - started
                        regions = len(await pd.scan_regions(b"", b"", 0))
                        rate = (written - last) / 1.0
                        last = written
                        rows.append((t, written, rate, regions))
                        print(
                            f"  {t:6.1f} s {written:9,} keys {rate:9,.0f}/s {regions:4} regions",
                            file=sys.stderr,
                        )

                done = trio.Event()
                async with trio.open_nursery() as n:
                    n.start_soon(sampler, done)
                    async with trio.open_nursery() as writers:
                        for _ in range(args.tasks):
                            writers.start_soon(writer)
                    done.set()
                elapsed = time.perf_counter() - started
        finally:
            await cluster.aclose()
    print()
    print(
        f"split: {written:,} keys ({args.value_size}-byte values) in {elapsed:.1f} s = "
        f"{written / elapsed:,.0f} keys/s; {rows[-1][3] if rows else 0} regions at the end "
        f"(region_max_keys {args.region_max_keys:,}, 3 stores, 3 replicas)"
    )
    print(f"{'t (s)':>6} {'keys':>10} {'keys/s':>9} {'regions':>8}")
    for t, total, rate, regions in rows:
        print(f"{t:6.1f} {total:10,} {rate:9,.0f} {regions:8}")
    chart = RESULTS / "split.svg"
    svg_chart(
        chart,
        "loading one region: write rate and region count",
        [r[0] for r in rows],
        [
            ("keys/s", [r[2] for r in rows], "#1f77b4"),
            ("regions", [float(r[3]) for r in rows], "#d62728"),
        ],
    )
    print(f"chart: {chart}")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--region-max-keys", type=int, default=50_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--dir", default=None, help="where the data directories go")
    trio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()

"""Large values: kept in kv/, or stored apart in blob files (issue 16).

For each value size (1 KiB, 64 KiB and 1 MiB by default) and each way of
keeping values, a fresh 3-store cluster with three replicas takes
`--tasks` writers putting distinct keys (about `--mb` MB, at least
`--min-ops` puts), then one overwrite of every key, then a single client's
gets. "in kv/" runs the stores with `--large-value-threshold 0` (LMDB holds
every value, in overflow pages); "apart" with a threshold of 512 bytes and blob files of 8 MiB
(every value of the run goes to a blob file; the store's default is 64 KiB,
so of these sizes only 1 MiB values would go apart). Printed per size and
mode: put throughput (first pass), the median put and get latency, and the
time of a keys-only scan of every key, and the
bytes on disk after the overwrites, per store: kv/ and blobs/ (raft/ not
counted: both modes log the same entries). Each cell is the median of
`--runs` runs; every process (PD, stores, this driver) shares this machine.

    python3 benchmarks/values.py [--sizes 1024,65536,1048576] [--mb 64] [--runs 3]

Its last line: `values: apart/kv throughput 1KiB X, 64KiB Y, 1MiB Z; kv/ size ...`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import client
from kvproto.pd_client import open_pd_client
from shardkv.local_cluster import LocalCluster, wait_replicated

MODES = {"in kv/": "0", "apart": "512"}


@dataclass(slots=True)
class Result:
    mb_per_s: float
    ops_per_s: float
    put_p50_ms: float
    get_p50_ms: float
    keys_scan_ms: float
    kv_bytes: int
    blob_bytes: int


def _size_name(n: int) -> str:
    return f"{n >> 20}MiB" if n >= 1 << 20 else f"{n >> 10}KiB"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


async def one_run(root: Path, size: int, threshold: str, args: argparse.Namespace) -> Result:
    n = max(args.min_ops, args.mb * 1_000_000 // size)
    cluster = LocalCluster(
        root,
        stores=3,
        pd_flags={"--max-replicas": "3"},
        store_flags={
            "--large-value-threshold": threshold,
            # Collect the overwritten values' files within the run.
            "--blob-gc-interval": "1s",
            "--kv-sync-interval": "1s",
            "--blob-file-size": "8MiB",
        },
    )
    try:
        await cluster.start()
        async with open_pd_client([cluster.pd_address]) as pd:
            with trio.fail_after(120):
                await cluster.wait_ready(pd)
                await wait_replicated(pd, 3)
        async with client.connect([cluster.pd_address], timeout=60) as kv:
            latencies: list[float] = []

            async def writers(tag: bytes) -> float:
                value = tag * size

                async def task(t: int) -> None:
                    for i in range(t, n, args.tasks):
                        started = time.perf_counter()
                        await kv.put(b"v%08d" % i, value)
                        latencies.append(time.perf_counter() - started)

                started = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for t in range(args.tasks):
                        nursery.start_soon(task, t)
                return time.perf_counter() - started

            took = await writers(b"a")
            put_p50 = statistics.median(latencies)
            await writers(b"b")
            gets: list[float] = []
            for i in range(0, n, max(1, n // 200)):
                started = time.perf_counter()
                got = await kv.get(b"v%08d" % i)
                gets.append(time.perf_counter() - started)
                assert got is not None and len(got) == size and got[:1] == b"b"
            # Every key, without values: where kv/'s size shows.
            scans = []
            for _ in range(5):
                started = time.perf_counter()
                found = await kv.scan(b"v", b"w", limit=n + 1, keys_only=True)
                scans.append(time.perf_counter() - started)
                assert len(found) == n, (len(found), n)
        # Let the collectors run (interval 1 s) and kv/ sync before measuring.
        await trio.sleep(3)
        stores = [spec.data_dir for spec in cluster.store_specs]
        return Result(
            mb_per_s=n * size / took / 1e6,
            ops_per_s=n / took,
            put_p50_ms=put_p50 * 1e3,
            get_p50_ms=statistics.median(gets) * 1e3,
            keys_scan_ms=statistics.median(scans) * 1e3,
            kv_bytes=sum(_dir_bytes(d / "kv") for d in stores) // len(stores),
            blob_bytes=sum(_dir_bytes(d / "blobs") for d in stores) // len(stores),
        )
    finally:
        await cluster.aclose()


def _median(results: list[Result]) -> Result:
    return Result(
        *(statistics.median(getattr(r, f) for r in results) for f in Result.__slots__)  # type: ignore[attr-defined]
    )


async def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    table: dict[tuple[int, str], Result] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for size in sizes:
            # The modes take turns, so a slow spell of the machine hits both.
            runs: dict[str, list[Result]] = {mode: [] for mode in MODES}
            for r in range(args.runs):
                for mode, threshold in MODES.items():
                    root = Path(d) / f"{size}-{threshold}-{r}"
                    runs[mode].append(await one_run(root, size, threshold, args))
                    print(
                        f"  {_size_name(size)} {mode} run {r + 1}: {runs[mode][-1]}",
                        file=sys.stderr,
                    )
            for mode in MODES:
                table[size, mode] = _median(runs[mode])
    print()
    print(
        f"values: 3 stores, 3 replicas, {args.tasks} writers; medians of {args.runs} runs; "
        "disk bytes per store after one overwrite of every key"
    )
    head = (
        f"{'value':>7} {'kept':<7} {'MB/s':>7} {'puts/s':>8} {'put p50':>8} {'get p50':>8} "
        f"{'keys scan':>10} {'kv/ MB':>8} {'blobs MB':>9}"
    )
    print(head)
    print("-" * len(head))
    for size in sizes:
        for mode in MODES:
            r = table[size, mode]
            print(
                f"{_size_name(size):>7} {mode:<7} {r.mb_per_s:7.1f} {r.ops_per_s:8.0f} "
                f"{r.put_p50_ms:6.1f}ms {r.get_p50_ms:6.2f}ms {r.keys_scan_ms:8.1f}ms "
                f"{r.kv_bytes / 1e6:8.1f} "
                f"{r.blob_bytes / 1e6:9.1f}"
            )
    ratios = ", ".join(
        f"{_size_name(s)} {table[s, 'apart'].mb_per_s / table[s, 'in kv/'].mb_per_s:.2f}"
        for s in sizes
    )
    kv_sizes = ", ".join(
        f"{_size_name(s)} {table[s, 'in kv/'].kv_bytes / 1e6:.0f} MB -> "
        f"{table[s, 'apart'].kv_bytes / 1e6:.1f} MB"
        for s in sizes
    )
    print(f"values: apart/kv throughput {ratios}; kv/ size {kv_sizes}")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1024,65536,1048576", help="value sizes in bytes")
    parser.add_argument("--mb", type=int, default=64, help="MB written per pass (default: 64)")
    parser.add_argument("--min-ops", type=int, default=100, help="puts per pass at least")
    parser.add_argument("--tasks", type=int, default=8, help="concurrent writers (default: 8)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (default: 3)")
    parser.add_argument("--dir", default=None, help="where the data directories go")
    trio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()

"""Backup and restore speed (issue 16).

A 3-store cluster with three replicas is loaded with `--mb` MB of
`--value-size`-byte values (the PD's region size `--region-mb`, so the data
makes several regions); then `shardkv ctl backup` (a child process, as an
operator runs it) copies it to a directory while the cluster is idle; then
`shardkv restore` brings it back as a new cluster (a new PD, the restore
store, then two more stores), timed until its data is loaded and until every
region has three voters again. Every process (PDs, stores, the backup tool,
this driver) shares this machine.

    python3 benchmarks/backup.py [--mb 100] [--value-size 1024] [--region-mb 16]

Its last line: `backup: N MB in S s = R MB/s; restore: load L s, 3 replicas in T s`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import client
from kvproto.pd_client import open_pd_client
from kvproto.rpc import RpcCallError
from shardkv.local_cluster import LocalCluster, wait_replicated

RESTORED_LINE = re.compile(rb"restored \d+ keys .* in ([0-9.]+) s;")


async def load(cluster: LocalCluster, megabytes: int, value_size: int) -> int:
    """Write the data with the smart client, 8 tasks of batches; the keys."""
    n = megabytes * 1_000_000 // value_size
    value = b"b" * value_size
    batch = max(1, (512 << 10) // value_size)
    async with client.connect([cluster.pd_address], timeout=60) as kv:

        async def task(t: int) -> None:
            for lo in range(t * batch, n, 8 * batch):
                pairs = [(b"bench%010d" % i, value) for i in range(lo, min(lo + batch, n))]
                await kv.batch_put(pairs)

        async with trio.open_nursery() as nursery:
            for t in range(8):
                nursery.start_soon(task, t)
    return n


async def run_backup(cluster: LocalCluster, out: Path) -> tuple[float, dict[str, object]]:
    argv = [cluster.python, "-m", "shardkv", "ctl", "backup", "--quiet"]
    argv += ["--pd", cluster.pd_address, "--to", str(out)]
    started = time.monotonic()
    await trio.run_process(argv, stdout=sys.stderr)
    took = time.monotonic() - started
    return took, json.loads((out / "manifest.json").read_text())


async def restore(root: Path, backup: Path, region_mb: int) -> tuple[float, float, int]:
    """(load seconds as restore logged them, seconds until 3 replicas of
    every region, regions)."""
    cluster = LocalCluster(root, stores=3, pd_flags=_pd_flags(region_mb))
    cluster.store_specs[0].child.args[0:1] = ["restore", "--from", str(backup)]
    try:
        started = time.monotonic()
        await cluster.start_pd()
        await cluster.start_store(1)
        async with open_pd_client([cluster.pd_address]) as pd:
            with trio.fail_after(900):
                while True:
                    try:
                        if await pd.is_bootstrapped():
                            break
                    except RpcCallError:
                        pass
                    await trio.sleep(0.1)
                await cluster.start_store(2)
                await cluster.start_store(3)
                await cluster.wait_ready(pd)
                await wait_replicated(pd, 3)
                took = time.monotonic() - started
                regions = len(await pd.scan_regions(b"", b"", 0))
        log = (root / "logs" / "store-1.log").read_bytes()
        m = RESTORED_LINE.search(log)
        return (float(m.group(1)) if m else float("nan")), took, regions
    finally:
        await cluster.aclose()


def _pd_flags(region_mb: int) -> dict[str, str]:
    return {
        "--max-replicas": "3",
        "--region-max-size": f"{region_mb}MiB",
        "--region-max-keys": "10000000",
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        root = Path(d)
        source = LocalCluster(root / "source", stores=3, pd_flags=_pd_flags(args.region_mb))
        try:
            await source.start()
            async with open_pd_client([source.pd_address]) as pd:
                with trio.fail_after(120):
                    await source.wait_ready(pd)
                keys = await load(source, args.mb, args.value_size)
                with trio.fail_after(600):
                    await wait_replicated(pd, 3)
            print(f"  loaded {keys} keys; backing up", file=sys.stderr)
            took, manifest = await run_backup(source, root / "backup")
        finally:
            await source.aclose()
        print("  restoring", file=sys.stderr)
        load_s, replicated_s, regions_after = await restore(
            root / "target", root / "backup", args.region_mb
        )
    nbytes = int(str(manifest["total_bytes"]))
    regions = manifest["regions"]
    assert isinstance(regions, list)
    mb = nbytes / 1e6
    print()
    print(f"backup of {manifest['total_keys']} keys of {args.value_size} bytes, 3 stores")
    print(f"{'what':<28} {'MB':>8} {'regions':>8} {'seconds':>8} {'MB/s':>8}")
    print("-" * 64)
    print(f"{'backup (ctl backup)':<28} {mb:8.1f} {len(regions):8} {took:8.2f} {mb / took:8.1f}")
    print(f"{'restore: load into kv/':<28} {mb:8.1f} {'':>8} {load_s:8.2f} {mb / load_s:8.1f}")
    print(
        f"{'restore: 3 replicas':<28} {mb:8.1f} {regions_after:8} {replicated_s:8.2f} "
        f"{mb / replicated_s:8.1f}"
    )
    print(
        f"backup: {mb:.0f} MB in {took:.1f} s = {mb / took:.1f} MB/s; "
        f"restore: load {load_s:.1f} s, 3 replicas in {replicated_s:.1f} s"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100, help="MB of data (default: 100)")
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--region-mb", type=int, default=16, help="PD region-max-size in MiB")
    parser.add_argument("--dir", default=None, help="where the data directories go")
    trio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()

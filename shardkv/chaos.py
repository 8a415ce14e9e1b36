"""`shardkv chaos`: a nemesis on a real local cluster, and a check of what
its clients saw.

It starts a PD and --stores stores on loopback (`LocalCluster`), runs
--clients clients putting unique values to, deleting and reading a small
set of keys, every call recorded with its invoke and completion times in a
`History`, and meanwhile injects faults on a seeded schedule:

* kill: SIGKILL a store, restart it 1-4 s later;
* pause: SIGSTOP a store for 1-4 s (alive but silent: its connections stay
  open and nothing answers, as with a long GC pause or a frozen VM);
* transfer: an admin transfer-leader operator on a random region;
* split: an admin split of a random region at a random key.

Then it heals (every store running), waits for every region to have its
voters and a leader that serves (`--recovery-timeout`), reads every key,
and checks the history per key for linearizability (shardkv.check: an
acknowledged write must stay, no write may apply twice, no read may be
stale); then it stops the cluster and compares every region's copies in
the stores' data directories (those at the region's highest applied index
must hold the same data). It prints a summary and exits 0 if all holds, 1 on a violation, 2
if the cluster did not recover. `--out FILE` writes the history and the
fault log as JSON.

Not built yet (issue 15): network partitions (nftables in a network
namespace), disk faults, faults on a cluster started elsewhere (--pd).
The replica comparison needs the server extra (it reads LMDB).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio

__all__ = ["FAULTS", "add_parser", "run"]

log = logging.getLogger(__name__)

FAULTS: Final = ("kill", "pause", "transfer", "split")
PROG: Final = "shardkv chaos"

DESCRIPTION: Final = (__doc__ or "").split("\n\n", 1)[1]


@dataclass(slots=True)
class Fault:
    at: float  # seconds since the clients started
    kind: str
    target: str
    outcome: str = "applied"
    healed_at: float | None = None


@dataclass(slots=True)
class Run:
    faults: list[Fault]
    outcomes: Counter[str]
    recovery_seconds: float | None = None
    replicas: str = ""  # the replica comparison's summary


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """One store's copy of a region, read from its data directory."""

    store: int
    region_id: int
    version: int  # the region epoch's version (splits)
    applied_index: int
    checksum: int  # CRC-32 of its data, keys and values in order


def replica_mismatches(replicas: Sequence[ReplicaState]) -> tuple[list[str], int]:
    """Per region, the copies at its newest epoch version and its highest
    applied index must hold the same data. Returns the regions whose copies
    differ (described) and how many copies were behind (not compared)."""
    by_region: dict[int, list[ReplicaState]] = {}
    for r in replicas:
        by_region.setdefault(r.region_id, []).append(r)
    differ: list[str] = []
    behind = 0
    for region_id, copies in sorted(by_region.items()):
        newest = max((c.version, c.applied_index) for c in copies)
        current = [c for c in copies if (c.version, c.applied_index) == newest]
        behind += len(copies) - len(current)
        if len({c.checksum for c in current}) > 1:
            sums = ", ".join(f"store {c.store}: {c.checksum:08x}" for c in current)
            differ.append(
                f"region {region_id} at applied index {newest[1]}: copies differ ({sums})"
            )
    return differ, behind


def read_replicas(data_dirs: Sequence[tuple[int, Path]]) -> list[ReplicaState]:
    """Every region copy in the (stopped) stores' data directories."""
    import zlib

    from store_node import keys
    from store_node.bootstrap import load_regions
    from store_node.engine import Engine

    out: list[ReplicaState] = []
    for store, data_dir in data_dirs:
        engine = Engine(data_dir)
        try:
            for region, apply_state in load_regions(engine):
                crc = 0
                for k, v in engine.kv_items(keys.DATA_DB, region.start_key, region.end_key):
                    crc = zlib.crc32(v, zlib.crc32(k, crc))
                out.append(
                    ReplicaState(
                        store, region.id, region.epoch.version, apply_state.applied_index, crc
                    )
                )
        finally:
            engine.close()
    return out


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "chaos",
        help="inject faults into a local cluster and check its clients' history",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stores", type=int, default=3, help="stores (default: 3)")
    p.add_argument("--seconds", type=float, default=30.0, help="of faults (default: 30)")
    p.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma separated, of: {', '.join(FAULTS)} (default: all)",
    )
    p.add_argument("--seed", type=int, default=None, help="the fault schedule's seed")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    p.add_argument("--keys", type=int, default=12, help="keys the clients use (default: 12)")
    p.add_argument(
        "--recovery-timeout",
        type=float,
        default=60.0,
        help="seconds the healed cluster gets to serve again (default: 60)",
    )
    p.add_argument("--out", metavar="FILE", help="write the history and the faults as JSON")
    p.add_argument("--data-dir", metavar="DIR", help="keep the cluster here (default: temporary)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or not faults:
        print(f"{PROG}: unknown faults {unknown}; choose from {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    if args.stores < 1 or args.clients < 1 or args.keys < 1 or not args.seconds > 0:
        print(
            f"{PROG}: --stores, --clients, --keys and --seconds must be positive", file=sys.stderr
        )
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    if args.data_dir:
        root = Path(args.data_dir)
        if root.exists() and any(root.iterdir()):
            # The history starts from empty keys: old data would read as a violation.
            print(f"{PROG}: --data-dir {root} must be new or empty", file=sys.stderr)
            return 2
        return trio.run(_main, root, args, faults, seed)
    with tempfile.TemporaryDirectory(prefix="shardkv-chaos-") as d:
        return trio.run(_main, Path(d), args, faults, seed)


async def _main(root: Path, args: argparse.Namespace, faults: Sequence[str], seed: int) -> int:
    import client
    from client.errors import ClientError, UndeterminedError
    from kvproto.pd_client import open_pd_client
    from shardkv.check.explain import describe_check_result
    from shardkv.check.history import Delete, Get, History, Outcome, Put
    from shardkv.check.linearizability import check
    from shardkv.local_cluster import LocalCluster, wait_replicated

    rng = random.Random(seed)
    replicas = min(3, args.stores)
    cluster = LocalCluster(root, stores=args.stores, pd_flags={"--max-replicas": str(replicas)})
    keys = [b"chaos-%03d" % i for i in range(args.keys)]
    history = History(keys)
    state = Run([], Counter())
    print(f"{PROG}: seed {seed}, {args.stores} stores, faults {','.join(faults)}", file=sys.stderr)
    try:
        await cluster.start()
        async with open_pd_client([cluster.pd_address]) as pd:
            with trio.move_on_after(60) as starting:
                await cluster.wait_ready(pd)
                await wait_replicated(pd, replicas)
        if starting.cancelled_caught:
            print(
                f"{PROG}: the cluster was not serving within 60 s; logs in {root / 'logs'}",
                file=sys.stderr,
            )
            return 2
        async with client.connect([cluster.pd_address], timeout=5.0) as kv:
            t0 = trio.current_time()

            async def worker(cid: int) -> None:
                crng = random.Random(rng.random())
                n = 0
                while True:
                    key = crng.choice(keys)
                    r = crng.random()
                    call: Any
                    if r < 0.45:
                        n += 1
                        call = Put(key, b"c%d-%d" % (cid, n))
                    elif r < 0.55:
                        call = Delete(key)
                    else:
                        call = Get(key)
                    op_id = history.invoke(cid, call, trio.current_time() - t0)
                    try:
                        result: object = None
                        if isinstance(call, Put):
                            await kv.put(call.key, call.value)
                        elif isinstance(call, Delete):
                            await kv.delete(call.key)
                        else:
                            result = await kv.get(call.key)
                    except UndeterminedError:
                        history.complete(op_id, Outcome.UNKNOWN, None, trio.current_time() - t0)
                        state.outcomes[f"{type(call).__name__} unknown"] += 1
                    except ClientError as e:
                        history.complete(op_id, Outcome.FAILED, None, trio.current_time() - t0)
                        state.outcomes[f"{type(call).__name__} failed ({type(e).__name__})"] += 1
                    else:
                        history.complete(op_id, Outcome.OK, result, trio.current_time() - t0)
                        state.outcomes[f"{type(call).__name__} ok"] += 1

            async with trio.open_nursery() as nursery:
                for cid in range(args.clients):
                    nursery.start_soon(worker, cid)
                nursery.start_soon(_nemesis, cluster, faults, rng, state, t0)
                nursery.start_soon(_progress, state, t0, args.seconds)
                await trio.sleep(args.seconds)
                nursery.cancel_scope.cancel()
            # Calls cut off here stay pending: the checker counts them UNKNOWN.
            await _heal(cluster, state, t0)
            healed = trio.current_time()
            async with open_pd_client([cluster.pd_address]) as pd:
                with trio.move_on_after(args.recovery_timeout) as recovering:
                    await cluster.wait_ready(pd)
                    await wait_replicated(pd, replicas)
            if recovering.cancelled_caught:
                _report(state, None, args, seed)
                print(
                    f"{PROG}: the cluster did not recover within "
                    f"{args.recovery_timeout:g} s; logs in {root / 'logs'}",
                    file=sys.stderr,
                )
                _write(args.out, history, state, seed, verdict="not recovered")
                return 2
            state.recovery_seconds = trio.current_time() - healed
            for key in keys:  # the final reads are part of the history
                op_id = history.invoke(-1, Get(key), trio.current_time() - t0)
                try:
                    value = await kv.get(key, timeout=10.0)
                except ClientError:
                    history.complete(op_id, Outcome.FAILED, None, trio.current_time() - t0)
                    continue
                history.complete(op_id, Outcome.OK, value, trio.current_time() - t0)
        # Every copy of a region at the same applied index holds the same
        # data: read from the stores' data directories once they stopped
        # (after a quiet moment for followers to catch up).
        await trio.sleep(3.0)
        await cluster.aclose()
        copies = await trio.to_thread.run_sync(
            read_replicas, [(s.index, s.data_dir) for s in cluster.store_specs]
        )
        differ, behind = replica_mismatches(copies)
        regions = len({c.region_id for c in copies})
        state.replicas = (
            f"{regions} regions, {len(copies)} copies compared, {behind} behind, "
            f"{len(differ)} differing"
        )
        result = check(history)
        ok = result.ok and not differ
        verdict = _report(state, ok, args, seed)
        if not result.ok:
            print(describe_check_result(result), file=sys.stderr)
        for line in differ:
            print(f"{PROG}: {line}", file=sys.stderr)
        _write(args.out, history, state, seed, verdict=verdict)
        return 0 if ok else 1
    finally:
        await cluster.aclose()


async def _nemesis(
    cluster: Any, faults: Sequence[str], rng: random.Random, state: Run, t0: float
) -> None:
    from client.admin_http import AdminError, PdAdminClient

    admin = PdAdminClient(cluster.http_url, timeout=5.0)
    stores = list(range(1, len(cluster.store_specs) + 1))
    # Every kind in turn, in a seeded order: a short run still covers each.
    order = list(faults)
    rng.shuffle(order)
    # The stores too: every one is hit before any is hit twice.
    rng.shuffle(stores)
    victims = itertools.cycle(stores)
    for turn in itertools.count():
        await trio.sleep(rng.uniform(1.0, 3.0))
        kind = order[turn % len(order)]
        at = trio.current_time() - t0
        if kind in ("kill", "pause"):
            index = next(victims)
            spec = cluster.store_specs[index - 1]
            if not spec.child.running:
                continue
            fault = Fault(at, kind, f"store process {index}")
            state.faults.append(fault)
            if kind == "kill":
                await cluster.kill_store(index)
            else:
                cluster.signal_store(index, signal.SIGSTOP)
            await trio.sleep(rng.uniform(1.0, 4.0))
            if kind == "kill":
                await cluster.start_store(index)
            else:
                cluster.signal_store(index, signal.SIGCONT)
            fault.healed_at = trio.current_time() - t0
            continue
        try:
            doc = await trio.to_thread.run_sync(admin.get, "/regions")
            regions = [r for r in doc["regions"] if r.get("leader")]
            if not regions:
                continue
            region = rng.choice(regions)
            if kind == "transfer":
                others = [
                    p["store_id"]
                    for p in region["peers"]
                    if p["store_id"] != region["leader"]["store_id"]
                ]
                if not others:
                    continue
                to = rng.choice(others)
                body: dict[str, Any] = {
                    "name": "transfer-leader",
                    "region_id": region["id"],
                    "to_store_id": to,
                }
                target = f"region {region['id']} to store {to}"
            else:
                key = b"chaos-%03d-%d" % (rng.randrange(1000), rng.randrange(10))
                body = {
                    "name": "split-region",
                    "region_id": region["id"],
                    "keys": [{"hex": key.hex()}],
                }
                target = f"region {region['id']} at {key.decode()}"
            fault = Fault(at, kind, target)
            state.faults.append(fault)
            await trio.to_thread.run_sync(admin.post, "/operators", body)
        except AdminError as e:  # refused (busy region, key outside it...): noted
            if state.faults and state.faults[-1].at == at:
                state.faults[-1].outcome = f"refused: {str(e)[:80]}"


async def _progress(state: Run, t0: float, seconds: float) -> None:
    while True:
        await trio.sleep(10.0)
        done = sum(state.outcomes.values())
        faults = len(state.faults)
        elapsed = trio.current_time() - t0
        print(
            f"  {elapsed:.0f}/{seconds:g} s: {done:,} operations, {faults} faults",
            file=sys.stderr,
        )


async def _heal(cluster: Any, state: Run, t0: float) -> None:
    for index, spec in enumerate(cluster.store_specs, start=1):
        if spec.child.running:
            cluster.signal_store(index, signal.SIGCONT)
        else:
            await cluster.start_store(index)
    for fault in state.faults:
        if fault.healed_at is None and fault.kind in ("kill", "pause"):
            fault.healed_at = trio.current_time() - t0


def _report(state: Run, ok: bool | None, args: argparse.Namespace, seed: int) -> str:
    verdict = {True: "linearizable", False: "VIOLATION", None: "not recovered"}[ok]
    lines = [f"{PROG}: seed {seed}, {args.seconds:g} s, {args.clients} clients, {args.keys} keys"]
    lines.append("operations:")
    for what, n in sorted(state.outcomes.items()):
        lines.append(f"  {what:<40} {n:>7,}")
    by_kind = Counter(f.kind for f in state.faults)
    refused = Counter(f.kind for f in state.faults if f.outcome != "applied")
    lines.append("faults:")
    for kind in FAULTS:
        if by_kind[kind]:
            extra = f" ({refused[kind]} refused)" if refused[kind] else ""
            lines.append(f"  {kind:<40} {by_kind[kind]:>7}{extra}")
    if state.recovery_seconds is not None:
        lines.append(f"recovery after healing: {state.recovery_seconds:.1f} s")
    if state.replicas:
        lines.append(f"replicas: {state.replicas}")
    lines.append(f"verdict: {verdict}")
    print("\n".join(lines))
    return verdict


def _write(path: str | None, history: Any, state: Run, seed: int, *, verdict: str) -> None:
    if not path:
        return
    ops = []
    for op in history.operations():
        ops.append(
            {
                "id": op.op_id,
                "client": op.client,
                "call": type(op.call).__name__,
                "args": {
                    k: (v.hex() if isinstance(v, bytes) else v) for k, v in asdict(op.call).items()
                },
                "invoke": op.invoke,
                "complete": None if op.outcome is None else op.complete,
                "outcome": None if op.outcome is None else op.outcome.name,
                "result": op.result.hex() if isinstance(op.result, bytes) else op.result,
            }
        )
    doc = {
        "seed": seed,
        "verdict": verdict,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "faults": [asdict(f) for f in state.faults],
        "operations": ops,
    }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")

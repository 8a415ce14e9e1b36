"""`shardkv chaos`: a nemesis on a real cluster, and a check of what its
clients saw.

It starts a PD and --stores stores on loopback (or, with --pd, uses a
cluster started elsewhere), runs --clients clients putting unique values
to, deleting and reading a small set of keys, every call recorded with its
invoke and completion times, and meanwhile injects faults on a seeded
schedule, one at a time:

  kill       SIGKILL a store, restart it 1-4 s later
  pause      SIGSTOP a store for 1-4 s (a long GC pause, a frozen VM)
  pd-kill    SIGKILL the PD, restart it 1-4 s later
  partition  2-4 s of, in turn: the busiest leader's store cut off from its peers
             and the PD while clients still reach it; the stores split in
             two; one store heard but not heard; the PD cut off
  transfer   an admin transfer-leader of a random region
  split      an admin split of a random region
  move       a replica moved to another store (or removed and put back)
  disk       a store's disk full for 2-5 s (writes refused, reads go on),
             or a failed Raft-log sync, which must stop the store

Then it heals, waits for every region to have its voters and a leader that
serves (--recovery-timeout), reads every key, and checks the history per
key for linearizability (an acknowledged write must stay, no write may
apply twice, no read may be stale); then it stops the cluster and compares
every region's copies in the stores' data directories (those at the
region's highest applied index must hold the same data). It prints a
summary and exits 0 if all holds, 1 on a violation, 2 if the cluster did
not come up or recover (or on bad usage). --out FILE writes the history
and the fault log as JSON.

Partitions run inside a network namespace the tool makes for itself
(`unshare --net`, nftables rules; never the host's firewall), so they need
Linux, util-linux and nft; without them the default fault list leaves
partitions out. With --pd (a cluster started elsewhere) only transfer,
split and move are used, plus kill and pause with --allow-kill (stores on
this machine, found by their listening ports; a killed store is restarted
by its supervisor), and no replica comparison is made. A soak:
`shardkv chaos --seconds 3600 --out soak.json`.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

from shardkv.chaos import netns
from shardkv.chaos.model import FAULTS, OWN_CLUSTER_FAULTS, PROCESS_FAULTS, Run

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)

PROG: Final = "shardkv chaos"
DESCRIPTION: Final = (__doc__ or "").split("\n\n", 1)[1]
# A cluster started elsewhere, without --allow-kill: nothing is signalled.
FOREIGN_FAULTS: Final = ("transfer", "split", "move")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "chaos",
        help="inject faults into a cluster and check its clients' history",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stores", type=int, default=3, help="stores (default: 3)")
    p.add_argument("--seconds", type=float, default=30.0, help="of faults (default: 30)")
    p.add_argument(
        "--faults",
        default=None,
        help=f"comma separated, of: {', '.join(FAULTS)} (default: every one this machine "
        "and cluster allow)",
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
    p.add_argument(
        "--pd",
        metavar="HOST:PORT[,...]",
        help="use the cluster of this PD instead of starting one (with --pd-http)",
    )
    p.add_argument("--pd-http", metavar="URL", help="that PD's admin HTTP address")
    p.add_argument(
        "--allow-kill",
        action="store_true",
        help="with --pd: also kill and pause its stores (those on this machine)",
    )
    p.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def choose_faults(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The faults to inject, or an error message. The default is every kind
    that can run here: partitions need a network namespace."""
    foreign = bool(args.pd)
    allowed = list(FAULTS)
    if foreign:
        allowed = [*FOREIGN_FAULTS, *(sorted(PROCESS_FAULTS) if args.allow_kill else [])]
    if args.faults is None:
        if "partition" in allowed and not netns.in_namespace():
            why = netns.unavailable()
            if why is not None:
                print(f"{PROG}: no partitions: {why}", file=sys.stderr)
                allowed.remove("partition")
        return allowed, None
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or not faults:
        return [], f"unknown faults {unknown}; choose from {', '.join(FAULTS)}"
    if foreign:
        own = sorted(set(faults) & OWN_CLUSTER_FAULTS)
        if own:
            return [], f"{', '.join(own)} need a cluster this tool starts (not --pd)"
        if set(faults) & PROCESS_FAULTS and not args.allow_kill:
            return [], "kill and pause on a cluster started elsewhere need --allow-kill"
    if "partition" in faults and not netns.in_namespace():
        why = netns.unavailable()
        if why is not None:
            return [], f"cannot make partitions: {why}"
    return faults, None


def _argv(args: argparse.Namespace, faults: Sequence[str], seed: int) -> list[str]:
    """The command line that runs this same run again (in a namespace)."""
    argv = ["chaos", "--stores", str(args.stores), "--seconds", str(args.seconds)]
    argv += ["--faults", ",".join(faults), "--seed", str(seed)]
    argv += ["--clients", str(args.clients), "--keys", str(args.keys)]
    argv += ["--recovery-timeout", str(args.recovery_timeout)]
    if args.out:
        argv += ["--out", str(Path(args.out).absolute())]
    if args.data_dir:
        argv += ["--data-dir", str(Path(args.data_dir).absolute())]
    return argv


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.stores < 1 or args.clients < 1 or args.keys < 1 or not args.seconds > 0:
        return _fail("--stores, --clients, --keys and --seconds must be positive")
    if args.allow_kill and not args.pd:
        return _fail("--allow-kill is for a cluster started elsewhere (--pd)")
    if bool(args.pd) != bool(args.pd_http):
        return _fail("--pd and --pd-http go together")
    faults, error = choose_faults(args)
    if error is not None:
        return _fail(error)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    if "partition" in faults and not netns.in_namespace():
        # Rules only ever go into a namespace of our own: run again in one.
        return netns.run_in_namespace(_argv(args, faults, seed))
    if netns.in_namespace():
        netns.bring_up_loopback()
    if args.pd:
        return trio.run(_main, None, args, faults, seed)
    if args.data_dir:
        root = Path(args.data_dir)
        if root.exists() and any(root.iterdir()):
            # The history starts from empty keys: old data would read as a violation.
            return _fail(f"--data-dir {root} must be new or empty")
        return trio.run(_main, root, args, faults, seed)
    with tempfile.TemporaryDirectory(prefix="shardkv-chaos-") as d:
        return trio.run(_main, Path(d), args, faults, seed)


async def _main(
    root: Path | None, args: argparse.Namespace, faults: Sequence[str], seed: int
) -> int:
    """Own cluster under `root`, or the --pd one when `root` is None."""
    from shardkv.local_cluster import LocalCluster

    cluster = None
    if root is not None:
        partitions = "partition" in faults
        cluster = LocalCluster(
            root,
            stores=args.stores,
            pd_flags={"--max-replicas": str(min(3, args.stores))},
            store_flags={"--enable-failpoints": "true"} if "disk" in faults else {},
            # In our namespace every member gets an address the rules can name.
            hosts=tuple(f"127.0.0.{11 + i}" for i in range(args.stores)) if partitions else (),
            pd_host="127.0.0.2" if partitions else "127.0.0.1",
        )
    try:
        return await _chaos(cluster, args, faults, seed)
    finally:
        if cluster is not None:
            await cluster.aclose()


async def _chaos(cluster: Any, args: argparse.Namespace, faults: Sequence[str], seed: int) -> int:
    import client
    from client.admin_http import PdAdminClient
    from kvproto.pd_client import open_pd_client
    from shardkv.chaos.faults import Nemesis
    from shardkv.chaos.processes import ForeignProcesses, LocalProcesses, Processes
    from shardkv.chaos.replicas import read_replicas, replica_mismatches
    from shardkv.chaos.report import summary, write_json
    from shardkv.chaos.workload import final_reads, worker
    from shardkv.check.explain import describe_check_result
    from shardkv.check.history import History
    from shardkv.check.linearizability import check

    rng = random.Random(seed)
    state = Run([], Counter())
    pd_addresses = [cluster.pd_address] if cluster else args.pd.split(",")
    admin = PdAdminClient(cluster.http_url if cluster else args.pd_http, timeout=5.0)
    processes: Processes = LocalProcesses(cluster) if cluster else ForeignProcesses()
    logs = f"; logs in {cluster.root / 'logs'}" if cluster else ""
    print(f"{PROG}: seed {seed}, faults {','.join(faults)}", file=sys.stderr)
    if cluster is not None:
        await cluster.start()
    replicas = min(3, args.stores)
    if cluster is None:
        replicas = int((await trio.to_thread.run_sync(admin.get, "/config"))["max_replicas"])
    # Keys of this run only: a cluster started elsewhere may hold others.
    prefix = b"chaos-" if cluster else b"chaos-%08x-" % seed
    keys = [prefix + b"%03d" % i for i in range(args.keys)]
    history = History(keys)
    async with open_pd_client(pd_addresses) as pd:
        with trio.move_on_after(60) as starting:
            await _wait_serving(cluster, pd, replicas)
    if starting.cancelled_caught:
        return _fail(f"the cluster was not serving within 60 s{logs}")
    firewall = None
    if "partition" in faults:
        firewall = netns.Firewall()
        await firewall.start()
    async with client.connect(pd_addresses, timeout=5.0) as kv:
        t0 = trio.current_time()
        nemesis = Nemesis(admin, processes, rng, state, t0, cluster, firewall)
        async with trio.open_nursery() as nursery:
            for cid in range(args.clients):
                crng = random.Random(rng.random())
                nursery.start_soon(worker, kv, history, keys, cid, crng, state.outcomes, t0)
            nursery.start_soon(nemesis.run, faults)
            nursery.start_soon(_progress, state, t0, args.seconds)
            await trio.sleep(args.seconds)
            nursery.cancel_scope.cancel()
        await _heal(cluster, processes, nemesis, firewall)
        healed = trio.current_time()
        async with open_pd_client(pd_addresses) as pd:
            with trio.move_on_after(args.recovery_timeout) as recovering:
                await _wait_serving(cluster, pd, replicas)
        header = (
            f"{PROG}: seed {seed}, {args.seconds:g} s, {args.clients} clients, {args.keys} keys"
        )
        if recovering.cancelled_caught:
            print(summary(state, None, header)[0])
            write_json(args.out, history, state, seed, "not recovered")
            return _fail(f"the cluster did not recover within {args.recovery_timeout:g} s{logs}")
        state.recovery_seconds = trio.current_time() - healed
        await final_reads(kv, history, keys, t0)
    differ: list[str] = []
    if cluster is not None:
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
    else:
        state.replicas = "not compared (a cluster started elsewhere)"
    result = check(history)
    ok = result.ok and not differ and not state.violations
    table, verdict = summary(state, ok, header)
    print(table)
    if not result.ok:
        print(describe_check_result(result), file=sys.stderr)
    for line in [*differ, *state.violations]:
        print(f"{PROG}: {line}", file=sys.stderr)
    write_json(args.out, history, state, seed, verdict)
    return 0 if ok else 1


async def _wait_serving(cluster: Any, pd: Any, replicas: int) -> None:
    """Until every region has its voters and a write and a read succeed."""
    from shardkv.local_cluster import wait_replicated

    if cluster is not None:
        await cluster.wait_ready(pd)
    await wait_replicated(pd, replicas)


async def _heal(cluster: Any, processes: Any, nemesis: Any, firewall: Any) -> None:
    """Every process running and unpaused, the network whole, the disks
    well."""
    import signal

    with trio.CancelScope(shield=True):
        if firewall is not None:
            await firewall.heal()
        if cluster is not None:
            await cluster.start_pd()
            for spec in cluster.store_specs:
                if spec.child.running:
                    processes.signal(spec.address, signal.SIGCONT)
                else:
                    await processes.restart(spec.address)
            await nemesis.clear_failpoints()
        else:  # a store we paused; those we killed are their supervisor's
            for address in processes.pids:
                processes.signal(address, signal.SIGCONT)
    for fault in nemesis.state.faults:
        if fault.healed_at is None and fault.kind not in ("transfer", "split", "move"):
            fault.healed_at = trio.current_time() - nemesis.t0


async def _progress(state: Run, t0: float, seconds: float) -> None:
    while True:
        await trio.sleep(10.0)
        done = sum(state.outcomes.values())
        elapsed = trio.current_time() - t0
        print(
            f"  {elapsed:.0f}/{seconds:g} s: {done:,} operations, {len(state.faults)} faults",
            file=sys.stderr,
        )

"""`shardkv playground`: a PD and N stores on this machine, in one command."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from plumbing.cli import STOP_SIGNALS, configure_logging, missing_server_modules, print_errors

if TYPE_CHECKING:
    from kvproto.metapb import Store
    from kvproto.pd_client import PdClient
    from shardkv.local_cluster import LocalCluster

log = logging.getLogger(__name__)

DESCRIPTION = """\
Start a local shardkv cluster: one placement driver and N stores, each a child
process on free 127.0.0.1 ports. The command waits until the cluster serves a
write and a read and every region has its replicas (3 voters, or one per
store with fewer stores; it says what it still waits for), prints how to
reach it, and runs until Ctrl-C or SIGTERM, then stops every child cleanly.

Without --data-dir the data lives in a fresh temporary directory that is
removed at exit. With --data-dir the data (and the ports) are kept, and the
next run with the same directory restarts the same cluster.
"""

STATE_FILE = "playground.json"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "playground",
        help="run a local cluster (a PD and N stores) until Ctrl-C",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stores", type=int, default=3, help="number of stores (default: 3)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep the cluster's data (and logs) here; a later run restarts it",
    )
    p.add_argument("--pd-port", type=int, metavar="P", help="PD RPC port (default: a free one)")
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up if the cluster is not serving within S seconds (default: 60)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every port, with a throwaway CA and certificate made in DATA_DIR/tls "
        "(the banner shows how clients trust it)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    configure_logging("warning", fmt="%(message)s")
    missing = missing_server_modules("shardkv playground")
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    if args.stores < 1:
        print("shardkv playground: --stores must be at least 1", file=sys.stderr)
        return 2
    if args.pd_port is not None and not 0 < args.pd_port < 65536:
        print("shardkv playground: --pd-port must be in 1..65535", file=sys.stderr)
        return 2
    temporary = args.data_dir is None
    root = (
        Path(tempfile.mkdtemp(prefix="shardkv-playground-")) if temporary else Path(args.data_dir)
    )
    root.mkdir(parents=True, exist_ok=True)
    try:
        return trio.run(_main, root, args)
    except KeyboardInterrupt:
        return 130
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _load_ports(root: Path) -> dict[str, int]:
    try:
        data = json.loads((root / STATE_FILE).read_text())
        return {k: int(v) for k, v in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


async def _main(root: Path, args: argparse.Namespace) -> int:
    from kvproto.pd_client import open_pd_client
    from shardkv.local_cluster import LocalCluster, free_port
    from shardkv.tls_files import local_tls_files

    saved = _load_ports(root)
    pd_port = args.pd_port or saved.get("pd") or free_port()
    http_port = saved.get("http") or free_port()
    cluster = LocalCluster(
        root,
        stores=args.stores,
        pd_port=pd_port,
        http_port=http_port,
        pd_flags={"--max-replicas": str(min(3, args.stores))},
        tls=local_tls_files(root / "tls") if args.tls else None,
    )
    ports: dict[str, int] = {"pd": pd_port, "http": http_port}
    for spec in cluster.store_specs:
        for key, flag in (
            (f"store-{spec.index}", "--listen"),
            (f"status-{spec.index}", "--status"),
        ):
            port = saved.get(key)
            if port:
                spec.set_address(flag, f"127.0.0.1:{port}")
        ports[f"store-{spec.index}"] = int(spec.address.rsplit(":", 1)[1])
        ports[f"status-{spec.index}"] = int(spec.status_address.rsplit(":", 1)[1])
    (root / STATE_FILE).write_text(json.dumps(ports))
    code = 0
    try:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            print(f"starting a PD and {args.stores} stores in {root} ...", file=sys.stderr)
            await cluster.start()
            async with open_pd_client([cluster.pd_address], open_stream=cluster.opener()) as pd:
                replicas = min(3, args.stores)
                outcome = await _wait_ready(cluster, pd, signals, args.ready_timeout, replicas)
                if outcome == "timeout":
                    print(
                        f"shardkv playground: the cluster was not serving with its "
                        f"replicas within {args.ready_timeout:.0f} s; see the logs in "
                        f"{root / 'logs'}",
                        file=sys.stderr,
                    )
                    return 1
                if outcome == "interrupted":
                    return 130
                stores = await pd.get_all_stores()
            _print_banner(cluster, stores, root)
            async with trio.open_nursery() as n:
                n.start_soon(_watch_children, cluster)
                async for sig in signals:
                    name = signal.Signals(sig).name
                    print(f"\n{name}: stopping the cluster ...", file=sys.stderr)
                    n.cancel_scope.cancel()
                    break
    except* RuntimeError as eg:
        print_errors("shardkv playground", eg)
        code = 1
    finally:
        await cluster.aclose()
        print("stopped.", file=sys.stderr)
    return code


async def _wait_ready(
    cluster: LocalCluster,
    pd: PdClient,
    signals: AsyncIterator[int],
    ready_timeout: float,
    replicas: int,
) -> str:
    """ "ready", "timeout" or "interrupted" (a signal while starting).
    Ready: serving, and every region has `replicas` voters."""
    from shardkv.local_cluster import wait_replicated

    def progress(what: str) -> None:
        print(f"  waiting for replicas: {what}", file=sys.stderr)

    outcome = "timeout"
    with trio.move_on_after(ready_timeout):
        async with trio.open_nursery() as n:

            async def on_signal() -> None:
                nonlocal outcome
                async for _ in signals:
                    outcome = "interrupted"
                    n.cancel_scope.cancel()
                    return

            n.start_soon(on_signal)
            await cluster.wait_ready(pd)
            await wait_replicated(pd, replicas, progress)
            outcome = "ready"
            n.cancel_scope.cancel()
    return outcome


async def _watch_children(cluster: LocalCluster) -> None:
    reported: set[str] = set()
    while True:
        for child in cluster.dead_children():
            if child.name not in reported and child.process is not None:
                reported.add(child.name)
                print(
                    f"note: {child.name} exited (code {child.process.returncode}); the others "
                    f"keep running. Its log: {child.log_path}",
                    file=sys.stderr,
                )
        await trio.sleep(0.5)


def _print_banner(cluster: LocalCluster, stores: Sequence[Store], root: Path) -> None:
    lines = [
        "",
        "shardkv playground is up.",
        f"  PD:        {cluster.pd_address}",
        f"  admin API: {cluster.http_url}/pd/api/v1/stores",
        f"  metrics:   {cluster.http_url}/metrics",
    ]
    status = {spec.address: spec.status_url for spec in cluster.store_specs}
    for s in stores:
        url = status.get(s.address)
        where = "" if url is None else f"   status: {url}/status, {url}/metrics"
        lines.append(f"  store {s.id}:   {s.address}{where}")
    ca = "" if cluster.tls is None else f" --tls-ca {cluster.tls.ca}"
    py_ca = "" if cluster.tls is None else f', tls_ca="{cluster.tls.ca}"'
    lines += [
        f"  logs:      {root / 'logs'}",
        *([] if cluster.tls is None else [f"  TLS CA:    {cluster.tls.ca}"]),
        "",
        "Try it from another terminal:",
        f"  shardkv kv --pd {cluster.pd_address}{ca} put hello world",
        f"  shardkv kv --pd {cluster.pd_address}{ca} get hello",
        f"  shardkv ctl --pd-http {cluster.http_url}{ca} store list",
        "",
        "or from Python:",
        "  import client",
        f'  with client.SyncClient(["{cluster.pd_address}"]{py_ca}) as kv:',
        '      kv.put(b"hello", b"world")',
        '      print(kv.get(b"hello"))',
        "",
        "Ctrl-C stops the cluster.",
    ]
    print("\n".join(lines), flush=True)

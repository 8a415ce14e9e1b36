"""`shardkv store`: run one store process."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio

from kvproto import config_file
from kvproto.config_file import ConfigError
from kvproto.dirlock import DataDirLockedError
from store_node.bootstrap import DataDirMismatchError
from store_node.config import StoreConfig

log = logging.getLogger(__name__)

DESCRIPTION = """\
Run a shardkv store: it serves the regions placed on it, replicates them with
Raft, and registers with the placement driver (the first store of a new
cluster bootstraps it). Every setting can be given in a TOML file (--config)
with the names below (underscores), and a flag overrides the file.
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "store",
        help="run a store process",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with store settings")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    config_file.add_arguments(p, StoreConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = config_file.load(
            StoreConfig, args.config, config_file.overrides_from_args(args, StoreConfig)
        )
    except ConfigError as e:
        print(f"shardkv store: {e}", file=sys.stderr)
        return 2
    return trio.run(_serve, cfg)


async def _serve(cfg: StoreConfig) -> int:
    from store_node.node import StoreNode

    failed = False
    try:
        async with trio.open_nursery() as nursery:
            node = StoreNode(cfg)
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            await nursery.start(node.run)
    except* (DataDirMismatchError, DataDirLockedError) as eg:
        for e in eg.exceptions:
            print(f"shardkv store: {e}", file=sys.stderr)
        failed = True
    if failed:
        return 1
    log.info("store stopped")
    return 0


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for sig in signals:
            log.info("received %s, stopping", signal.Signals(sig).name)
            scope.cancel()
            return

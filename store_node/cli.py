"""`shardkv store`: run one store process."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from plumbing import config_file, failpoints
from plumbing.cli import (
    add_log_level_flag,
    configure_logging,
    missing_server_modules,
    print_errors,
    serve_until_signal,
)
from plumbing.config_file import ConfigError
from plumbing.dirlock import DataDirLockedError
from store_node.config import StoreConfig

log = logging.getLogger(__name__)

# Exit statuses: 1 a refusal at start (or a crash), 2 a bad setting, 3 the
# disk failed under the store (a write or fsync; the store logged why).
EXIT_REFUSED = 1
EXIT_BAD_SETTING = 2
EXIT_DISK_FAILURE = 3

DESCRIPTION = """\
Run a shardkv store: it serves the regions placed on it, replicates them with
Raft, and registers with the placement driver (the first store of a new
cluster bootstraps it). Every setting can be given in a TOML file (--config)
with the names below (underscores), and a flag overrides the file.

Exit status: 0 stopped by SIGINT or SIGTERM, 1 refused at start, 2 a bad
setting, 3 a write or fsync of the data failed (a failing or full disk: the
store never carries on after one; nothing it acknowledged is lost).

Failpoints (testing only): SHARDKV_FAILPOINTS="engine.sync=eio;disk.free=0"
sets faults at start; with --enable-failpoints true, PUT /failpoints/NAME
(body: the action) and DELETE /failpoints/NAME on the status port set them
later.
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "store",
        help="run a store process",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_arguments(p)
    p.set_defaults(run=run)


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --log-level and a flag per setting (`shardkv restore` too)."""
    p.add_argument("--config", metavar="FILE", help="TOML file with store settings")
    add_log_level_flag(p)
    config_file.add_arguments(p, StoreConfig)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, log_format=args.log_format)
    missing = missing_server_modules("shardkv store")
    if missing is not None:
        print(missing, file=sys.stderr)
        return EXIT_BAD_SETTING
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"shardkv store: {e}", file=sys.stderr)
        return EXIT_BAD_SETTING
    return serve(cfg)


def load_config(args: argparse.Namespace) -> StoreConfig:
    """The settings: the --config file's, overridden by flags (ConfigError)."""
    return config_file.load(
        StoreConfig, args.config, config_file.overrides_from_args(args, StoreConfig)
    )


def serve(cfg: StoreConfig) -> int:
    """Run a store on `cfg` until SIGINT or SIGTERM; the exit status."""
    import store_node.disk  # noqa: F401  (declares the store's failpoints)

    try:
        failpoints.configure_from_env()
    except failpoints.FailpointError as e:
        print(f"shardkv store: {e}", file=sys.stderr)
        return EXIT_BAD_SETTING
    return trio.run(_serve, cfg)


async def _serve(cfg: StoreConfig) -> int:
    from store_node.bootstrap import DataDirMismatchError
    from store_node.disk import DiskFailure
    from store_node.node import ListenAddressError, RegistrationRefusedError, StoreNode
    from store_node.replace import AddressTakenError, ReplaceStoreError
    from store_node.status_http import StatusAddressError

    code = 0
    try:
        await serve_until_signal(StoreNode(cfg).run)
    except* (
        AddressTakenError,
        DataDirMismatchError,
        DataDirLockedError,
        ReplaceStoreError,
        ListenAddressError,
        RegistrationRefusedError,
        StatusAddressError,
    ) as eg:
        print_errors("shardkv store", eg)
        code = EXIT_REFUSED
    except* ConfigError as eg:  # a token file that cannot be read
        print_errors("shardkv store", eg)
        code = EXIT_BAD_SETTING
    except* DiskFailure:  # the engine logged it (CRITICAL)
        code = EXIT_DISK_FAILURE
    if code == 0:
        log.info("store stopped")
    return code

"""`shardkv`: one console command, one sub-command per package.

A sub-command lives in its package's CLI module, which exposes:

* ``add_parser(subparsers)``: add the sub-command with
  ``subparsers.add_parser(NAME, help=..., description=...)``, its flags,
  and ``parser.set_defaults(run=run)``;
* ``run(args: argparse.Namespace) -> int``: do it; the int is the exit code
  (0 ok, 1 failed, 2 bad usage or config). It configures its own logging
  (to stderr).

To add a sub-command, add its module to SUBCOMMANDS (one line). Modules are
imported when the parser is built, so keep their imports light (import
trio-heavy modules inside `run`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Final

from shardkv import __version__

SUBCOMMANDS: Final = (
    "placement_driver.cli",  # shardkv pd
    "store_node.cli",  # shardkv store
    "shardkv.restore",  # shardkv restore
    "client.cli",  # shardkv kv
    "client.ctl",  # shardkv ctl
    "shardkv.playground",  # shardkv playground
    "shardkv.chaos",  # shardkv chaos
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardkv",
        description="shardkv: a multi-raft sharded key-value store with a placement driver.",
    )
    parser.add_argument("--version", action="version", version=f"shardkv {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

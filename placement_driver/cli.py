"""`shardkv pd`: run the placement driver."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import trio

from placement_driver.config import (
    ClusterConfig,
    ConfigError,
    ServerConfig,
    StartupConfig,
    format_value,
    load_startup_config,
)
from plumbing.cli import (
    add_log_level_flag,
    configure_logging,
    missing_server_modules,
    print_errors,
    serve_until_signal,
)
from plumbing.dirlock import DataDirLockedError

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)

PROG = "shardkv pd"

DESCRIPTION = """\
Run the shardkv placement driver (PD): it bootstraps the cluster, hands out
ids, keeps the stores and the region tree learnt from heartbeats, and serves
the admin HTTP API (JSON) under /pd/api/v1/.

Every setting below can be given in a TOML file (--config pd.toml) with the
name in underscores (max_replicas = 5); a flag overrides the file. The
cluster config keys are stored in the data directory and can be changed
while running (SetConfig RPC): at start, a key named by the file or a flag
wins over the stored value, a key named by neither keeps it.

With --admin-token-file FILE, every admin API request that changes
something (POST, DELETE) needs the header 'Authorization: Bearer <token>'
(shardkv ctl --token-file FILE sends it); reads stay open. A missing or
empty token file stops the PD at start.

With --cluster-token-file FILE (the same token on the PD and every store),
every connection to the PD RPC port must first prove a token
(challenge-response, the token never travels): the cluster token for
stores, the client token (--client-token-file, else the cluster token) for
clients, which may then only read routing. Without TLS the traffic itself
is not encrypted: see the README on untrusted networks.

Durations are seconds or text: 500ms, 20s, 30m, 1h. Sizes are bytes or
text: 64KiB, 96MiB (MB = 1000**2 bytes). An unknown key or a bad value stops
the PD at start with exit code 2. Ctrl-C or SIGTERM stop it cleanly (exit 0).
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "pd",
        help="run the placement driver",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with PD settings (pd.toml)")
    add_log_level_flag(p)
    server = p.add_argument_group("server options (start-up only)")
    defaults = ServerConfig()
    for f in dataclasses.fields(ServerConfig):
        metavar = (
            "DIR" if f.name == "data_dir" else "FILE" if f.name.endswith("_file") else "HOST:PORT"
        )
        default = getattr(defaults, f.name)
        suffix = f" (default: {default})" if default else ""
        server.add_argument(
            _flag(f.name),
            dest=f.name,
            metavar=metavar,
            help=f.metadata["help"] + suffix,
        )
    cluster = p.add_argument_group("cluster config (stored; settable over RPC)")
    cluster_defaults = ClusterConfig()
    for f in dataclasses.fields(ClusterConfig):
        kind = f.metadata.get("kind")
        metavar = {"duration": "DURATION", "size": "SIZE"}.get(kind or "", "N")
        cluster.add_argument(
            _flag(f.name),
            dest=f.name,
            metavar=metavar,
            help=f"{f.metadata['help']} (default: {format_value(cluster_defaults, f.name)})",
        )
    p.set_defaults(run=run)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, log_format=args.log_format)
    missing = missing_server_modules(PROG)
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    names = [f.name for f in dataclasses.fields(ServerConfig)] + [
        f.name for f in dataclasses.fields(ClusterConfig)
    ]
    flags = {name: getattr(args, name, None) for name in names}
    try:
        startup = load_startup_config(args.config, flags)
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    return trio.run(_serve, startup)


async def _serve(startup: StartupConfig) -> int:
    from placement_driver.server import PdServer
    from placement_driver.storage import CorruptMetaError

    server = PdServer(startup.server, cluster_overrides=startup.cluster_overrides)
    code = 0
    try:
        await serve_until_signal(server.run)
    except* ConfigError as group:
        print_errors(PROG, group)
        code = 2
    except* (DataDirLockedError, CorruptMetaError, OSError) as group:
        print_errors(PROG, group)
        code = 1
    if code == 0:
        log.info("PD stopped")
    return code

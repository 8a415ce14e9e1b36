"""`shardkv restore --from DIR --data-dir D --listen ADDR --pd ADDR`: bring a
backup (`shardkv ctl backup`) back as a new cluster.

In this order, and nothing is written before the checks pass:

1. the manifest (`client.backup_manifest`: format, fields, regions tiling
   the key space) and every region file (size, CRC-32, key count and data
   digest: `store_node.restore.verify_copy`);
2. the data directory (and --raft-dir) must be empty, or hold this very
   backup from an earlier run that stopped before its store bootstrapped
   (resumed without loading again);
3. the PD must not be bootstrapped: the restored store bootstraps a new
   cluster (the data of an old cluster cannot join a running one);

then the data pairs are loaded into the data directory's kv/
(`store_node.restore.load_copies`), and a store is started on it exactly
as `shardkv store` with the same flags: it bootstraps the cluster with one
region over the whole key space, holding all of the data. Start the other
stores as usual (`shardkv store`, empty data directories): they get the
data by Raft snapshots, and the cluster splits by size as usual. Once the
store has bootstrapped, restart it with `shardkv store` on the same data
directory (`shardkv restore` again on it does the same).

Client sessions are not restored: the new cluster knows no client of the
old one (a write retried across the restore may apply again).

Exit status: 2 a bad backup, a non-empty data directory, a bootstrapped PD
or a bad setting (nothing written); 1 the PD cannot be reached, or a
failure of the store; else as `shardkv store`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from client.backup_manifest import Manifest, ManifestError, read_manifest
from plumbing.cli import configure_logging, missing_server_modules
from plumbing.config_file import ConfigError

if TYPE_CHECKING:
    from store_node.config import StoreConfig
    from store_node.restore import CopyFile

PROG: Final = "shardkv restore"
EXIT_FAILED: Final = 1
EXIT_REFUSED: Final = 2
# How long the PD may take to say whether it is bootstrapped.
PD_CHECK_TIMEOUT: Final = 15.0

DESCRIPTION = """\
Restore a backup made by `shardkv ctl backup` as a NEW cluster: check the
backup (manifest and every file's checksums), load its data into an empty
--data-dir, then run a store there (same flags as `shardkv store`) that
bootstraps the cluster of a new, never bootstrapped PD with all of the data
in its first region. Start the other stores as usual: they receive the data
by Raft snapshots, and regions split by size. Nothing is written when a
check fails. Client sessions are not restored.

  shardkv pd --data-dir /var/lib/shardkv/pd-new
  shardkv restore --from /backups/2024-06-01 --data-dir /var/lib/shardkv/s1 \\
      --listen 10.0.0.11:20160 --pd 10.0.0.1:2379
  shardkv store --data-dir /var/lib/shardkv/s2 --listen 10.0.0.12:20160 --pd 10.0.0.1:2379

Exit status: 2 a bad or incomplete backup, a non-empty data directory, a
bootstrapped PD or a bad setting (nothing written); 1 the PD unreachable;
otherwise as `shardkv store` (0 once stopped by SIGINT or SIGTERM).
"""


class Refused(Exception):
    """A check failed before anything was written."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from store_node.cli import add_store_arguments

    p = subparsers.add_parser(
        "restore",
        help="restore a backup as a new cluster (then run its first store)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="backup_dir",
        required=True,
        metavar="DIR",
        help="the backup directory (written by shardkv ctl backup)",
    )
    add_store_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, log_format=args.log_format)
    missing = missing_server_modules(PROG)
    if missing is not None:
        print(missing, file=sys.stderr)
        return EXIT_REFUSED
    from store_node.cli import load_config, serve

    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        prepare(Path(args.backup_dir), cfg)
    except Refused as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, ConfigError, PdUnreachable) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAILED
    return serve(cfg)


class PdUnreachable(Exception):
    pass


def prepare(backup_dir: Path, cfg: StoreConfig) -> None:
    """Check the backup, the data directory and the PD, then load the
    data (unless this backup is there already). Refused when a check fails,
    before anything is written."""
    from store_node.restore import DataDirState, RestoreError, data_dir_state, verify_copy

    if cfg.replace_store:
        raise Refused(
            "--replace-store joins an existing cluster; a restore bootstraps a new one; "
            "nothing was written"
        )
    try:
        manifest, raw = read_manifest(backup_dir)
    except ManifestError as e:
        raise Refused(f"{e}; nothing was written") from None
    backup_id = hashlib.sha256(raw).digest()
    copies = copy_files(backup_dir, manifest)
    _say(
        f"checking {len(copies)} region files of the backup of cluster {manifest.cluster_id} "
        f"({manifest.total_keys} keys, {manifest.total_bytes} bytes)"
    )
    for c in copies:
        try:
            verify_copy(c)
        except RestoreError as e:
            raise Refused(f"the backup fails its checks: {e}; nothing was written") from None
    data_dir = Path(cfg.data_dir)
    raft_dir = Path(cfg.raft_dir) if cfg.raft_dir else None
    state = data_dir_state(data_dir, raft_dir, backup_id)
    if state is DataDirState.OTHER:
        raise Refused(
            f"--data-dir {data_dir}{'' if raft_dir is None else f' or --raft-dir {raft_dir}'} "
            "is not empty: restore needs an empty one (a restore interrupted while loading "
            "leaves it so: empty it and run again); nothing was written"
        )
    if state is DataDirState.RESTORED:
        _say(f"{data_dir} already holds this backup: starting its store")
        return
    if trio.run(_pd_bootstrapped, cfg):
        raise Refused(
            f"the PD at {','.join(cfg.pd)} is already bootstrapped: restore starts a new "
            "cluster, give it a new PD (an empty --data-dir for `shardkv pd`); nothing was "
            "written"
        )
    _load(data_dir, raft_dir, copies, backup_id, cfg.sync)


def copy_files(backup_dir: Path, manifest: Manifest) -> list[CopyFile]:
    from kvproto.metapb import RegionEpoch
    from store_node.restore import CopyFile

    return [
        CopyFile(
            backup_dir / r.file,
            r.region_id,
            r.start_key,
            r.end_key,
            RegionEpoch(r.conf_ver, r.version),
            r.applied_index,
            r.applied_term,
            r.size,
            r.crc32,
            r.keys,
            r.data_sha256,
        )
        for r in manifest.regions
    ]


async def _pd_bootstrapped(cfg: StoreConfig) -> bool:
    from kvproto.pd_client import open_pd_client
    from kvproto.rpc import RpcCallError
    from kvproto.rpc.auth import security_from_files
    from kvproto.rpc.tls import opener_for, tls_from_files

    _, creds = security_from_files(cfg.cluster_token_file, cfg.client_token_file)
    _, client_tls = tls_from_files(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_ca_file)
    opener = opener_for(client_tls, creds, cfg.source_host)
    cause = "no answer"
    with trio.move_on_after(PD_CHECK_TIMEOUT):
        async with open_pd_client(cfg.pd, open_stream=opener) as pd:
            while True:
                try:
                    return await pd.is_bootstrapped()
                except RpcCallError as e:
                    cause = str(e)
                await trio.sleep(0.5)
    raise PdUnreachable(
        f"cannot ask the PD at {','.join(cfg.pd)} whether it is bootstrapped within "
        f"{PD_CHECK_TIMEOUT:g} s ({cause}); nothing was written"
    )


def _load(
    data_dir: Path, raft_dir: Path | None, copies: list[CopyFile], backup_id: bytes, sync: bool
) -> None:
    from store_node.engine import Engine
    from store_node.restore import load_copies

    started = time.monotonic()
    total = sum(c.size for c in copies)
    done = [0]

    def progress(keys: int, nbytes: int) -> None:
        done[0] += 1
        _say(f"loaded {done[0]} of {len(copies)} region files: {keys} keys, {nbytes} bytes")

    engine = Engine(data_dir, raft_dir, sync=sync)
    try:
        keys, nbytes = load_copies(engine, copies, backup_id, progress)
    finally:
        engine.close()
    took = time.monotonic() - started
    _say(
        f"restored {keys} keys ({nbytes} bytes of data, {total} bytes of files) into "
        f"{data_dir} in {took:.1f} s; starting the store, which bootstraps the new cluster"
    )


def _say(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)

"""`shardkv ctl backup --to DIR`: a consistent copy of every region, taken
while the cluster serves.

The walk goes through the key space in key order from "", one region at a
time. For the region holding the current key it asks the region's leader
to prepare a copy (`kvproto.backuppb`, `store_node.backup_copies`: a
linearizable read permit, then one kv/ read transaction written as a
snapshot file), routed and retried as any KV request is (the client's
`RegionLocator` and `RequestSender`: NotLeader, EpochNotMatch, stores
down, the PD away...). It pulls the file in chunks from that store (one
chunk in flight: bounded memory), checks its size and CRC-32, releases it,
and goes on from the END KEY OF THE REGION AS RECORDED IN THE COPY. So a
region that split or moved meanwhile is still copied once and whole: the
copy describes its region at the index it was taken at, and the next copy
starts where it ends; no range is copied twice or missed. Each copy is
taken after the walk reached it, so every write acknowledged before the
backup started is in it (each region is consistent at its own index; the
backup as a whole is not one snapshot of the cluster).

A copy that cannot be fetched (its store died, it was swept, a chunk was
damaged) is prepared again, within the region's deadline. The files land
under DIR as `*.part` and are renamed once whole and checked; the manifest
(`client.backup_manifest`) is written last, so a directory without one is
an incomplete backup. Client sessions are not part of a backup.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import random
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from client.attempts import BackoffKind, OpKind, Retry
from client.backup_manifest import (
    MANIFEST,
    Manifest,
    RegionEntry,
    write_manifest,
)
from client.config import ClientConfig
from client.errors import ClientError, StoreError, describe_key
from client.locate import RegionLocator
from client.sender import RequestSender
from kvproto.backuppb import (
    BackupChunkRequest,
    BackupChunkResponse,
    BackupCopy,
    BackupPrepareRequest,
    BackupPrepareResponse,
    BackupReleaseRequest,
)
from kvproto.metapb import StoreId
from kvproto.pd_client import PdClient
from kvproto.rpc import Credentials, Role, RpcCallError, StreamOpener
from kvproto.rpc.reconnect import ReconnectingConnection
from kvproto.rpc.tls import client_context, opener_for
from plumbing.files import sync_directory
from plumbing.nursery import open_background_nursery

__all__ = ["BackupOptions", "Progress", "add_parser", "backup", "backup_cluster", "run"]

# One chunk's call (the store reads it from its disk in a thread).
CHUNK_TIMEOUT: Final = 30.0
RELEASE_TIMEOUT: Final = 5.0
DEFAULT_CHUNK_SIZE: Final = 1 << 20
DEFAULT_REGION_TIMEOUT: Final = 600.0


@dataclass(frozen=True, slots=True)
class BackupOptions:
    # Bytes asked for per chunk (the store sends at most 8 MiB).
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # How long one region may take, retries included (seconds).
    region_timeout: float = DEFAULT_REGION_TIMEOUT
    # How long a store may take to prepare one copy (it reads the whole
    # region; a store that takes longer is treated as gone).
    prepare_timeout: float = 120.0


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a backup is: the regions done and their bytes and keys, and the
    bytes of the region being fetched (`current`, None between regions)."""

    regions: int
    bytes: int
    keys: int
    elapsed: float
    current: BackupCopy | None = None
    current_bytes: int = 0


ProgressFn = Callable[[Progress], None]
# Called after each region is written (tests split regions here).
RegionHook = Callable[[RegionEntry], Awaitable[None]]


class _CopyLost(Exception):
    """A prepared copy could not be fetched whole; it is prepared again."""


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class _Walk:
    def __init__(
        self,
        regions: RegionLocator,
        sender: RequestSender,
        directory: Path,
        options: BackupOptions,
        progress: ProgressFn | None,
    ) -> None:
        self._regions = regions
        self._sender = sender
        self._dir = directory
        self._options = options
        self._progress = progress
        self._started = trio.current_time()
        self.entries: list[RegionEntry] = []
        self.bytes = 0
        self.keys = 0

    def _report(self, current: BackupCopy | None = None, current_bytes: int = 0) -> None:
        if self._progress is not None:
            elapsed = trio.current_time() - self._started
            self._progress(
                Progress(len(self.entries), self.bytes, self.keys, elapsed, current, current_bytes)
            )

    async def run(self, after_region: RegionHook | None) -> None:
        key = b""
        while True:
            entry = await self._copy_region(len(self.entries), key)
            self.entries.append(entry)
            self.bytes += entry.size
            self.keys += entry.keys
            self._report()
            if after_region is not None:
                await after_region(entry)
            if not entry.end_key:
                return
            key = entry.end_key

    async def _copy_region(self, seq: int, key: bytes) -> RegionEntry:
        """Copy the region holding `key` into the directory, retrying until
        it is there whole or the region's deadline passes."""
        att = self._sender.attempts(
            f"backup of the region at {describe_key(key)}",
            OpKind.READ,
            self._options.region_timeout,
        )
        while True:
            cached = await self._regions.locate(att, key)
            resp = await self._sender.call(
                att, cached, lambda ctx: BackupPrepareRequest(ctx, key), BackupPrepareResponse
            )
            if resp is None:
                continue  # routing updated, backoff slept
            copy = resp.copy
            if copy is None:
                raise StoreError(att.what, f"store {resp.store_id} answered without a copy")
            store_id = StoreId(resp.store_id)
            conn = await self._regions.connection(att, cached, store_id)
            if conn is None:
                continue  # the copy is swept by its store
            try:
                if not copy.region.contains(key):
                    # Never for a store that checks the epoch; a copy must
                    # hold the walk's key, or a range would be missed.
                    self._regions.cache.invalidate_region(cached.region)
                    raise _CopyLost(f"region {copy.region.id} of the copy does not hold the key")
                name = f"region-{seq:06d}-{copy.region.id}.snap"
                await self._fetch(conn, copy, self._dir / name)
            except (_CopyLost, RpcCallError) as e:
                att.note(f"store {store_id}: copy of region {copy.region.id} lost: {e}")
                await self._regions.wait(att, Retry(BackoffKind.STORE))
                continue
            finally:
                await _release(conn, copy.copy_id)
            region = copy.region
            return RegionEntry(
                region_id=region.id,
                start_key=key,
                end_key=region.end_key,
                conf_ver=region.epoch.conf_ver,
                version=region.epoch.version,
                applied_index=copy.applied_index,
                applied_term=copy.applied_term,
                file=name,
                size=copy.size,
                crc32=copy.crc32,
                keys=copy.keys,
                data_sha256=copy.data_sha256,
            )

    async def _fetch(self, conn: ReconnectingConnection, copy: BackupCopy, path: Path) -> None:
        """Pull the copy into `path` (through `path`.part), checked."""
        part = path.with_name(path.name + ".part")
        try:
            await self._pull(conn, copy, part)
        except BaseException:
            # The next attempt may be another region's file (a split).
            part.unlink(missing_ok=True)
            raise
        part.replace(path)

    async def _pull(self, conn: ReconnectingConnection, copy: BackupCopy, part: Path) -> None:
        crc = 0
        offset = 0
        last_report = trio.current_time()
        async with await trio.open_file(part, "wb") as f:
            while offset < copy.size:
                want = min(self._options.chunk_size, copy.size - offset)
                resp = await conn.call(
                    BackupChunkRequest(copy.copy_id, offset, want), timeout=CHUNK_TIMEOUT
                )
                if not isinstance(resp, BackupChunkResponse):
                    raise _CopyLost(f"unexpected answer {type(resp).__name__}")
                if resp.error:
                    raise _CopyLost(resp.error)
                if not resp.data or len(resp.data) > want:
                    raise _CopyLost(f"chunk of {len(resp.data)} bytes at {offset}")
                await f.write(resp.data)
                crc = zlib.crc32(resp.data, crc)
                offset += len(resp.data)
                now = trio.current_time()
                if now - last_report >= 1.0:
                    last_report = now
                    self._report(copy, offset)
            await f.flush()
            await trio.to_thread.run_sync(os.fsync, f.fileno())
        if crc != copy.crc32:
            raise _CopyLost(f"CRC-32 {crc:08x} of the fetched file, expected {copy.crc32:08x}")


async def _release(conn: ReconnectingConnection, copy_id: int) -> None:
    """Tell the store it may delete the copy (best effort: it sweeps copies
    nobody fetches anyway)."""
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(RELEASE_TIMEOUT),
        contextlib.suppress(RpcCallError),
    ):
        await conn.call(BackupReleaseRequest(copy_id), timeout=RELEASE_TIMEOUT)


def _prepare_directory(directory: Path) -> None:
    """DIR must be new or empty: a backup never mixes with another's files."""
    if directory.exists():
        if not directory.is_dir():
            raise ClientError("backup", f"{directory} is not a directory")
        if any(directory.iterdir()):
            raise ClientError(
                "backup", f"{directory} is not empty; back up into a new or empty directory"
            )
    directory.mkdir(parents=True, exist_ok=True)


async def backup_cluster(
    pd: PdClient,
    directory: Path,
    *,
    open_stream: StreamOpener,
    options: BackupOptions | None = None,
    progress: ProgressFn | None = None,
    after_region: RegionHook | None = None,
    rng: random.Random | None = None,
) -> Manifest:
    """Back up the cluster of `pd` into `directory` (new or empty) and
    write its manifest last. Raises ClientError when a region cannot be
    copied within its deadline (the directory then has no manifest)."""
    opts = options or BackupOptions()
    _prepare_directory(directory)
    config = ClientConfig(
        timeout=opts.region_timeout, attempt_timeout=opts.prepare_timeout, exactly_once=False
    )
    rng = rng or random.Random()
    started = _now_iso()
    async with open_background_nursery() as nursery:
        regions = RegionLocator(pd, nursery, config, rng, open_stream)
        sender = RequestSender(regions, config, rng)
        try:
            walk = _Walk(regions, sender, directory, opts, progress)
            await walk.run(after_region)
        finally:
            sender.close()
            nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(sync_directory, directory)
    manifest = Manifest(pd.cluster_id, started, _now_iso(), tuple(walk.entries))
    await trio.to_thread.run_sync(write_manifest, directory, manifest)
    return manifest


async def backup(
    pd_addresses: Sequence[str],
    directory: Path,
    *,
    token: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    options: BackupOptions | None = None,
    progress: ProgressFn | None = None,
    after_region: RegionHook | None = None,
) -> Manifest:
    """`backup_cluster` of the cluster whose PD listens at `pd_addresses`,
    with the credentials `client.connect` takes."""
    async with open_background_nursery() as nursery:
        creds = Credentials(Role.CLIENT, token.encode()) if token else None
        tls = client_context(tls_ca, tls_cert, tls_key) if tls_ca else None
        opener = opener_for(tls, creds)
        pd = PdClient(list(pd_addresses), nursery, open_stream=opener)
        try:
            return await backup_cluster(
                pd,
                directory,
                open_stream=opener,
                options=options,
                progress=progress,
                after_region=after_region,
            )
        finally:
            pd.close()
            nursery.cancel_scope.cancel()


# -- the command line --------------------------------------------------------------------

PROG = "shardkv ctl backup"
PD_ENV: Final = "SHARDKV_PD"

DESCRIPTION = f"""\
Back up every region of a running cluster into DIR (new or empty), while it
serves. Each region is copied by its leader from one read transaction at
one applied index, after a linearizable read: every write acknowledged
before the backup started is in the copy. A region that splits or moves
meanwhile is still copied once and whole (the walk goes on from the end
of the region as the copy records it). Files are checked (size, CRC-32)
as they arrive; {MANIFEST} (cluster id, ranges, applied indexes, sizes and
checksums) is written last: a directory without it is an incomplete backup.
Client sessions are not backed up.

Progress goes to stderr (per region, and every second during a large one);
the summary to stdout. Bring the backup back with `shardkv restore`.

  shardkv ctl backup --pd 10.0.0.1:2379 --to /backups/2024-06-01

Exit status: 0 done, 1 failed (the directory has no manifest), 2 usage.
"""


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `backup` to the commands of `shardkv ctl` (its own `run`)."""
    p = groups.add_parser(
        "backup",
        help="copy every region into a directory, while the cluster serves",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--to", required=True, metavar="DIR", help="new or empty directory")
    p.add_argument(
        "--pd",
        default=os.environ.get(PD_ENV) or "127.0.0.1:2379",
        metavar="ADDRS",
        help=f"PD RPC addresses, comma separated (default: ${PD_ENV}, else 127.0.0.1:2379)",
    )
    p.add_argument(
        "--client-token-file",
        metavar="FILE",
        help="file holding the cluster's client token (or its cluster token), for a "
        "cluster run with --cluster-token-file (what `shardkv kv --token-file` takes)",
    )
    p.add_argument(
        "--tls-cert", metavar="FILE", help="PEM client certificate (with ctl's --tls-ca)"
    )
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument(
        "--chunk-size",
        type=_size,
        default=DEFAULT_CHUNK_SIZE,
        metavar="SIZE",
        help="bytes per chunk fetched, e.g. 4MiB (default: 1MiB)",
    )
    p.add_argument(
        "--region-timeout",
        type=float,
        default=DEFAULT_REGION_TIMEOUT,
        metavar="SECONDS",
        help="how long one region may take, retries included (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _size(text: str) -> int:
    from plumbing.units import parse_size

    try:
        n = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 1 <= n <= 8 << 20:
        raise argparse.ArgumentTypeError("a chunk is 1 byte to 8MiB")
    return n


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class _Printer:
    """Progress lines on stderr: one per region, and one a second while a
    large region is fetched."""

    def __init__(self) -> None:
        self._regions = -1

    def __call__(self, p: Progress) -> None:
        rate = p.bytes / p.elapsed if p.elapsed > 0 else 0.0
        line = f"backup: {p.regions} regions, {_mib(p.bytes)}, {p.keys} keys, {_mib(int(rate))}/s"
        if p.current is not None:
            line += (
                f"; region {p.current.region.id}: {_mib(p.current_bytes)} of {_mib(p.current.size)}"
            )
        elif p.regions == self._regions:
            return
        self._regions = p.regions
        print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run `shardkv ctl backup`; returns the exit status."""
    from client.cli import UsageError, pd_addresses
    from plumbing.cli import configure_logging
    from plumbing.config_file import ConfigError, read_token_file

    configure_logging(args.log_level, log_format=args.log_format)
    try:
        pd = pd_addresses(args.pd)
        if not args.region_timeout > 0:
            raise UsageError(f"--region-timeout must be positive, got {args.region_timeout}")
        if (args.tls_cert or args.tls_key) and not (args.tls_cert and args.tls_key and args.tls_ca):
            raise UsageError("--tls-cert and --tls-key go together, with --tls-ca")
        try:
            token = (
                read_token_file(args.client_token_file, "token") if args.client_token_file else None
            )
        except ConfigError as e:
            raise UsageError(str(e)) from None
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    options = dataclasses.replace(
        BackupOptions(), chunk_size=args.chunk_size, region_timeout=args.region_timeout
    )
    started = time.monotonic()
    try:
        manifest = trio.run(
            lambda: backup(
                pd,
                Path(args.to),
                token=token,
                tls_ca=args.tls_ca,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                options=options,
                progress=None if args.quiet else _Printer(),
            )
        )
    except (ClientError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (no manifest: the backup is incomplete)", file=sys.stderr)
        return 130
    took = time.monotonic() - started
    print(
        f"backup of cluster {manifest.cluster_id}: {len(manifest.regions)} regions, "
        f"{manifest.total_keys} keys, {_mib(manifest.total_bytes)} in {took:.1f} s "
        f"({_mib(int(manifest.total_bytes / max(took, 1e-9)))}/s) -> "
        f"{Path(args.to) / MANIFEST}",
        flush=True,
    )
    return 0

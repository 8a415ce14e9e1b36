"""`StoreNode`: the trio shell around `StoreCore`.

It owns the nursery of everything the store runs: the RPC server (KV service
and Raft traffic on one port), the store loop, the ticker, the kv syncer, the
transport to other stores, the PD worker and the disk monitor. Cancelling
`run` stops all of it; a round being persisted finishes first (worker
threads are not cancellable), so a stop never tears a write. A write or
sync that fails (`store_node.disk.DiskFailure`) ends `run` with it, the
round's later messages unsent; a full disk refuses client writes at
admission.

The services (`KvService`, `PdWorker`) take it as a small Protocol each
(`kv_service.StoreAccess`, `pd_worker.StoreLoop`) and reach the core only
through the loop (`call_core`, `submit`, the deferred client entries).

With `status` set, the nursery also runs the status HTTP server
(`status_http`: `GET /metrics` from `self.metrics`, `GET /status`), bound
before the store registers with the PD, so a bad address fails the start
at once.

The store loop (one task): wait for one event, drain what else is queued (up
to `max_round_events`), end the round, send the messages that may go before
the write, persist and apply in the worker thread (one hop per round), send
the rest, advance the peers, answer the waiters. Events are plain callables
run against the core; nothing else touches the core.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from kvproto.errorpb import RegionError
from kvproto.kvrpcpb import Consistency, Context, SessionRef
from kvproto.metapb import Store, StoreId, StoreState
from kvproto.pd_client import PdClient, PdServerError, open_pd_client
from kvproto.raft_cmdpb import WriteOp
from kvproto.raft_serverpb import RaftMessage, RaftMessageBatch, SnapshotKey, StoreIdent
from kvproto.rpc import (
    RequestContext,
    RpcCallError,
    RpcServer,
    StreamOpener,
    open_tcp,
    parse_address,
)
from kvproto.rpc.auth import security_from_files
from kvproto.rpc.tls import opener_for, tls_from_files
from plumbing.logs import PROCESS_FIELDS
from store_node.admission import admit_read, admit_write, answer
from store_node.backup_copies import BackupCopies
from store_node.blob_files import BlobError, BlobStats
from store_node.blob_gc import collect
from store_node.bootstrap import load_store
from store_node.config import CoreConfig, StoreConfig
from store_node.consistency import interval_ticks
from store_node.core import StoreCore
from store_node.disk import DiskFailure, DiskMonitor
from store_node.engine import Engine
from store_node.identity import ensure_identity
from store_node.kv_service import KvService, Limits
from store_node.lease import lease_duration
from store_node.metrics import StoreMetrics
from store_node.pd_worker import PdWorker
from store_node.peer import ReadPermit, WriteDone
from store_node.persist import apply_and_truncate, must_block, persist_and_apply, persist_raft
from store_node.region_hash import hash_region, jobs_of
from store_node.round_output import RoundOutput
from store_node.snapshot import SnapDir, descriptor_of, generate
from store_node.snapshot_delta import DeltaPolicy
from store_node.snapshot_digest import TreeShape, remove_files
from store_node.snapshot_transfer import DigestService, SnapshotReceiver, send_snapshot
from store_node.split_worker import SplitWorker
from store_node.status_http import Page, StatusApp, serve_status, store_pages
from store_node.ticker import Ticker
from store_node.transport import Transport

log = logging.getLogger(__name__)

Event = Callable[[StoreCore], None]


def _no_event(core: StoreCore) -> None:
    """Wakes the loop; the work is already queued in the core."""


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoreInfo:
    store_id: StoreId
    address: str
    cluster_id: int
    # The bound address of the status HTTP server (None: not served).
    status_address: str | None = None


class RegistrationRefusedError(Exception):
    """The PD refused to register the store (a start error: e.g. its address
    is another store's)."""


class ListenAddressError(Exception):
    """The store could not listen on its RPC address (a start error)."""


class StoreNode:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.engine = Engine(
            config.data_dir,
            config.raft_dir,
            sync=config.sync,
            large_value_threshold=config.large_value_threshold,
            blob_file_size=config.blob_file_size,
        )
        self.disk = DiskMonitor((config.data_dir, config.raft_dir), config.min_free_disk)
        self.core: StoreCore | None = None
        self.pd: PdClient | None = None
        # Its RPC port's server, once serving (its limits' counters).
        self.rpc_server: RpcServer | None = None
        self.transport: Transport | None = None
        self._send_events, self._recv_events = trio.open_memory_channel[Event](
            config.max_queued_events
        )
        self._round_done = trio.Event()
        self._fatal = trio.Event()
        self._loop_idle = False
        self.rounds = 0
        self._limiter = trio.CapacityLimiter(1)
        self.snap_dir = SnapDir(Path(config.data_dir) / "snap")
        self._snap_sends = trio.Semaphore(config.max_snapshot_sends)
        self._snap_gen = trio.CapacityLimiter(1)
        self.snapshot_counts: Counter[str] = Counter()  # snapshot_transfer.SendResult.count
        self._hashing = trio.CapacityLimiter(1)  # consistency checks' region hashes
        self._nursery: trio.Nursery | None = None
        self.address = ""
        self._open_stream: StreamOpener = open_tcp  # authenticating with a cluster token
        self.raft_frames_received = 0
        self.raft_messages_received = 0
        self.splits = SplitWorker(self, config.split_check_interval, self._snap_gen)
        self.ticker = Ticker[StoreCore](config.tick_interval, self.submit, _tick)
        self.metrics = StoreMetrics(self)

    # -- lifetime -----------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[StoreInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        if not cfg.sync:
            log.warning("sync is off: acknowledged writes may be lost if the machine crashes")
        auth, creds = security_from_files(cfg.cluster_token_file, cfg.client_token_file)
        server_tls, client_tls = tls_from_files(
            cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_ca_file
        )
        opener = opener_for(client_tls, creds, cfg.source_host)
        self._open_stream = opener
        try:
            async with (
                open_pd_client(cfg.pd, open_stream=opener) as pd,
                trio.open_nursery() as nursery,
            ):
                self.pd = pd
                self._nursery = nursery
                nursery.start_soon(self.disk.run)
                self.snap_dir.clear_stale()
                receiver = SnapshotReceiver(
                    self.snap_dir, self._deliver_snapshot, max_receives=cfg.max_snapshot_receives
                )
                host, port = parse_address(cfg.listen, listen=True)
                limits = Limits(cfg.max_key_size, cfg.max_value_size)
                backups = BackupCopies(self, self.snap_dir, self.disk, self._snap_gen)
                kv_handlers = {**KvService(self, limits).handlers(), **backups.handlers()}
                # With a cluster token, a client-role connection may send the
                # KV API (backup copies included: a scan reads as much) only:
                # Raft traffic and snapshots are the stores'.
                digests = DigestService(self.engine, self._snap_gen).handlers()
                server = RpcServer(
                    {**kv_handlers, **receiver.handlers(), **digests},
                    {RaftMessageBatch: self._on_raft_batch},
                    auth=auth,
                    client_messages=kv_handlers.keys(),
                    tls=server_tls,
                    max_connections=cfg.max_connections,
                )
                self.rpc_server = server
                # Serve first (port 0 is only known once bound), but accept
                # events only once the core exists: the channel buffers them.
                try:
                    bound = await nursery.start(server.serve, host, port)
                except OSError as e:
                    raise ListenAddressError(f"cannot listen on {cfg.listen}: {e}") from e
                address = self.address = cfg.advertise or f"{bound[0]}:{bound[1]}"
                status_address: str | None = None
                if cfg.status:
                    app = StatusApp(self.status_pages(), cfg.enable_failpoints, self.disk.wake)
                    status_address = await nursery.start(
                        partial(
                            serve_status,
                            app,
                            cfg.status,
                            tls_cert_file=cfg.tls_cert_file,
                            tls_key_file=cfg.tls_key_file,
                        )
                    )
                ident, fresh_regions = await self._register(pd, address)
                PROCESS_FIELDS.fields["store"] = ident.store_id
                tombstones, regions = load_store(self.engine)
                core = StoreCore(
                    ident.store_id,
                    self.engine,
                    CoreConfig(
                        election_ticks=cfg.election_ticks,
                        heartbeat_ticks=cfg.heartbeat_ticks,
                        max_inflight_msgs=cfg.max_inflight_msgs,
                        max_inflight_bytes=cfg.max_inflight_bytes,
                        max_size_per_msg=cfg.max_size_per_msg,
                        max_entry_bytes=cfg.max_entry_bytes,
                        max_round_bytes=cfg.max_round_bytes,
                        session_ttl_ms=int(cfg.session_ttl * 1000),
                        lease_seconds=lease_duration(
                            cfg.election_ticks, cfg.tick_interval, cfg.lease_margin
                        ),
                        hibernate_after_ticks=(
                            2 * cfg.election_ticks if cfg.hibernate_regions else 0
                        ),
                        liveness_ticks=cfg.election_ticks,
                        consistency_check_ticks=interval_ticks(
                            cfg.consistency_check_interval, cfg.tick_interval
                        ),
                        log_gc=cfg.log_gc_config(),
                    ),
                    random.Random(),
                    tombstones=tombstones,
                )
                for region, apply_state in regions:
                    core.add_peer(region, apply_state, restarted=True)
                for region_id in fresh_regions:
                    core.campaign(region_id)
                self.core = core
                self.transport = Transport(
                    ident.store_id,
                    nursery,
                    self._resolve_store,
                    incarnation=random.SystemRandom().getrandbits(63),
                    open_stream=opener,
                )
                worker = PdWorker(self, pd, cfg, self.metrics.observe_pd_heartbeat)
                nursery.start_soon(self._run_loop)
                nursery.start_soon(self.ticker.run)
                nursery.start_soon(self._run_kv_syncer)
                nursery.start_soon(self._run_blob_collector)
                nursery.start_soon(self._stop_on_failure)
                nursery.start_soon(worker.run)
                nursery.start_soon(receiver.run_sweeper)
                nursery.start_soon(backups.run_sweeper)
                nursery.start_soon(self.splits.run)
                log.info(
                    "store %d serving on %s (cluster %d, %d regions)%s",
                    ident.store_id,
                    address,
                    ident.cluster_id,
                    len(core.peers),
                    "" if status_address is None else f", status on http://{status_address}",
                )
                task_status.started(
                    StoreInfo(ident.store_id, address, ident.cluster_id, status_address)
                )
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.engine.close, limiter=self._limiter)

    async def _register(self, pd: PdClient, addr: str) -> tuple[StoreIdent, list[int]]:
        """Identity and registration, retried until the PD answers: a store may
        start before its PD. (`ensure_identity` is safe to run again after any
        failure: a bootstrap that half happened is resolved from its marker.)"""
        delay, cfg = 0.1, self.config
        while True:
            try:
                return await ensure_identity(self.engine, pd, addr, cfg.labels, cfg.replace_store)
            except PdServerError as e:
                # Refused, not unreachable: retrying cannot help.
                raise RegistrationRefusedError(f"the PD refused this store: {e}") from e
            except RpcCallError as e:
                log.warning("waiting for the PD at %s: %s", ",".join(cfg.pd), e)
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- the loop -----------------------------------------------------------

    async def submit(self, event: Event) -> None:
        await self._send_events.send(event)

    def _nudge(self) -> None:
        """Wake the loop if it waits for events (after a direct core call)."""
        if self._loop_idle:
            self._loop_idle = False
            with contextlib.suppress(trio.WouldBlock):
                self._send_events.send_nowait(_no_event)

    async def _run_loop(self) -> None:
        core = self.core
        assert core is not None
        max_events = self.config.max_round_events
        while True:
            if not core.has_work():
                self._loop_idle = True
                event = await self._recv_events.receive()
                self._loop_idle = False
                event(core)
            n = 1
            while n < max_events:
                try:
                    event = self._recv_events.receive_nowait()
                except trio.WouldBlock:
                    break
                event(core)
                n += 1
            if not core.has_work():
                continue
            await self._round(core)

    async def _round(self, core: StoreCore) -> None:
        out = core.end_round(trio.current_time())
        transport = self.transport
        assert transport is not None
        flushed = True
        for store_id, msgs in out.messages_now.items():
            flushed = transport.send(store_id, msgs) and flushed
        for store_id in out.pings:
            if not out.messages_now.get(store_id):
                transport.send(store_id, [], ping=True)
        idle = self._recv_events.statistics().current_buffer_used == 0
        if must_block(self.engine, out, idle, flushed):
            outcomes = await trio.to_thread.run_sync(
                persist_and_apply, self.engine, out, limiter=self._limiter
            )
            self._send_after_persist(out)
        elif out.snapshot_tasks or out.destroy_tasks:
            outcomes = persist_and_apply(self.engine, out)
            self._send_after_persist(out)
        else:
            # What a follower vouches for is durable once the raft/ batch is:
            # its answers leave before the kv/ apply and its own fsync.
            persist_raft(self.engine, out)
            self._send_after_persist(out)
            outcomes = apply_and_truncate(self.engine, out)
        answer(core.after_persist(out, outcomes))
        self._start_snapshot_work(core, out)
        for job in jobs_of(outcomes):
            assert self._nursery is not None
            self._nursery.start_soon(hash_region, job, self._hashing, self.submit)
        self.rounds += 1
        self.metrics.observe_round(out)
        if core.heartbeat_due or core.split_reports or core.consistency.reports:
            self._round_done.set()
            self._round_done = trio.Event()

    def _send_after_persist(self, out: RoundOutput) -> None:
        transport = self.transport
        assert transport is not None
        for store_id, msgs in out.messages_after_persist.items():
            transport.send(store_id, msgs)

    # -- snapshots ----------------------------------------------------------

    def _start_snapshot_work(self, core: StoreCore, out: RoundOutput) -> None:
        nursery = self._nursery
        assert nursery is not None
        for path in out.obsolete_files:
            remove_files(path)
        for region_id in out.generate_snapshots:
            nursery.start_soon(self._generate_snapshot, region_id)
        for store_id, msg, path in out.snapshot_sends:
            nursery.start_soon(self._send_snapshot, core.store_id, store_id, msg, path)
        for region in out.split_checks:
            self.splits.due(region)

    async def split_region(self, region_id: int, keys: tuple[bytes, ...]) -> None:
        await self.splits.split_region(region_id, keys)

    async def _generate_snapshot(self, region_id: int) -> None:
        # The hash tree of an incremental catch-up comes from the same scan.
        shape = TreeShape() if self.config.incremental_snapshots else None
        try:
            snap, path = await trio.to_thread.run_sync(
                generate, self.engine, self.snap_dir, region_id, shape, limiter=self._snap_gen
            )
        except BlobError as e:
            self.fail(e)
            return
        except Exception:
            log.exception("region %d: snapshot generation failed", region_id)
            await self.submit(lambda core: core.on_snapshot_generation_failed(region_id))
            return
        old = await self.call_core(lambda core: core.on_snapshot_generated(region_id, snap, path))
        if old is not None:
            remove_files(old)

    async def _send_snapshot(
        self, from_store: StoreId, to_store: StoreId, msg: RaftMessage, path: Path
    ) -> None:
        snap = msg.message.snapshot
        assert snap is not None
        desc = descriptor_of(snap)
        key = SnapshotKey(msg.region_id, desc.term, desc.index, from_store)
        ok = False
        async with self._snap_sends:
            address = await self._resolve_store(to_store)
            if address is not None:
                try:
                    started = trio.current_time()
                    res = await send_snapshot(
                        address,
                        key,
                        msg,
                        path,
                        chunk_size=self.config.snapshot_chunk_size,
                        open_stream=self._open_stream,
                        delta=DeltaPolicy() if self.config.incremental_snapshots else None,
                    )
                    ok = True
                    res.count(self.snapshot_counts)
                    log.info(
                        "region %d: %ssnapshot %d/%d sent to store %d: %d bytes in %.2f s%s",
                        msg.region_id,
                        "delta " if res.delta else "",
                        desc.index,
                        desc.term,
                        to_store,
                        res.sent,
                        trio.current_time() - started,
                        f" (whole: {res.full_size})" if res.delta else "",
                    )
                except Exception as e:  # any failure: Raft retries later
                    log.warning(
                        "region %d: snapshot to store %d failed: %s", msg.region_id, to_store, e
                    )
        region_id, to_peer = msg.region_id, msg.to_peer.id
        await self.submit(lambda core: core.report_snapshot(region_id, to_peer, ok))

    async def _deliver_snapshot(self, msg: RaftMessage, path: Path) -> bool:
        return await self.call_core(lambda core: core.on_snapshot_received(msg, path))

    async def call_core(self, fn: Callable[[StoreCore], T]) -> T:
        """Run `fn` in the store loop between rounds and return its result."""
        done = trio.Event()
        box: list[T] = []

        def event(core: StoreCore) -> None:
            box.append(fn(core))
            done.set()

        await self.submit(event)
        await done.wait()
        return box[0]

    def used_bytes(self) -> int:
        return self.engine.used_bytes()

    def count_read(self, region_id: int, nbytes: int, nkeys: int) -> None:
        """What a read served at a permit returned (the region's read flow)."""
        if self.core is not None:
            self.core.count_read(region_id, nbytes, nkeys)

    def fail(self, error: DiskFailure) -> None:
        """Stop the store for `error`, found outside the write path (a blob
        that does not read back as written): `run` ends with it."""
        self.engine.fail(error)
        self._fatal.set()

    async def _stop_on_failure(self) -> None:
        await self._fatal.wait()
        assert self.engine.failed is not None
        raise self.engine.failed

    def blob_usage(self) -> BlobStats:
        return self.engine.blobs.usage()

    def loop_counters(self) -> dict[str, int]:
        """Counters of the shell (the core keeps its own)."""
        transport = self.transport
        return {
            "rounds": self.rounds,
            "raft_frames_sent": transport.sent_frames if transport else 0,
            "raft_messages_sent": transport.sent_messages if transport else 0,
            "raft_messages_dropped": transport.dropped if transport else 0,
            "raft_frames_received": self.raft_frames_received,
            "raft_messages_received": self.raft_messages_received,
            "ticks_skipped": self.ticker.skipped,
            **self.snapshot_counts,
        }

    def queued_events(self) -> int:
        """Events waiting for the store loop."""
        return self._recv_events.statistics().current_buffer_used

    def status_pages(self) -> dict[str, Callable[[], Page]]:
        return store_pages(self)

    async def pd_work_due(self) -> None:
        """Wait until the PD must hear of something (a leader or epoch
        changed, a split happened)."""
        await self._round_done.wait()

    async def _run_kv_syncer(self) -> None:
        while True:
            await trio.sleep(self.config.kv_sync_interval)
            await trio.to_thread.run_sync(self.engine.sync_kv)

    async def _run_blob_collector(self) -> None:
        """Collect blob files (`blob_gc.collect`), first at once: files a
        crash left behind go now (after a kv/ sync makes their end final)."""
        await trio.to_thread.run_sync(self.engine.sync_kv, limiter=self._limiter)
        ratio = self.config.blob_gc_discardable_ratio
        while True:
            report = await trio.to_thread.run_sync(
                lambda: collect(self.engine, discardable_ratio=ratio), limiter=self._limiter
            )
            # Files left over a pass's rewrite budget go a second later.
            interval = self.config.blob_gc_interval
            await trio.sleep(min(1.0, interval) if report.more else interval)

    # -- requests -----------------------------------------------------------

    # Client requests enter the core directly (store_node.admission); the
    # loop is nudged if it sleeps.

    def submit_write(
        self,
        ctx: Context,
        ops: tuple[WriteOp, ...],
        nbytes: int,
        session: SessionRef | None,
        done: Callable[[WriteDone | RegionError], None],
    ) -> None:
        """`write` for deferred handlers: `done` gets the reply in the loop."""
        admit_write(self.core, ctx, ops, nbytes, session, done, self.disk.refusal)
        self._nudge()

    def submit_read(
        self,
        ctx: Context,
        bounds: Sequence[bytes],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        """`read` for deferred handlers: `done` gets the permit now (the
        leader's lease) or in the loop."""
        admit_read(self.core, ctx, bounds, done, now=trio.current_time())
        if self.core is not None and self.core.has_work():
            self._nudge()  # queued: a lease read served at once needs no round

    def submit_replica_read(
        self,
        ctx: Context,
        bounds: Sequence[bytes],
        consistency: Consistency,
        max_staleness: float,
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        """`replica_read` for deferred handlers (follower and stale reads)."""
        admit_read(self.core, ctx, bounds, done, consistency, max_staleness)
        self._nudge()

    async def _on_raft_batch(self, batch: RaftMessageBatch, _: RequestContext) -> None:
        msgs = batch.messages
        self.raft_frames_received += 1
        self.raft_messages_received += len(msgs)

        def step(core: StoreCore) -> None:
            core.heard_from_store(batch.from_store, batch.incarnation)
            for m in msgs:
                core.step_raft(m)

        await self.submit(step)

    async def _resolve_store(self, store_id: StoreId) -> str | None:
        pd = self.pd
        assert pd is not None
        try:
            store = await pd.get_store(store_id)
        except Exception as e:  # a PD hiccup must not kill a sender task
            log.debug("resolving store %d: %s", store_id, e)
            return None
        return dialable_address(store)


def dialable_address(store: Store | None) -> str | None:
    """Where to send a store's Raft messages: nowhere for a tombstone (its
    peers linger in regions until the replica checker removes them, and
    its address may be a new store's, `--replace-store`)."""
    if store is None or store.state == StoreState.TOMBSTONE:
        return None
    return store.address


def _tick(core: StoreCore) -> None:
    # The wall clock stamps commands (session expiry reads it).
    core.tick(now_ms=int(time.time() * 1000))

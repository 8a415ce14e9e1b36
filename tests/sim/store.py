"""A store in the simulation: the real `StoreCore`, `KvService` and engine
(real LMDB in a temp dir, behind the `SimEngine` disk model), driven the way
`store_node.node.StoreNode` drives them, on the simulation's clock.

A round is two events, as in the real store where the loop hands the write
to a worker thread: at its start `end_round()` runs and the messages that may
leave before the write (a leader's appends) are sent; one fsync later the
batch is persisted and applied, the other messages are sent, and waiters
are answered. A crash in between loses the round's writes, like a process
killed during its fsync. Between rounds the store takes the queued events
(Raft messages, snapshot reports, PD orders); client requests enter the core
at once (admission only queues work for the next round), as in the real one.

Snapshots move as in a store (store_node.snapshot_transfer): the sender
first compares hash trees with the receiver's copy (store_node.snapshot_delta,
against the receiver's engine at that instant) and, if a delta is possible,
delivers it a little later, the receiver's copy free to move meanwhile; a
refused delta is followed by the whole file. `on_next_install` crashes the
store in the middle of its next round that installs a snapshot: after the
kv/ transaction, before the kv/ sync and the log reset.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

from kvproto import pdpb
from kvproto.errorpb import RegionError
from kvproto.kvrpcpb import Consistency, Context, SessionRef
from kvproto.metapb import Region, StoreId
from kvproto.raft_cmdpb import WriteOp
from kvproto.raft_serverpb import RaftMessage, SnapshotKey
from kvproto.rpc import Deferred, RequestContext
from store_node.admission import admit_read, admit_write, answer
from store_node.blob_gc import collect
from store_node.bootstrap import load_store
from store_node.config import CoreConfig
from store_node.core import StoreCore
from store_node.disk import DiskFailure
from store_node.engine import Engine
from store_node.kv_service import KvService, Limits
from store_node.pd_worker import execute_order, has_core_order, region_heartbeat_request
from store_node.peer import ReadPermit, WriteDone
from store_node.persist import apply_and_truncate, persist_and_apply, persist_raft
from store_node.region_hash import HashJob, jobs_of
from store_node.round_output import RoundOutput
from store_node.snapshot import SnapDir, descriptor_of, generate, verify
from store_node.snapshot_delta import DeltaPolicy, NoDelta, compare, prepare
from store_node.snapshot_digest import TreeError, TreeShape, remove_files
from store_node.split import scan_region
from store_node.split_worker import SPLIT_ORDER
from tests.sim.digests import region_digest, snapshot_file_digest
from tests.sim.disk import SimEngine, SyncMode
from tests.sim.pd import SimPd
from tests.sim.world import Net, World

log = logging.getLogger(__name__)

TICK = 0.1
REGION_HEARTBEAT_INTERVAL = 1.0
STORE_HEARTBEAT_INTERVAL = 1.0
KV_SYNC_INTERVAL = 5.0
# Large values apart: tiny files, collected often, so that files fill, die,
# are rewritten and deleted all through a run.
BLOB_FILE_SIZE = 256
BLOB_GC_INTERVAL = 1.0
# The simulation's regions hold a few short pairs: a leaf per key, groups of
# a few, and a delta whenever the copy allows (however large), so that the
# comparisons and delta installs are many.
TREE_SHAPE = TreeShape(leaf_keys=1, leaf_bytes=1 << 20, group_bytes=24)
DELTA_POLICY = DeltaPolicy(max_fraction=1.0)

Event = Callable[[StoreCore], None]
T = TypeVar("T")


class SimStore:
    def __init__(
        self,
        world: World,
        net: Net,
        pd: SimPd,
        store_id: int,
        root: Path,
        config: CoreConfig,
        kv_mode: SyncMode,
        clock_rate: float = 1.0,
        large_value_threshold: int = 0,
        delta_delay: float = 0.05,
    ) -> None:
        self.world = world
        self.net = net
        self.pd = pd
        self.store_id = StoreId(store_id)
        self.name = f"s{store_id}"
        self.root = root
        self.config = config
        self.kv_mode = kv_mode
        self.large_value_threshold = large_value_threshold
        # The longest a delta takes from the comparison to its arrival.
        self.delta_delay = delta_delay
        # (region, index, term) of a snapshot sent here -> the digest of the
        # copy it holds: an install, whole or delta, must leave exactly it.
        self.expected_installs: dict[tuple[int, int, int], int] = {}
        self.others: dict[int, SimStore] = {}
        self.up = False
        self.incarnation = 0
        # Open calls (insertion order: a crash breaks them in a replayable order).
        self.connections: dict[Callable[[], None], None] = {}
        self.engine: Engine  # a SimEngine while up
        self.core: StoreCore | None = None
        self.snap_dir: SnapDir
        self._events: deque[Event] = deque()
        self._in_round = False
        self._pump_due = False
        # Called (once) when the next round that writes starts, to crash
        # stores in the middle of its fsync.
        self.on_next_write: Callable[[], None] | None = None
        # Called (once) in the middle of the next round that installs a
        # snapshot (kept across restarts: a store back from a crash is the
        # one likely to need one).
        self.on_next_install: Callable[[], None] | None = None
        # SIGSTOP: nothing runs; what arrives waits in arrival order.
        self.paused = False
        self._held: deque[Callable[[], None]] = deque()
        # How far this machine's wall clock is off (commands carry it).
        self.clock_skew_ms = 0
        # How fast this machine's monotonic clock runs against true time
        # (1 +- drift): its ticks and its leader leases both follow it.
        self.clock_rate = clock_rate
        self.handlers = {
            t: h.fn
            for t, h in KvService(self, Limits()).handlers().items()
            if isinstance(h, Deferred)
        }
        self.rounds = 0
        # The cluster this store belongs to, set at the simulation's
        # bootstrap (a real store keeps it in its ident): every PD request
        # names it, as the PD refuses 0 there.
        self.cluster_id = 0
        # Store counters of the incarnations before this one.
        self._stats_before: Counter[str] = Counter()
        # Blob collection work over every incarnation.
        self.blob_stats: Counter[str] = Counter()

    def pd_header(self) -> pdpb.RequestHeader:
        return pdpb.RequestHeader(self.cluster_id)

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        engine = SimEngine(
            self.root,
            sync=True,
            # Durability is the disk model's; real fsyncs would only be slow.
            flush_to_disk=False,
            rng=random.Random(self.world.rng.getrandbits(64)),
            kv_mode=self.kv_mode,
            large_value_threshold=self.large_value_threshold,
            blob_file_size=BLOB_FILE_SIZE,
        )
        self.engine = engine
        self.snap_dir = SnapDir(self.root / "snap")
        self.snap_dir.clear_stale()
        tombstones, regions = load_store(engine)
        core = StoreCore(
            self.store_id,
            engine,
            self.config,
            random.Random(self.world.rng.getrandbits(64)),
            tombstones=tombstones,
        )
        for region, apply_state in regions:
            core.add_peer(region, apply_state, restarted=True)
        self.core = core
        self._events.clear()
        self._held.clear()
        self.paused = False
        self.on_next_write = None
        self._in_round = False
        self._pump_due = False
        self.up = True
        self.incarnation += 1
        inc = self.incarnation
        self.world.at(self._tick_interval(), self._tick, inc)
        self.world.at(self.world.rng.uniform(0, 1), self._region_heartbeats, inc)
        self.world.at(self.world.rng.uniform(0, 1), self._store_heartbeat, inc)
        self.world.at(KV_SYNC_INTERVAL, self._sync_kv, inc)
        if self.large_value_threshold:
            self.world.at(BLOB_GC_INTERVAL, self._collect_blobs, inc)
        self._nudge()

    def stop(self, *, power_loss: bool) -> None:
        """SIGKILL (`power_loss` False) or a machine crash."""
        assert isinstance(self.engine, SimEngine)
        loss = self.engine.power_loss() if power_loss else self.engine.crash()
        self.world.log(f"{self.name}: {'power loss' if power_loss else 'crash'}: lost {loss}")
        self._forget_core()
        for broken in list(self.connections):
            broken()
        self.connections.clear()

    def pause(self) -> None:
        """SIGSTOP: the process stops; its timers, rounds and inputs wait."""
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: what arrived meanwhile is taken in arrival order."""
        self.paused = False
        while self._held and not self.paused:
            self._held.popleft()()
        self._nudge()

    def close(self) -> None:
        if self.up:
            self._forget_core()
            self.engine.close()

    def _forget_core(self) -> None:
        self._stats_before += Counter(self.core.stats if self.core else {})
        self.up = False
        self.incarnation += 1
        self.core = None

    def stats(self) -> Counter[str]:
        """The store's counters (`StoreCore.stats`), over its lives."""
        return self._stats_before + Counter(self.core.stats if self.core else {}) + self.blob_stats

    # -- inputs ------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        if self.paused:
            self._held.append(partial(self.submit, event))
            return
        self._events.append(event)
        self._nudge()

    def receive(self, msgs: Sequence[RaftMessage], from_store: StoreId, incarnation: int) -> None:
        if not self.up:
            return

        def step(core: StoreCore) -> None:
            core.heard_from_store(from_store, incarnation)
            for m in msgs:
                core.step_raft(m)

        self.submit(step)

    # The node interface of KvService (store_node.node.StoreNode's).

    def submit_write(
        self,
        ctx: Context,
        ops: tuple[WriteOp, ...],
        nbytes: int,
        session: SessionRef | None,
        done: Callable[[WriteDone | RegionError], None],
    ) -> None:
        admit_write(self.core, ctx, ops, nbytes, session, done)
        self._nudge()

    def submit_read(
        self,
        ctx: Context,
        bounds: Sequence[bytes],
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        admit_read(self.core, ctx, bounds, done, now=self.monotonic())
        self._nudge()

    def submit_replica_read(
        self,
        ctx: Context,
        bounds: Sequence[bytes],
        consistency: Consistency,
        max_staleness: float,
        done: Callable[[ReadPermit | RegionError], None],
    ) -> None:
        admit_read(self.core, ctx, bounds, done, consistency, max_staleness)
        self._nudge()

    async def call_core(self, fn: Callable[[StoreCore], T]) -> T:
        # Only the status request calls into the loop; the simulation
        # never sends it.
        raise NotImplementedError("the simulation has no store status calls")

    def count_read(self, region_id: int, nbytes: int, nkeys: int) -> None:
        if self.core is not None:
            self.core.count_read(region_id, nbytes, nkeys)

    def fail(self, error: DiskFailure) -> None:
        raise error  # a real store stops; here the run fails

    def loop_counters(self) -> dict[str, int]:
        return {"rounds": self.rounds}

    def serve(self, request: object, respond: Callable[[object], None]) -> None:
        if self.paused:
            self._held.append(partial(self.serve, request, respond))
            return
        handler = self.handlers[type(request)]
        handler(request, RequestContext("sim", 0, 0), respond)

    # -- the loop -------------------------------------------------------------------

    def _nudge(self) -> None:
        if not self._pump_due and not self._in_round and self.up:
            self._pump_due = True
            self.world.at(0.00005, self._pump, self.incarnation)

    def _pump(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        self._pump_due = False
        if self.paused:
            return  # resume() nudges again
        core = self.core
        assert core is not None
        while self._events:
            self._events.popleft()(core)
        if core.has_work():
            self._start_round(core)

    def _start_round(self, core: StoreCore) -> None:
        out = core.end_round(self.monotonic())
        self._send(out.messages_now, out.pings)
        self._in_round = True
        fsync = self.world.rng.uniform(0.0002, 0.001) if out.raft_batch.ops else 0.00002
        self.world.at(fsync, self._finish_round, self.incarnation, out)
        if out.raft_batch.ops and self.on_next_write is not None:
            hook, self.on_next_write = self.on_next_write, None
            self.world.at(fsync / 2, hook)

    def _finish_round(self, inc: int, out: RoundOutput) -> None:
        if inc != self.incarnation:
            return  # died during the write
        if self.paused:
            self._held.append(partial(self._finish_round, inc, out))
            return
        core = self.core
        assert core is not None
        if out.snapshot_tasks and self.on_next_install is not None:
            hook, self.on_next_install = self.on_next_install, None
            # The install's kv/ transaction commits; the kv/ sync and the log
            # reset that follow it never happen (the store dies first).
            persist_raft(self.engine, out)
            out.raft_after_kv.ops.clear()
            apply_and_truncate(self.engine, out)
            hook()
            assert not self.up, "on_next_install must stop the store"
            return
        outcomes = persist_and_apply(self.engine, out)
        for task in out.snapshot_tasks:
            expected = self.expected_installs.pop((task.region.id, task.index, task.term), None)
            if expected is not None and region_digest(self.engine, task.region) != expected:
                raise AssertionError(
                    f"{self.name}: region {task.region.id}: the copy installed from snapshot "
                    f"{task.index}/{task.term} is not the snapshot's"
                )
        self._send(out.messages_after_persist)
        answer(core.after_persist(out, outcomes))
        self.rounds += 1
        for path in out.obsolete_files:
            remove_files(path)
        for region_id in out.generate_snapshots:
            self.world.at(0.002, self._generate_snapshot, inc, region_id)
        for to_store, msg, path in out.snapshot_sends:
            self.world.at(0.005, self._send_snapshot, inc, to_store, msg, path)
        for region in out.split_checks:
            self._split_check(core, region, ())
        for regions in core.take_split_reports():
            self.pd.call(pdpb.ReportBatchSplitRequest(self.pd_header(), regions), _ignore)
        for job in jobs_of(outcomes):
            self._hash(inc, job)
        for report in core.consistency.take_reports():
            self.pd.call(dataclasses.replace(report, header=self.pd_header()), _ignore)
        for peer in core.take_heartbeat_due():
            self._region_heartbeat(core, peer.region_id)
        self._in_round = False
        if self._events or core.has_work():
            self._nudge()

    def _hash(self, inc: int, job: HashJob) -> None:
        """A consistency check's pinned copy: hashed now (so no pin outlives
        the round), its digest handed to the core a little later, as the
        store's hashing thread does."""
        digest = job.pinned.run()
        region_id, index = job.region.id, job.index

        def computed() -> None:
            if inc == self.incarnation:
                self.submit(lambda core: core.on_hash_computed(region_id, index, digest))

        self.world.at(self.world.rng.uniform(0.0005, 0.02), computed)

    def _send(
        self, by_store: dict[StoreId, list[RaftMessage]], pings: Sequence[StoreId] = ()
    ) -> None:
        """Each store's batch (an empty one, this store's liveness, to the
        stores in `pings` that get nothing else), stamped with this life's
        incarnation as the store's transport stamps its own."""
        for store_id in sorted(set(by_store) | set(pings)):
            msgs = by_store.get(store_id, [])
            if not msgs and store_id not in pings:
                continue
            target = self.others.get(store_id)
            if target is not None:
                deliver = partial(target.receive, msgs, self.store_id, self.incarnation)
                self.net.datagram(self.name, target.name, deliver)

    # -- timers -----------------------------------------------------------------------

    def _tick(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        if self.paused:
            # A stopped process misses its ticks; the ticker takes one when
            # it runs again (store_node.node's ticker does the same).
            self.world.at(self._tick_interval(), self._tick, inc)
            return
        self.submit(partial(StoreCore.tick, now_ms=self.world.wall_ms() + self.clock_skew_ms))
        self.world.at(self._tick_interval(), self._tick, inc)

    def _tick_interval(self) -> float:
        """TICK by this machine's clock, in true time."""
        return TICK / self.clock_rate

    def monotonic(self) -> float:
        """This machine's monotonic clock (it runs on through a pause)."""
        return 1000.0 + self.world.now * self.clock_rate

    def _sync_kv(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        self.engine.sync_kv()
        self.world.at(KV_SYNC_INTERVAL, self._sync_kv, inc)

    def _collect_blobs(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        if not self.paused:
            report = collect(self.engine, discardable_ratio=0.5)
            self.blob_stats["blob_files_retired"] += len(report.retired) + len(report.rewritten)
            self.blob_stats["blob_bytes_rewritten"] += report.rewritten_bytes
        self.world.at(BLOB_GC_INTERVAL, self._collect_blobs, inc)

    # -- snapshots --------------------------------------------------------------------

    def _generate_snapshot(self, inc: int, region_id: int) -> None:
        if inc != self.incarnation:
            return

        def generated(core: StoreCore) -> None:
            try:
                snap, path = generate(self.engine, self.snap_dir, region_id, TREE_SHAPE)
            except Exception as e:  # the region went meanwhile
                self.world.log(f"{self.name}: snapshot of region {region_id} failed: {e}")
                core.on_snapshot_generation_failed(region_id)
                return
            old = core.on_snapshot_generated(region_id, snap, path)
            if old is not None:
                remove_files(old)

        self.submit(generated)

    def _send_snapshot(self, inc: int, to_store: int, msg: RaftMessage, path: Path) -> None:
        if inc != self.incarnation:
            return
        target = self.others.get(to_store)
        rid, to_peer = msg.region_id, msg.to_peer.id

        def report(ok: bool) -> None:
            if inc == self.incarnation:
                self.submit(lambda core: core.report_snapshot(rid, to_peer, ok))

        if (
            target is None
            or not target.up
            or not self.net.allows(self.name, target.name)
            or not path.exists()
        ):
            report(False)
            return
        snap = msg.message.snapshot
        assert snap is not None
        desc = descriptor_of(snap)
        key = SnapshotKey(msg.region_id, desc.term, desc.index, self.store_id)
        target.expected_installs[rid, desc.index, desc.term] = snapshot_file_digest(path, rid)

        def whole() -> Callable[[StoreCore], None] | None:
            """The whole file copied to the target (None: it is gone, a
            newer snapshot replaced it), and its delivery there."""
            if not path.exists():
                return None
            dest = target.snap_dir.received(key)
            shutil.copyfile(path, dest)
            verify(dest, desc)

            def deliver(core: StoreCore) -> None:
                ok = core.on_snapshot_received(msg, dest)
                if not ok:
                    dest.unlink(missing_ok=True)
                report(ok)

            return deliver

        delta = self._delta(target, key, msg, path)
        if delta is None:
            deliver = whole()
            assert deliver is not None
            target.submit(deliver)
            return
        delta_msg, dest = delta
        incarnation = target.incarnation

        def arrive() -> None:
            if target.incarnation != incarnation or not self.net.allows(self.name, target.name):
                dest.unlink(missing_ok=True)  # the connection broke: Raft retries
                report(False)
            else:
                target.submit(install)

        def install(core: StoreCore) -> None:
            if core.on_snapshot_received(delta_msg, dest):
                report(True)
                return
            dest.unlink(missing_ok=True)
            # The copy moved: the whole file, on the same connection.
            deliver = whole()
            if deliver is None:
                report(False)
            else:
                deliver(core)

        # The delta leaves some time after the comparison: the copy may move.
        self.world.at(self.world.rng.uniform(0.001, self.delta_delay), arrive)

    def _delta(
        self, target: SimStore, key: SnapshotKey, msg: RaftMessage, path: Path
    ) -> tuple[RaftMessage, Path] | None:
        """The delta of the snapshot `msg` against `target`'s copy now, or
        None (no usable copy, or the target is stopped: the exchange would
        time out)."""
        if target.paused:
            return None
        dest = target.snap_dir.received(key, delta=True)
        try:
            delta = prepare(path, msg, key, partial(compare, target.engine), DELTA_POLICY, dest)
        except (NoDelta, TreeError) as e:
            self.world.log(f"{self.name}: region {msg.region_id} to {target.name} whole: {e}")
            return None
        snap = delta.message.snapshot
        assert snap is not None
        verify(dest, descriptor_of(snap))
        return delta, dest

    # -- splits and the PD ------------------------------------------------------------

    def _split_check(self, core: StoreCore, region: Region, forced: tuple[bytes, ...]) -> None:
        inc = self.incarnation
        limits = core.split_limits or (1 << 62, 1 << 62)
        res = scan_region(self.engine, region, limits[0], limits[1])
        split_keys = forced or res.split_keys
        target = core.on_split_checked(
            region.id, res.size, res.keys, split_keys, region.epoch.version
        )
        if target is None:
            return

        def with_ids(resp: object | None) -> None:
            if inc != self.incarnation or not isinstance(resp, pdpb.AskBatchSplitResponse):
                return
            if resp.header.error is not None:
                return
            ids = [(i.new_region_id, tuple(i.new_peer_ids)) for i in resp.ids]

            def propose(core: StoreCore) -> None:
                refused = core.propose_split(SPLIT_ORDER, region.id, target.epoch, split_keys, ids)
                if refused is not None:
                    self.world.log(f"{self.name}: split of {region.id} refused: {refused}")

            self.submit(propose)

        request = pdpb.AskBatchSplitRequest(self.pd_header(), target, len(split_keys))
        self.pd.call(request, with_ids)

    def _region_heartbeats(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        if self.paused:
            self.world.at(REGION_HEARTBEAT_INTERVAL, self._region_heartbeats, inc)
            return
        core = self.core
        assert core is not None
        for peer in core.leader_regions():
            self._region_heartbeat(core, peer.region_id)
        self.world.at(REGION_HEARTBEAT_INTERVAL, self._region_heartbeats, inc)

    def _region_heartbeat(self, core: StoreCore, region_id: int) -> None:
        peer = core.peers.get(region_id)
        if peer is None or not peer.is_leader() or not peer.initialized:
            return
        inc = self.incarnation
        request = replace(
            region_heartbeat_request(
                peer,
                core.heard_ticks(peer),
                core.ticks,
                TICK,
                down_after_ticks=2 * self.config.election_ticks,
            ),
            header=self.pd_header(),  # as the store's PdClient does
        )

        def on_answer(resp: object | None) -> None:
            if inc != self.incarnation or not isinstance(resp, pdpb.RegionHeartbeatResponse):
                return
            if resp.split_region is not None:
                self.submit(partial(self._split_order, region_id, resp.split_region.keys))
            if has_core_order(resp):
                self.submit(partial(execute_order, region_id=region_id, resp=resp))

        self.pd.call(request, on_answer)

    def _split_order(self, region_id: int, keys: tuple[bytes, ...], core: StoreCore) -> None:
        peer = core.peers.get(region_id)
        if peer is not None and peer.is_leader():
            self._split_check(core, peer.region, keys)

    def _store_heartbeat(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        if self.paused:
            self.world.at(STORE_HEARTBEAT_INTERVAL, self._store_heartbeat, inc)
            return
        core = self.core
        assert core is not None
        stats = pdpb.StoreStats(
            store_id=self.store_id,
            capacity=1 << 40,
            available=1 << 39,
            region_count=len(core.peers),
            leader_count=len(core.leader_regions()),
        )

        def on_answer(resp: object | None) -> None:
            if inc != self.incarnation or not isinstance(resp, pdpb.StoreHeartbeatResponse):
                return
            if resp.region_max_size and resp.region_max_keys:
                limits = (resp.region_max_size, resp.region_max_keys)

                def learn(core: StoreCore) -> None:
                    core.split_limits = limits

                self.submit(learn)

        self.pd.call(pdpb.StoreHeartbeatRequest(self.pd_header(), stats), on_answer)
        self.world.at(STORE_HEARTBEAT_INTERVAL, self._store_heartbeat, inc)


def _ignore(_: object | None) -> None:
    pass

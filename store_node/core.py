"""`StoreCore`: the store's decisions, without sockets, threads or a clock.

The shell (`StoreNode`) feeds it events and runs one round at a time:

1. events: `step_raft`, `tick`, `propose_write`, `read`, `replica_read`,
   `change_peer`, `transfer_leader`, `check_consistency`, `on_hash_computed`
   (each marks the region dirty; admission errors are returned at once);
2. `end_round(now)` serves reads from leader leases and stale reads from
   applied states, flushes the round's queued writes and reads into the
   Raft nodes and collects `Ready` from dirty peers only: one `raft/` write
   batch for all regions, the messages to send now and after the write,
   grouped by destination store, and the apply tasks;
3. the shell sends `messages_now`, persists the batch (one transaction, one
   fsync), applies the tasks in one `kv/` transaction, sends
   `messages_after_persist`;
4. `after_persist(output, outcomes)` advances the peers and returns the
   replies for clients.

Time reaches it only as `tick()` (Raft's clock, and the wall clock that
stamps commands) and as `end_round(now)` (the monotonic clock of leases
and of stale reads' freshness); it iterates regions in id order.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from kvproto import epoch
from kvproto.errorpb import (
    EpochNotMatch,
    NotLeader,
    RegionError,
    RegionNotFound,
    StoreNotMatch,
)
from kvproto.kvrpcpb import Consistency, Context, SessionRef
from kvproto.metapb import Peer as PeerMeta
from kvproto.metapb import PeerId, Region, RegionEpoch, RegionId, StoreId
from kvproto.raft_cmdpb import (
    ChangePeerRequest,
    WriteOp,
)
from kvproto.raft_serverpb import RaftMessage
from plumbing.logs import log_fields
from raft.config import Config as RaftConfig
from raft.errors import (
    ConfChangeError,
)
from raft.node import Ready
from raft.types import MessageType, Role, Snapshot
from store_node import commands, consistency, membership, queries, snapshot_control
from store_node.apply import ApplyOutcome, ApplyTask
from store_node.config import CoreConfig
from store_node.engine import Engine, WriteBatch
from store_node.hibernate import Hibernation
from store_node.log_gc import LogGc
from store_node.peer import Flow, Peer, ReadPermit, Reply, Token
from store_node.peer_life import (
    Create,
    Early,
    PeerLife,
    other_ranges,
    overlapping,
    start_peer,
)
from store_node.peer_storage import RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM
from store_node.records import ApplyState
from store_node.round_output import RoundOutput
from store_node.snapshot import descriptor_of
from store_node.snapshot_control import ReceivedSnapshots
from store_node.snapshot_delta import delta_refusal
from store_node.split_control import SplitControl

log = logging.getLogger(__name__)


class StoreCore:
    """Every peer of one store, and the rules for driving them."""

    def __init__(
        self,
        store_id: StoreId,
        engine: Engine,
        config: CoreConfig | None = None,
        rng: random.Random | None = None,
        tombstones: Iterable[Region] = (),
    ) -> None:
        self.store_id = store_id
        self.engine = engine
        self.config = config or CoreConfig()
        self.rng = rng or random.Random(store_id)
        self.peers: dict[int, Peer] = {}
        self._dirty: set[int] = set()
        # Regions whose leader or epoch changed since the PD last heard.
        self.heartbeat_due: set[int] = set()
        self.life = PeerLife(store_id, tombstones)
        # Received snapshot files, by (region id, index, term), waiting for
        # their peer's Ready.
        self.received_snapshots = ReceivedSnapshots()
        # Answers decided between rounds (reads that timed out), sent with the next.
        self._replies: list[Reply] = []
        self.log_gc = LogGc(self.config.log_gc)
        # Counters since start, reported as store metrics (store_node.metrics
        # reads them when scraped: plain ints, as they change every round).
        self.stats: dict[str, int] = defaultdict(int)
        # Ticks since the store started (the store's notion of time).
        self.ticks = 0
        # The wall clock as of the latest tick (milliseconds since the epoch).
        self.now_ms = 0
        self.splits = SplitControl()
        # Which peers are awake (ticked), and the stores' liveness.
        self.hibernation = Hibernation(
            self.peers,
            self.stats,
            after_ticks=self.config.hibernate_after_ticks,
            liveness_ticks=self.config.liveness_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
        )
        self.consistency = consistency.ConsistencyChecks(
            store_id,
            self.peers,
            self.stats,
            self.config.consistency_check_ticks,
            self.rng,
            touch=self._touch,
            # A round after a digest came in: the PD worker sends it then.
            # (A lambda: `_dirty` is a new set every round.)
            run_round=lambda region_id: self._dirty.add(region_id),  # noqa: PLW0108
        )

    # -- peers -------------------------------------------------------------

    def add_peer(
        self,
        region: Region,
        apply_state: ApplyState,
        meta: PeerMeta | None = None,
        restarted: bool = False,
    ) -> Peer:
        """Start the peer of `region` on this store from its persisted state
        (`meta` for a peer created uninitialized, whose region is empty;
        `restarted` for a peer that ran before this store restarted: it
        keeps the promise not to vote that its last acknowledgements made)."""
        if meta is None:
            meta = region.peer_on_store(self.store_id)
        if meta is None:
            raise AssertionError(f"region {region.id} has no peer on store {self.store_id}")
        raft_cfg = RaftConfig(
            id=meta.id,
            election_ticks=self.config.election_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
            max_inflight_msgs=self.config.max_inflight_msgs,
            max_inflight_bytes=self.config.max_inflight_bytes,
            max_size_per_msg=self.config.max_size_per_msg,
            max_committed_size_per_ready=self.config.max_round_bytes,
            applied=apply_state.applied_index,
            quiet_after_start=restarted,
            skip_bcast_commit=self.config.skip_bcast_commit,
        )
        peer = start_peer(self.engine, region, meta, apply_state, raft_cfg, self.rng)
        peer.lease.duration = self.config.lease_seconds
        storage, node = peer.storage, peer.node
        peer.remember_peers(region)
        self.peers[region.id] = peer
        self.tombstones.pop(region.id, None)
        self.log_gc.start(region.id, self.ticks)
        self._touch(region.id)
        voters = storage.conf_state.voters
        if voters == (meta.id,) and not storage.conf_state.voters_outgoing:
            # Alone, there is nobody to wait for: lead at once (no election
            # timeout of unavailability after every restart).
            node.campaign()
        log.info(
            "store %d: started peer %d of region %d [%r, %r) applied=%d%s",
            self.store_id,
            meta.id,
            region.id,
            region.start_key,
            region.end_key,
            apply_state.applied_index,
            "" if peer.initialized else " (uninitialized, waiting for a snapshot)",
            extra=log_fields(region=region.id, peer=meta.id),
        )
        return peer

    @property
    def tombstones(self) -> dict[int, Region]:
        """Regions removed from this store: region as last known, by id."""
        return self.life.tombstones

    def campaign(self, region_id: int) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.node.campaign()
            self._touch(region_id)

    def regions(self) -> list[Region]:
        return [self.peers[r].region for r in sorted(self.peers) if self.peers[r].initialized]

    # -- events ------------------------------------------------------------

    def tick(self, now_ms: int | None = None) -> None:
        """One tick of the store's clock; `now_ms`, the wall clock, stamps the
        commands proposed from now on (session expiry reads it from the log)."""
        self.ticks += 1
        if now_ms is not None:
            self.now_ms = now_ms
        self.splits.on_tick()
        expire_before = self.ticks - 2 * self.config.election_ticks
        for peer in self.hibernation.to_tick():
            peer.node.tick()
            self._replies.extend(queries.expire_reads(peer, expire_before))
            self._dirty.add(peer.region_id)
            self.hibernation.ticked(peer, self.ticks)
        for rid in self.hibernation.check_liveness(self.ticks):
            self._touch(rid)
        self.log_gc.on_tick(self.peers, self.ticks)
        self.consistency.on_tick(self.ticks)

    def _touch(self, region_id: int) -> None:
        """Something happened to the region: run it this round, awake."""
        self._dirty.add(region_id)
        peer = self.peers.get(region_id)
        if peer is not None:
            self.hibernation.wake(peer)

    def heard_ticks(self, peer: Peer) -> dict[PeerId, int]:
        """When each other member was last heard from (store ticks)."""
        return self.hibernation.heard_ticks(peer)

    def heard_from_store(self, store_id: StoreId, incarnation: int) -> None:
        """A batch from `store_id` arrived (its liveness, store_node.hibernate)."""
        for rid in self.hibernation.heard_from_store(store_id, incarnation, self.ticks):
            self._touch(rid)

    def step_raft(self, msg: RaftMessage) -> None:
        """Handle a Raft message from another store: create the peer it is for
        if that is legitimate, refuse stale senders, destroy ourselves when
        told we were removed."""
        if msg.to_peer.store_id != self.store_id:
            self.life.misaddressed(msg)
            self.stats["raft_messages_misaddressed"] += 1
            return
        if msg.message.type == MessageType.SNAPSHOT:
            # A snapshot travels with its file (on_snapshot_received), never alone.
            log.warning("region %d: snapshot message without data dropped", msg.region_id)
            return
        peer = self._peer_for(msg)
        if peer is None:
            return
        peer.peer_cache[msg.from_peer.id] = msg.from_peer
        peer.last_heard[msg.from_peer.id] = self.ticks
        peer.node.step(msg.message)
        self._dirty.add(msg.region_id)
        self.hibernation.stepped(peer, msg, self.ticks)
        if msg.from_peer.id in peer.reported_pending:
            self._check_caught_up(peer)

    def _check_caught_up(self, peer: Peer) -> None:
        """Report the region at once when a peer reported pending caught up."""
        now = frozenset(p.id for p in peer.pending_peers())
        if not peer.reported_pending <= now:
            peer.reported_pending = now
            if peer.is_leader():
                self.heartbeat_due.add(peer.region_id)

    def _peer_for(self, msg: RaftMessage) -> Peer | None:
        """The local peer a message may be stepped into (created if it is
        legitimate), or None (dropped, or kept for a split)."""
        route = self.life.route(msg, self.peers)
        if isinstance(route, Peer):
            return route
        if isinstance(route, Create):
            placeholder = Region(RegionId(msg.region_id), b"", b"", RegionEpoch(0, 0), ())
            self.stats["peers_created"] += 1
            return self.add_peer(placeholder, ApplyState(), meta=route.meta)
        if isinstance(route, Early):
            self.splits.keep_early(msg)
        elif self.life.messages:
            self._dirty.add(msg.region_id)  # a tombstone message to send
        return None

    # -- snapshots ---------------------------------------------------------

    def on_snapshot_generated(self, region_id: int, snap: Snapshot, path: Path) -> Path | None:
        """A snapshot for followers is ready; returns the file it replaces."""
        peer = self.peers.get(region_id)
        if peer is None:
            return path
        peer.generating = False
        old = peer.storage.generated
        peer.storage.generated = (snap, path)
        peer.storage.wants_snapshot = False
        self._touch(region_id)
        self.stats["snapshots_generated"] += 1
        return None if old is None or old[1] == path else old[1]

    def on_snapshot_generation_failed(self, region_id: int) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.generating = False

    def on_snapshot_received(self, msg: RaftMessage, path: Path) -> bool:
        """A complete, verified snapshot file arrived with its Raft message;
        False if it is refused (the caller deletes the file)."""
        snap = msg.message.snapshot
        if snap is None:
            return False
        desc = descriptor_of(snap)
        other = overlapping(self.peers, msg.region_id, desc.region.start_key, desc.region.end_key)
        if other is not None:
            log.info(
                "region %d: snapshot refused, overlaps region %d here",
                msg.region_id,
                other.region_id,
            )
            return False
        if desc.delta is not None:
            why = delta_refusal(self.peers.get(msg.region_id), msg.to_peer.id, desc)
            if why is not None:
                log.info("region %d: delta snapshot refused: %s", msg.region_id, why)
                self.stats["delta_snapshots_refused"] += 1
                return False
        peer = self._peer_for(msg)
        if peer is None:
            return False
        self.received_snapshots.add(msg.region_id, snap, path)
        peer.peer_cache[msg.from_peer.id] = msg.from_peer
        peer.node.step(msg.message)
        self._touch(msg.region_id)
        self.stats["snapshots_received"] += 1
        return True

    def report_snapshot(self, region_id: int, to_peer: int, success: bool) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.node.report_snapshot(to_peer, success)
            self._touch(region_id)
            self.stats["snapshots_sent" if success else "snapshot_send_failures"] += 1

    # -- requests ----------------------------------------------------------

    def check_context(self, ctx: Context, *, any_role: bool = False) -> Peer | RegionError:
        """The peer a request addressed by `ctx` goes to, or why it can't:
        the leader; with `any_role` (follower and stale reads) the peer of
        this store that `ctx` names, leader or not."""
        if ctx.peer.store_id != self.store_id:
            return StoreNotMatch(ctx.peer.store_id, self.store_id)
        peer = self._leader_peer(ctx.region_id, ctx.region_epoch, None, leader=not any_role)
        if isinstance(peer, Peer) and any_role and peer.meta.id != ctx.peer.id:
            return RegionNotFound(RegionId(ctx.region_id))  # another peer's request
        return peer

    def _leader_peer(
        self,
        region_id: int,
        request_epoch: RegionEpoch,
        cmd: epoch.AdminCmdType | None,
        *,
        leader: bool = True,
    ) -> Peer | RegionError:
        """The initialized leader peer (any peer unless `leader`) of
        `region_id` whose region passes the epoch rule of `cmd` (None: a
        normal request), or why not."""
        peer = self.peers.get(region_id)
        if peer is None or not peer.initialized:
            return RegionNotFound(RegionId(region_id))
        if leader and not peer.is_leader():
            return NotLeader(RegionId(region_id), peer.leader_meta())
        if not epoch.check_request_epoch(request_epoch, peer.region, cmd):
            return EpochNotMatch(self._current_regions(peer))
        return peer

    def _current_regions(self, peer: Peer) -> tuple[Region, ...]:
        """The region and the parts of its latest split, as known here now:
        what a client with a stale epoch needs to route again."""
        out = [peer.region]
        for r in peer.split_siblings:
            local = self.peers.get(r.id)
            out.append(local.region if local is not None and local.initialized else r)
        return tuple(out)

    def propose_write(
        self,
        token: Token,
        ctx: Context,
        ops: tuple[WriteOp, ...],
        nbytes: int,
        session: SessionRef | None = None,
    ) -> RegionError | None:
        """Queue a client write (its ops, applied all or nothing, at most once
        per `session`) for this round's batched proposal of the region."""
        peer = self.check_context(ctx)
        if not isinstance(peer, Peer):
            return peer
        err = commands.queue_write(
            peer, token, ops, nbytes, session, self.config.max_pending_write_bytes
        )
        if err is None:
            self._touch(peer.region_id)
        return err

    def read(
        self, token: Token, ctx: Context, keys: Iterable[bytes], now: float | None = None
    ) -> RegionError | ReadPermit | None:
        """A linearizable read of `keys` (or of a range whose bounds are
        passed as keys): its permit at once when the leader's lease covers
        `now` (the monotonic clock; None: do not try), else queued for this
        round (the lease, or the round's shared ReadIndex); or why not."""
        peer = self.check_context(ctx)
        if not isinstance(peer, Peer):
            return peer
        if now is not None:
            keys = tuple(keys)
            permit = queries.lease_permit(peer, keys, now)
            if isinstance(permit, ReadPermit):
                self.stats["lease_reads"] += 1
                if peer.lease.wants_renewal(now, peer.node.term):
                    self._touch(peer.region_id)  # start_reads renews it
                return permit
            if permit is not None:
                return permit
        err = queries.queue_read(peer, token, keys)
        if err is None:
            self._touch(peer.region_id)
        return err

    def replica_read(
        self, token: Token, ctx: Context, keys: Iterable[bytes], mode: Consistency, stale: float
    ) -> RegionError | None:
        """Queue a follower read, or a stale read accepting `stale` seconds,
        at this store's peer of the region, whatever its role (`queries`)."""
        peer = self.check_context(ctx, any_role=True)
        if not isinstance(peer, Peer):
            return peer
        err = queries.queue_replica_read(peer, token, keys, mode, stale)
        if err is None:
            self._touch(peer.region_id)
        return err

    def change_peer(
        self, token: Token, region_id: int, request_epoch: RegionEpoch, req: ChangePeerRequest
    ) -> RegionError | str | None:
        """Propose a membership change now (PD operators). Returns a region
        error, a refusal reason, or None once proposed."""
        peer = self._leader_peer(region_id, request_epoch, epoch.AdminCmdType.CHANGE_PEER)
        if not isinstance(peer, Peer):
            return peer
        self.hibernation.wake(peer)  # first: a sleeping leader heard its followers' stores
        horizon = self.ticks - self.config.election_ticks
        heard = [pid for pid, tick in peer.last_heard.items() if tick >= horizon]
        refused = commands.propose_change_peer(peer, token, req, heard)
        if refused is None:
            self._dirty.add(region_id)
            self.stats["conf_changes_proposed"] += 1
        return refused

    def check_consistency(self, region_id: int, check_id: int) -> str | None:
        """Propose a consistency check of a region led here (`check_id`: the
        PD's); why not, or None."""
        return self.consistency.start(region_id, check_id)

    def on_hash_computed(self, region_id: int, index: int, digest: bytes) -> None:
        """This replica's digest of its region at `index` (`region_hash`)."""
        self.consistency.computed(region_id, index, digest)

    def transfer_leader(self, region_id: int, to_peer: PeerId) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.node.transfer_leader(to_peer)
            self._touch(region_id)

    # -- rounds ------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(
            self._dirty
            or self.hibernation.has_work()
            or self.life.to_destroy
            or self.life.messages
            or self.splits.has_due
            or self._replies
            or self.log_gc.truncations
        )

    def end_round(self, now: float) -> RoundOutput:
        """Collect the round's work; `now` (monotonic seconds, read before
        any of the round's messages leave) dates its ReadIndex rounds and
        checks leader leases."""
        out = RoundOutput(
            raft_batch=WriteBatch(),
            must_sync=False,
            messages_now=defaultdict(list),
            messages_after_persist=defaultdict(list),
            apply_tasks=[],
            readies=[],
        )
        out.replies.extend(self._replies)
        self._replies.clear()
        for rid, reason in sorted(self.life.to_destroy.items()):
            self._destroy(rid, reason, out)
        self.life.to_destroy.clear()
        for store_id, msgs in self.life.messages.items():
            out.messages_now[store_id].extend(msgs)
        self.life.messages.clear()
        self.hibernation.flush(out)
        dirty, self._dirty = sorted(self._dirty), set()
        for rid in dirty:
            peer = self.peers.get(rid)
            if peer is None:
                continue
            cfg = self.config
            if commands.propose_writes(
                peer, cfg.max_entry_bytes, cfg.max_round_bytes, self.now_ms, cfg.session_ttl_ms, out
            ):
                self._dirty.add(rid)  # the rest in the next round
            queries.start_reads(peer, self.ticks, now, out)
            if peer.node.has_ready():
                rd = peer.node.ready()
                out.readies.append((peer, rd))
                self._collect(peer, rd, out)
            if peer.storage.wants_snapshot and not peer.generating:
                peer.generating = True
                out.generate_snapshots.append(rid)
        out.split_checks.extend(self.splits.take_due(self.peers))
        for name, n in out.counts.items():
            self.stats[name] += n
        self.stats["proposed_writes"] += out.proposed_writes
        if any(t.entries for t in out.apply_tasks):
            skip = frozenset(rid for rid, p in self.peers.items() if p.initialized) | frozenset(
                self.tombstones
            )
            out.apply_tasks = [replace(t, skip_regions=skip) for t in out.apply_tasks]
        for trigger, n in self.log_gc.write(self.peers, out, self.ticks).items():
            self.stats[trigger.stat] += n
        # A received snapshot Raft took is installed by this round; any other
        # was refused (below the commit index, replaced by a newer one...).
        self.received_snapshots.sweep(out)
        out.messages_now = dict(out.messages_now)
        out.messages_after_persist = dict(out.messages_after_persist)
        return out

    def _collect(self, peer: Peer, rd: Ready, out: RoundOutput) -> None:
        for m in rd.messages:
            out.route(peer, m, out.messages_now)
        batch = out.raft_batch
        if rd.snapshot is not None:
            self._install_snapshot(peer, rd.snapshot, out)
            # Everything Raft writes for this peer now follows the reset.
            batch = out.raft_after_kv
            out.must_sync_after_kv = out.must_sync_after_kv or rd.must_sync
        else:
            out.must_sync = out.must_sync or rd.must_sync
        if rd.entries:
            peer.storage.append(rd.entries, batch)
            self.stats["log_entries_appended"] += len(rd.entries)
            self.stats["log_bytes_appended"] += sum(len(e.data) for e in rd.entries)
        if rd.hard_state is not None:
            peer.storage.set_hard_state(rd.hard_state, batch)
        for m in rd.persisted_messages:
            out.route(peer, m, out.messages_after_persist)
        if rd.committed_entries:
            out.apply_tasks.append(
                ApplyTask(peer.region, peer.storage.apply_state, rd.committed_entries)
            )

    def _install_snapshot(self, peer: Peer, snap: Snapshot, out: RoundOutput) -> None:
        path = self.received_snapshots.take(peer.region_id, snap)
        others = other_ranges(self.peers, peer.region_id)
        snapshot_control.install(peer, snap, path, others, out)
        desc = descriptor_of(snap)
        if desc.delta is not None:
            self.stats["delta_snapshots_installed"] += 1
        self._set_region(peer, desc.region)

    def after_persist(self, out: RoundOutput, outcomes: list[ApplyOutcome]) -> list[Reply]:
        """The round's writes are durable and its tasks applied (outcomes in
        the order of `out.apply_tasks`): advance every peer, answer waiters."""
        replies = list(out.replies)
        by_region: dict[int, ApplyOutcome] = {o.region.id: o for o in outcomes}
        for peer, rd in out.readies:
            if self.peers.get(peer.region_id) is not peer:
                continue  # destroyed meanwhile
            outcome = by_region.get(peer.region_id)
            if outcome is not None:
                replies.extend(self._absorb(peer, outcome))
            peer.node.advance(rd)
            if rd.soft_state is not None:
                self._on_role_change(peer, rd, replies)
            for rs in rd.read_states:
                queries.read_answered(peer, rs.request_ctx, rs.index)
            replies.extend(peer.serve_reads())
            if peer.pending_remove:
                self.life.to_destroy[peer.region_id] = "removed by a conf change"
            elif outcome is not None and self.log_gc.on_applied(peer, self.ticks):
                # Its next round runs, as it always has with a truncation due
                # (the simulation's seeds were found with these rounds).
                self._dirty.add(peer.region_id)
            if peer.node.has_ready():
                self._dirty.add(peer.region_id)
        replies.extend(queries.grant_stale(self.peers, out))
        return replies

    def _absorb(self, peer: Peer, outcome: ApplyOutcome) -> list[Reply]:
        replies: list[Reply] = []
        if outcome.region_changed:
            self._set_region(peer, outcome.region)
        peer.storage.apply_state = outcome.apply_state
        if outcome.hash_jobs:
            self.consistency.pinned(outcome.hash_jobs, self.ticks)
        # A leader counts the writes of its own term only: an earlier term's
        # entries were its leader's traffic (counted there if applied in time).
        flow_term = peer.node.term if peer.is_leader() else 0
        for res in outcome.entries:
            if res.term == flow_term:
                peer.flow.written_bytes += res.written_bytes
                peer.flow.written_keys += res.written_keys
            if res.conf_change is not None:
                # A new majority may never have acknowledged our rounds.
                peer.lease.suspend()
                try:
                    peer.node.apply_conf_change(res.conf_change)
                except ConfChangeError as e:
                    # Validated against the same config when applied to the
                    # region metadata: this is a bug, not an input error.
                    raise AssertionError(f"region {peer.region_id}: {e}") from e
            if res.hash_check is not None:
                self.consistency.applied(peer.region_id, res.hash_check)
            if peer.proposals:
                replies.extend(
                    peer.resolve_applied(
                        res.index, res.term, res.writes, res.region_error, res.regions
                    )
                )
            if len(res.regions) > 1:
                self._on_split(peer, res.regions)
        for region in outcome.new_regions:
            self._create_split_peer(peer, region)
        if any(res.writes for res in outcome.entries):
            peer.size_changed = True
        if peer.approximate_size is not None:
            peer.approximate_size += outcome.size_hint_bytes
        if peer.approximate_keys is not None:
            peer.approximate_keys += outcome.size_hint_keys
        self.splits.on_size_changed(peer)
        return replies

    # -- splits ------------------------------------------------------------

    def _on_split(self, peer: Peer, regions: tuple[Region, ...]) -> None:
        peer.lease.suspend()
        self.splits.on_split(peer, regions)
        if peer.is_leader():
            self.heartbeat_due.update(r.id for r in regions)
            self.stats["splits"] += 1

    def _create_split_peer(self, parent: Peer, region: Region) -> None:
        existing = self.peers.get(region.id)
        if existing is not None:
            if existing.initialized:
                return
            # Created from a message of the new region's leader before we
            # applied the split: the split creates it properly; its Raft
            # hard state (a vote, perhaps) is kept on disk and reloaded.
            del self.peers[region.id]
            existing.fail_all(RegionNotFound(RegionId(region.id)))
        peer = self.add_peer(
            region,
            ApplyState(
                RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM, RAFT_INIT_LOG_TERM
            ),
        )
        peer.approximate_size = parent.approximate_size
        peer.approximate_keys = parent.approximate_keys
        if parent.is_leader():
            # The new regions' leaders are on the old leader's store.
            peer.node.campaign()
        for msg in self.splits.take_early(region.id):
            if msg.to_peer.id == peer.meta.id:
                peer.peer_cache[msg.from_peer.id] = msg.from_peer
                peer.node.step(msg.message)

    @property
    def split_limits(self) -> tuple[int, int] | None:
        """Split thresholds learnt from the PD: (region_max_size, region_max_keys)."""
        return self.splits.limits

    @split_limits.setter
    def split_limits(self, limits: tuple[int, int] | None) -> None:
        self.splits.limits = limits

    def on_split_checked(
        self, region_id: int, size: int, keys: int, split_keys: tuple[bytes, ...], version: int
    ) -> Region | None:
        """A scan measured the region: record its size; returns the region to
        split if it should be split at `split_keys` (unchanged meanwhile)."""
        peer = self.peers.get(region_id)
        if peer is None:
            return None
        return self.splits.on_measured(peer, size, keys, split_keys, version)

    def propose_split(
        self,
        token: Token,
        region_id: int,
        request_epoch: RegionEpoch,
        split_keys: tuple[bytes, ...],
        ids: Sequence[tuple[int, tuple[int, ...]]],
    ) -> RegionError | str | None:
        """Propose a BatchSplit with ids from the PD; returns why not, or None."""
        peer = self._leader_peer(region_id, request_epoch, epoch.AdminCmdType.BATCH_SPLIT)
        if not isinstance(peer, Peer):
            return peer
        refused = commands.propose_split(peer, token, split_keys, ids)
        if refused is None:
            self._touch(region_id)
            self.stats["splits_proposed"] += 1
        return refused

    @property
    def split_reports(self) -> list[tuple[Region, ...]]:
        """Splits applied by a leader here, not yet reported to the PD."""
        return self.splits.reports

    def take_split_reports(self) -> list[tuple[Region, ...]]:
        return self.splits.take_reports()

    def schedule_split_checks(self) -> None:
        """Measure every leader's region again (corrects the estimates)."""
        self._dirty.update(self.splits.schedule_all(self.peers.values()))

    def _set_region(self, peer: Peer, region: Region) -> None:
        if region.epoch != peer.region.epoch and peer.is_leader():
            self.heartbeat_due.add(region.id)
        peer.region = region
        peer.remember_peers(region)
        peer.storage.conf_state = membership.conf_state_of(region)
        peer.storage.region_version = region.epoch.version
        me = region.find_peer(peer.meta.id)
        if me is not None:
            peer.meta = me
            peer.pending_remove = False
        elif region.peers:
            peer.pending_remove = True

    def _destroy(self, region_id: int, reason: str, out: RoundOutput) -> None:
        peer = self.peers.pop(region_id, None)
        if peer is None:
            return
        log.info(
            "store %d: destroying peer %d of region %d: %s",
            self.store_id,
            peer.meta.id,
            region_id,
            reason,
            extra=log_fields(region=region_id, peer=peer.meta.id),
        )
        self.life.destroy(peer, other_ranges(self.peers, region_id), out)
        self.consistency.forget(region_id)
        self.stats["peers_destroyed"] += 1

    def _on_role_change(self, peer: Peer, rd: Ready, replies: list[Reply]) -> None:
        ss = rd.soft_state
        assert ss is not None
        # Each leadership reports its own traffic, from zero.
        peer.flow = Flow(since_tick=self.ticks)
        if ss.role == Role.LEADER:
            self.heartbeat_due.add(peer.region_id)
            log.info(
                "store %d: peer %d became leader of region %d at term %d",
                self.store_id,
                peer.meta.id,
                peer.region_id,
                peer.node.term,
                extra=log_fields(region=peer.region_id, peer=peer.meta.id),
            )
        elif peer.reading:
            replies.extend(peer.fail_reads(NotLeader(RegionId(peer.region_id), peer.leader_meta())))

    # -- views for the PD worker and tools ---------------------------------

    def count_read(self, region_id: int, nbytes: int, nkeys: int) -> None:
        """A client read returned `nkeys` pairs of `nbytes` (keys and values)
        from the region: part of its read flow if served by its leader. Called
        for every read served, so it stays a lookup and two additions."""
        peer = self.peers.get(region_id)
        if peer is not None and peer.is_leader():
            flow = peer.flow
            flow.read_bytes += nbytes
            flow.read_keys += nkeys

    def leader_regions(self) -> list[Peer]:
        return [
            self.peers[r]
            for r in sorted(self.peers)
            if self.peers[r].is_leader() and self.peers[r].initialized
        ]

    def take_heartbeat_due(self) -> list[Peer]:
        due, self.heartbeat_due = self.heartbeat_due, set()
        return [self.peers[r] for r in sorted(due) if r in self.peers and self.peers[r].is_leader()]

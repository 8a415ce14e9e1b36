"""`StoreCore`: the store's decisions, without sockets, threads or a clock.

The shell (`StoreNode`) feeds it events and runs one round at a time:

1. events: `step_raft`, `tick`, `propose_write`, `read`, `change_peer`,
   `transfer_leader` (each marks the region dirty; admission errors are
   returned at once);
2. `end_round()` flushes the round's queued writes and reads into the Raft
   nodes and collects `Ready` from dirty peers only: one `raft/` write batch
   for all regions, the messages to send now and after the write, grouped by
   destination store, and the apply tasks;
3. the shell sends `messages_now`, persists the batch (one transaction, one
   fsync), applies the tasks in one `kv/` transaction, sends
   `messages_after_persist`;
4. `after_persist(output, outcomes)` advances the peers and returns the
   replies for clients.

Time reaches it only as `tick()`; it iterates regions in id order.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kvproto import codec, epoch
from kvproto.debugpb import PeerStatus, StoreStatusResponse
from kvproto.errorpb import (
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    RegionError,
    RegionNotFound,
    ServerIsBusy,
    StoreNotMatch,
)
from kvproto.kvrpcpb import Context, SessionRef
from kvproto.metapb import Peer as PeerMeta
from kvproto.metapb import PeerId, Region, RegionEpoch, RegionId, StoreId, ranges_overlap
from kvproto.raft_cmdpb import (
    BatchSplitRequest,
    ChangePeerRequest,
    ClientWrite,
    DeleteRange,
    SplitRequest,
    WriteOp,
)
from kvproto.raft_serverpb import RaftMessage
from raft.config import Config as RaftConfig
from raft.errors import (
    ConfChangeError,
    ConfChangePendingError,
    LeaderTransferringError,
    NotLeaderError,
    ProposalDroppedError,
)
from raft.node import RaftNode, Ready
from raft.types import Message, MessageType, Role, Snapshot
from store_node import membership, split
from store_node.apply import ApplyOutcome, ApplyTask, range_inside
from store_node.bootstrap import destroyed_hard_state
from store_node.engine import Engine, WriteBatch
from store_node.log_gc import LogGcConfig, truncate_point
from store_node.peer import Peer, Proposal, QueuedWrite, ReadBatch, Reply, Token
from store_node.peer_storage import RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM, PeerStorage
from store_node.records import ApplyState
from store_node.region_tasks import DestroyTask, Range, SnapshotTask, subtract_ranges
from store_node.snapshot import descriptor_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    max_inflight_msgs: int = 256
    max_size_per_msg: int = 1 << 20
    # Upper bound on the ops bytes batched into one log entry.
    max_entry_bytes: int = 8 << 20
    # Writes queued on one region beyond this many bytes get ServerIsBusy.
    max_pending_write_bytes: int = 64 << 20
    # A client session idle this long in a region is forgotten there
    # (store_node.sessions); a client must not retry a write for longer.
    session_ttl_ms: int = 10 * 60_000
    log_gc: LogGcConfig = field(default_factory=LogGcConfig)


@dataclass(slots=True)
class RoundOutput:
    raft_batch: WriteBatch
    must_sync: bool
    messages_now: dict[StoreId, list[RaftMessage]]
    messages_after_persist: dict[StoreId, list[RaftMessage]]
    apply_tasks: list[ApplyTask]
    readies: list[tuple[Peer, Ready]]
    # Answers known without waiting for the write (refused proposals).
    replies: list[Reply] = field(default_factory=list)
    # Whole-region kv/ work: snapshot installs, peer destructions, and apply
    # states that changed without an apply task (log truncation points).
    snapshot_tasks: list[SnapshotTask] = field(default_factory=list)
    destroy_tasks: list[DestroyTask] = field(default_factory=list)
    apply_states: list[tuple[int, ApplyState]] = field(default_factory=list)
    # Raft writes that must follow a durable kv/ write (log resets, deletions).
    raft_after_kv: WriteBatch = field(default_factory=WriteBatch)
    must_sync_after_kv: bool = False
    # Snapshot messages go over their own connection with their data file.
    snapshot_sends: list[tuple[StoreId, RaftMessage, Path]] = field(default_factory=list)
    # Regions whose leader asked for a snapshot that must be generated.
    generate_snapshots: list[int] = field(default_factory=list)
    # Snapshot files no longer needed (the shell deletes them).
    obsolete_files: list[Path] = field(default_factory=list)
    # Regions (as of now) whose size must be measured for a split.
    split_checks: list[Region] = field(default_factory=list)
    # Client writes proposed in this round (a measure of load).
    proposed_writes: int = 0


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
        # Regions removed from this store: region as last known, by id.
        self.tombstones: dict[int, Region] = {r.id: r for r in tombstones}
        # Received snapshot files, by (region id, index, term), waiting for
        # their peer's Ready.
        self.received_snapshots: dict[tuple[int, int, int], Path] = {}
        self._to_destroy: dict[int, str] = {}
        self._extra_messages: dict[StoreId, list[RaftMessage]] = defaultdict(list)
        # Answers decided between rounds (reads that timed out), sent with the next.
        self._replies: list[Reply] = []
        self._truncations: dict[int, tuple[int, int]] = {}
        # Counters reported as store metrics.
        self.stats: dict[str, int] = defaultdict(int)
        # Ticks since the store started (the store's notion of time).
        self.ticks = 0
        # The wall clock as of the latest tick (milliseconds since the epoch).
        self.now_ms = 0
        # Split thresholds learnt from the PD: (region_max_size, region_max_keys).
        self.split_limits: tuple[int, int] | None = None
        self._split_checks: set[int] = set()
        # Messages for regions a pending split here will create (the sender
        # applied the split first), replayed when the split creates the peer.
        self._early_messages: dict[int, list[RaftMessage]] = defaultdict(list)
        # Splits applied by a leader here, to report to the PD.
        self.split_reports: list[tuple[Region, ...]] = []

    # -- peers -------------------------------------------------------------

    def add_peer(
        self, region: Region, apply_state: ApplyState, meta: PeerMeta | None = None
    ) -> Peer:
        """Start the peer of `region` on this store from its persisted state
        (`meta` for a peer created uninitialized, whose region is empty)."""
        if meta is None:
            meta = region.peer_on_store(self.store_id)
        if meta is None:
            raise AssertionError(f"region {region.id} has no peer on store {self.store_id}")
        storage = PeerStorage(self.engine, region.id, membership.conf_state_of(region), apply_state)
        hs = storage.hard_state
        if hs.term < apply_state.truncated_term:
            # A region created by a split starts at the implied initial log
            # point; a hard state from before (none, or a vote cast by a
            # placeholder peer in an older term) is brought up to it.
            hs = type(hs)(apply_state.truncated_term, 0, hs.commit)
        if hs.commit < apply_state.applied_index:
            # A commit index is written lazily; anything applied was committed.
            hs = type(hs)(hs.term, hs.vote, apply_state.applied_index)
        storage.hard_state = hs
        raft_cfg = RaftConfig(
            id=meta.id,
            election_ticks=self.config.election_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
            max_inflight_msgs=self.config.max_inflight_msgs,
            max_size_per_msg=self.config.max_size_per_msg,
            applied=apply_state.applied_index,
        )
        node = RaftNode(raft_cfg, storage, random.Random(self.rng.getrandbits(64)))
        peer = Peer(
            region=region,
            meta=meta,
            storage=storage,
            node=node,
            read_nonce=self.rng.getrandbits(64),
        )
        peer.remember_peers(region)
        self.peers[region.id] = peer
        self.tombstones.pop(region.id, None)
        self._dirty.add(region.id)
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
        )
        return peer

    def campaign(self, region_id: int) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.node.campaign()
            self._dirty.add(region_id)

    def regions(self) -> list[Region]:
        return [self.peers[r].region for r in sorted(self.peers) if self.peers[r].initialized]

    def _other_ranges(self, region_id: int) -> list[Range]:
        return [
            (p.region.start_key, p.region.end_key)
            for p in self.peers.values()
            if p.region_id != region_id and p.initialized
        ]

    def _overlaps_other(self, region_id: int, start: bytes, end: bytes) -> Peer | None:
        for p in self.peers.values():
            if (
                p.region_id != region_id
                and p.initialized
                and ranges_overlap(p.region.start_key, p.region.end_key, start, end)
            ):
                return p
        return None

    # -- events ------------------------------------------------------------

    def tick(self, now_ms: int | None = None) -> None:
        """One tick of the store's clock; `now_ms`, the wall clock, stamps the
        commands proposed from now on (session expiry reads it from the log)."""
        self.ticks += 1
        if now_ms is not None:
            self.now_ms = now_ms
        # Raft retries on its own what was kept longer than a tick.
        self._early_messages.clear()
        expire_before = self.ticks - 2 * self.config.election_ticks
        for rid in sorted(self.peers):
            peer = self.peers[rid]
            peer.node.tick()
            if peer.reading:
                err = NotLeader(RegionId(rid), peer.leader_meta())
                self._replies.extend(peer.expire_reads(expire_before, err))
        self._dirty.update(self.peers)

    def step_raft(self, msg: RaftMessage) -> None:
        """Handle a Raft message from another store: create the peer it is for
        if that is legitimate, refuse stale senders, destroy ourselves when
        told we were removed."""
        if msg.to_peer.store_id != self.store_id:
            log.warning(
                "store %d: message for store %d dropped", self.store_id, msg.to_peer.store_id
            )
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

    def _peer_for(self, msg: RaftMessage) -> Peer | None:
        """The local peer a message may be stepped into, or None (dropped)."""
        peer = self.peers.get(msg.region_id)
        if msg.is_tombstone:
            if (
                peer is not None
                and peer.meta.id == msg.to_peer.id
                and msg.region_epoch.conf_ver > peer.region.epoch.conf_ver
            ):
                self._to_destroy[peer.region_id] = "removed from the region (told by a member)"
            return None
        if peer is None:
            return self._maybe_create_peer(msg)
        if msg.to_peer.id != peer.meta.id:
            if msg.to_peer.id > peer.meta.id:
                # We were removed and added again as a new peer: the old one
                # goes; the next message creates the new one.
                self._to_destroy[peer.region_id] = f"replaced by peer {msg.to_peer.id}"
            return None
        if (
            peer.initialized
            and peer.region.find_peer(msg.from_peer.id) is None
            and msg.region_epoch.conf_ver < peer.region.epoch.conf_ver
        ):
            # A removed peer still talking: tell it so it destroys itself.
            self._send_tombstone(peer, msg.from_peer)
            return None
        return peer

    _INITIAL_TYPES = frozenset(
        {
            MessageType.APPEND,
            MessageType.HEARTBEAT,
            MessageType.SNAPSHOT,
            MessageType.VOTE,
            MessageType.PRE_VOTE,
        }
    )

    def _maybe_create_peer(self, msg: RaftMessage) -> Peer | None:
        if msg.message.type not in self._INITIAL_TYPES:
            return None
        tomb = self.tombstones.get(msg.region_id)
        if tomb is not None:
            old = tomb.peer_on_store(self.store_id)
            if msg.region_epoch.conf_ver <= tomb.epoch.conf_ver or (
                old is not None and msg.to_peer.id <= old.id
            ):
                log.debug("region %d: message for a removed peer ignored", msg.region_id)
                return None
        other = self._overlaps_other(msg.region_id, msg.start_key, msg.end_key)
        if other is not None:
            if other.region.epoch.version < msg.region_epoch.version:
                # Most likely a split we have not applied yet will create
                # this peer: keep the message (e.g. the new leader's vote
                # request) for then, instead of making it wait an election.
                early = self._early_messages[msg.region_id]
                if len(early) < 16:
                    early.append(msg)
            # Otherwise this message or the overlapping region is stale; both
            # resolve on their own (GC or a later message).
            log.debug(
                "region %d: not created, overlaps region %d here", msg.region_id, other.region_id
            )
            return None
        placeholder = Region(RegionId(msg.region_id), b"", b"", RegionEpoch(0, 0), ())
        self.stats["peers_created"] += 1
        return self.add_peer(placeholder, ApplyState(), meta=msg.to_peer)

    def _send_tombstone(self, peer: Peer, to: PeerMeta) -> None:
        self._extra_messages[to.store_id].append(
            RaftMessage(
                region_id=RegionId(peer.region_id),
                from_peer=peer.meta,
                to_peer=to,
                region_epoch=peer.region.epoch,
                message=Message(type=MessageType.HEARTBEAT, to=to.id, from_=peer.meta.id),
                is_tombstone=True,
            )
        )
        self._dirty.add(peer.region_id)

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
        self._dirty.add(region_id)
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
        other = self._overlaps_other(msg.region_id, desc.region.start_key, desc.region.end_key)
        if other is not None:
            log.info(
                "region %d: snapshot refused, overlaps region %d here",
                msg.region_id,
                other.region_id,
            )
            return False
        peer = self._peer_for(msg)
        if peer is None:
            return False
        self.received_snapshots[(msg.region_id, desc.index, desc.term)] = path
        peer.peer_cache[msg.from_peer.id] = msg.from_peer
        peer.node.step(msg.message)
        self._dirty.add(msg.region_id)
        self.stats["snapshots_received"] += 1
        return True

    def report_snapshot(self, region_id: int, to_peer: int, success: bool) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.node.report_snapshot(to_peer, success)
            self._dirty.add(region_id)
            self.stats["snapshots_sent" if success else "snapshot_send_failures"] += 1

    # -- requests ----------------------------------------------------------

    def check_context(self, ctx: Context) -> Peer | RegionError:
        """The peer a request addressed by `ctx` goes to, or why it can't."""
        if ctx.peer.store_id != self.store_id:
            return StoreNotMatch(ctx.peer.store_id, self.store_id)
        return self._leader_peer(ctx.region_id, ctx.region_epoch, None)

    def _leader_peer(
        self, region_id: int, request_epoch: RegionEpoch, cmd: epoch.AdminCmdType | None
    ) -> Peer | RegionError:
        """The initialized leader peer of `region_id` whose region passes the
        epoch rule of `cmd` (None: a normal request), or why not."""
        peer = self.peers.get(region_id)
        if peer is None or not peer.initialized:
            return RegionNotFound(RegionId(region_id))
        if not peer.is_leader():
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
        region = peer.region
        for op in ops:
            if isinstance(op, DeleteRange):
                if not range_inside(region, op.start_key, op.end_key):
                    return KeyNotInRegion(op.start_key, region.id, region.start_key, region.end_key)
            elif not region.contains(op.key):
                return KeyNotInRegion(op.key, region.id, region.start_key, region.end_key)
        if peer.queued_bytes + nbytes > self.config.max_pending_write_bytes:
            return ServerIsBusy("too many writes queued on this region", backoff_ms=20)
        peer.queued_writes.append(QueuedWrite(token, ops, nbytes, session))
        peer.queued_bytes += nbytes
        self._dirty.add(peer.region_id)
        return None

    def read(self, token: Token, ctx: Context, keys: Iterable[bytes]) -> RegionError | None:
        """Queue a linearizable read of `keys` (or of a range whose bounds are
        passed as keys) through this round's shared ReadIndex."""
        peer = self.check_context(ctx)
        if not isinstance(peer, Peer):
            return peer
        region = peer.region
        for key in keys:
            if not region.contains(key):
                return KeyNotInRegion(key, region.id, region.start_key, region.end_key)
        peer.queued_reads.append(token)
        self._dirty.add(peer.region_id)
        return None

    def change_peer(
        self, token: Token, region_id: int, request_epoch: RegionEpoch, req: ChangePeerRequest
    ) -> RegionError | str | None:
        """Propose a membership change now (PD operators). Returns a region
        error, a refusal reason, or None once proposed."""
        peer = self._leader_peer(region_id, request_epoch, epoch.AdminCmdType.CHANGE_PEER)
        if not isinstance(peer, Peer):
            return peer
        cc = membership.to_conf_change(req, codec.dumps(peer.command(req)))
        try:
            membership.apply_to_region(peer.region, cc, req)
            index = peer.node.propose_conf_change(cc)
        except (ConfChangeError, ConfChangePendingError) as e:
            return str(e)
        except NotLeaderError as e:
            return NotLeader(RegionId(region_id), peer.peer_cache.get(PeerId(e.leader_id)))
        except ProposalDroppedError as e:
            return str(e)
        peer.proposals.append(Proposal(index, peer.node.term, [(token, 0)], is_admin=True))
        self._dirty.add(region_id)
        return None

    def transfer_leader(self, region_id: int, to_peer: PeerId) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.node.transfer_leader(to_peer)
            self._dirty.add(region_id)

    # -- rounds ------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._dirty or self._to_destroy or self._split_checks or self._replies)

    def end_round(self) -> RoundOutput:
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
        for rid, reason in sorted(self._to_destroy.items()):
            self._destroy(rid, reason, out)
        self._to_destroy.clear()
        for store_id, msgs in self._extra_messages.items():
            out.messages_now[store_id].extend(msgs)
        self._extra_messages.clear()
        dirty, self._dirty = sorted(self._dirty), set()
        for rid in dirty:
            peer = self.peers.get(rid)
            if peer is None:
                continue
            self._flush_writes(peer, out)
            self._flush_reads(peer, out)
            if peer.node.has_ready():
                rd = peer.node.ready()
                out.readies.append((peer, rd))
                self._collect(peer, rd, out)
            if peer.storage.wants_snapshot and not peer.generating:
                peer.generating = True
                out.generate_snapshots.append(rid)
        for rid in sorted(self._split_checks):
            peer = self.peers.get(rid)
            if peer is not None and peer.is_leader() and peer.initialized:
                peer.split_checking = True
                out.split_checks.append(peer.region)
        self._split_checks.clear()
        if any(t.entries for t in out.apply_tasks):
            skip = frozenset(rid for rid, p in self.peers.items() if p.initialized) | frozenset(
                self.tombstones
            )
            out.apply_tasks = [replace(t, skip_regions=skip) for t in out.apply_tasks]
        with_task = {t.region.id for t in out.apply_tasks}
        for rid, (index, term) in sorted(self._truncations.items()):
            peer = self.peers.get(rid)
            if peer is None or index <= peer.storage.apply_state.truncated_index:
                continue
            peer.storage.truncate_to(index, term, out.raft_after_kv)
            self.stats["log_truncations"] += 1
            if rid in with_task:
                # The apply task writes the apply state, truncation included.
                for i, t in enumerate(out.apply_tasks):
                    if t.region.id == rid:
                        out.apply_tasks[i] = replace(t, apply_state=peer.storage.apply_state)
            else:
                out.apply_states.append((rid, peer.storage.apply_state))
        self._truncations.clear()
        # A received snapshot Raft took is installed by this round; any other
        # was refused (below the commit index, replaced by a newer one...).
        out.obsolete_files.extend(self.received_snapshots.values())
        self.received_snapshots.clear()
        out.messages_now = dict(out.messages_now)
        out.messages_after_persist = dict(out.messages_after_persist)
        return out

    def _flush_writes(self, peer: Peer, out: RoundOutput) -> None:
        if not peer.queued_writes:
            return
        queued, peer.queued_writes = peer.queued_writes, []
        peer.queued_bytes = 0
        batch: list[QueuedWrite] = []
        size = 0
        for w in queued:
            if batch and size + w.nbytes > self.config.max_entry_bytes:
                self._propose_batch(peer, batch, out)
                batch, size = [], 0
            batch.append(w)
            size += w.nbytes
        if batch:
            self._propose_batch(peer, batch, out)

    def _propose_batch(self, peer: Peer, batch: list[QueuedWrite], out: RoundOutput) -> None:
        writes = tuple(ClientWrite(w.session, w.ops) for w in batch)
        waiters = [(w.token, i) for i, w in enumerate(batch)]
        cmd = peer.write_command(writes, self.now_ms, self.config.session_ttl_ms)
        err: RegionError | None = None
        try:
            index = peer.node.propose(codec.dumps(cmd))
        except LeaderTransferringError:
            err = ServerIsBusy("leadership is being transferred", backoff_ms=50)
        except ProposalDroppedError as e:
            err = NotLeader(RegionId(peer.region_id), peer.peer_cache.get(PeerId(e.leader_id)))
        if err is not None:
            out.replies.extend(Reply(t, err) for t, _ in waiters)
            return
        peer.proposals.append(Proposal(index, peer.node.term, waiters))
        out.proposed_writes += len(waiters)

    def _flush_reads(self, peer: Peer, out: RoundOutput) -> None:
        if not peer.queued_reads:
            return
        tokens, peer.queued_reads = peer.queued_reads, []
        ctx = peer.next_read_ctx()
        try:
            peer.node.read_index(ctx)
        except ProposalDroppedError:
            # Leadership went between admission and now, to nobody known yet.
            err = NotLeader(RegionId(peer.region_id), peer.leader_meta())
            out.replies.extend(Reply(t, err) for t in tokens)
            return
        peer.reading[ctx] = ReadBatch(tokens=tokens, started_tick=self.ticks)

    def _collect(self, peer: Peer, rd: Ready, out: RoundOutput) -> None:
        for m in rd.messages:
            self._route(peer, m, out, out.messages_now)
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
        if rd.hard_state is not None:
            peer.storage.set_hard_state(rd.hard_state, batch)
        for m in rd.persisted_messages:
            self._route(peer, m, out, out.messages_after_persist)
        if rd.committed_entries:
            out.apply_tasks.append(
                ApplyTask(peer.region, peer.storage.apply_state, rd.committed_entries)
            )

    def _install_snapshot(self, peer: Peer, snap: Snapshot, out: RoundOutput) -> None:
        desc = descriptor_of(snap)
        key = (peer.region_id, snap.metadata.index, snap.metadata.term)
        path = self.received_snapshots.pop(key, None)
        if path is None:
            raise AssertionError(f"region {peer.region_id}: no file for snapshot {key}")
        region = desc.region
        clear: list[Range] = [(region.start_key, region.end_key)]
        if peer.initialized and (peer.region.start_key, peer.region.end_key) != clear[0]:
            clear.append((peer.region.start_key, peer.region.end_key))
        others = self._other_ranges(peer.region_id)
        parts = [p for r in clear for p in subtract_ranges(r, others)]
        out.snapshot_tasks.append(
            SnapshotTask(region, path, snap.metadata.index, snap.metadata.term, tuple(parts))
        )
        out.obsolete_files.append(path)  # deleted by the shell once installed
        out.replies.extend(peer.resolve_snapshot(snap.metadata.index, snap.metadata.term))
        peer.storage.reset_to_snapshot(snap.metadata.index, snap.metadata.term, out.raft_after_kv)
        self._set_region(peer, region)

    def _route(
        self,
        peer: Peer,
        m: Message,
        out: RoundOutput,
        into: dict[StoreId, list[RaftMessage]],
    ) -> None:
        to = peer.peer_cache.get(PeerId(m.to))
        if to is None:
            log.debug("region %d: no store known for peer %d; dropped", peer.region_id, m.to)
            return
        region = peer.region
        rm = RaftMessage(
            region_id=RegionId(region.id),
            from_peer=peer.meta,
            to_peer=to,
            region_epoch=region.epoch,
            message=m,
            start_key=region.start_key,
            end_key=region.end_key,
        )
        if m.type == MessageType.SNAPSHOT:
            generated = peer.storage.generated
            assert generated is not None and generated[0] == m.snapshot, "snapshot not generated"
            out.snapshot_sends.append((to.store_id, rm, generated[1]))
        else:
            into[to.store_id].append(rm)

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
                batch = peer.reading.pop(rs.request_ctx, None)
                if batch is not None:
                    batch.index = rs.index
                    peer.read_waiting.append(batch)
            replies.extend(peer.serve_reads())
            if peer.pending_remove:
                self._to_destroy[peer.region_id] = "removed by a conf change"
            elif outcome is not None:
                self._maybe_truncate(peer)
            if peer.node.has_ready():
                self._dirty.add(peer.region_id)
        return replies

    def _maybe_truncate(self, peer: Peer) -> None:
        index = truncate_point(peer, self.config.log_gc)
        if index is None:
            return
        term = peer.storage.term(index)
        self._truncations[peer.region_id] = (index, term)
        self._dirty.add(peer.region_id)

    def _absorb(self, peer: Peer, outcome: ApplyOutcome) -> list[Reply]:
        replies: list[Reply] = []
        if outcome.region_changed:
            self._set_region(peer, outcome.region)
        peer.storage.apply_state = outcome.apply_state
        for res in outcome.entries:
            if res.conf_change is not None:
                try:
                    peer.node.apply_conf_change(res.conf_change)
                except ConfChangeError as e:
                    # Validated against the same config when applied to the
                    # region metadata: this is a bug, not an input error.
                    raise AssertionError(f"region {peer.region_id}: {e}") from e
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
        if peer.approximate_size is not None:
            peer.approximate_size += outcome.written_bytes
        if peer.approximate_keys is not None:
            peer.approximate_keys += outcome.written_keys
        self._maybe_schedule_split_check(peer)
        return replies

    # -- splits ------------------------------------------------------------

    def _on_split(self, peer: Peer, regions: tuple[Region, ...]) -> None:
        peer.split_siblings = regions[1:]
        # The parts' sizes are unknown until measured: split the estimate.
        n = len(regions)
        if peer.approximate_size is not None:
            peer.approximate_size //= n
        if peer.approximate_keys is not None:
            peer.approximate_keys //= n
        if peer.is_leader():
            self.split_reports.append(regions)
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
        for msg in self._early_messages.pop(region.id, []):
            if msg.to_peer.id == peer.meta.id:
                peer.peer_cache[msg.from_peer.id] = msg.from_peer
                peer.node.step(msg.message)

    def _maybe_schedule_split_check(self, peer: Peer) -> None:
        limits = self.split_limits
        if limits is None or peer.split_checking or not peer.is_leader():
            return
        size, count = peer.approximate_size, peer.approximate_keys
        if size is None or count is None or size > limits[0] or count > limits[1]:
            self._split_checks.add(peer.region_id)

    def on_split_checked(
        self, region_id: int, size: int, keys: int, split_keys: tuple[bytes, ...], version: int
    ) -> Region | None:
        """A scan measured the region: record its size; returns the region to
        split if it should be split at `split_keys` (unchanged meanwhile)."""
        peer = self.peers.get(region_id)
        if peer is None:
            return None
        peer.split_checking = False
        if peer.region.epoch.version != version:
            return None  # split or merged since: the next check decides
        peer.approximate_size, peer.approximate_keys = size, keys
        if not split_keys or not peer.is_leader():
            return None
        return peer.region

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
        if len(ids) != len(split_keys):
            return f"{len(ids)} ids for {len(split_keys)} split keys"
        req = BatchSplitRequest(
            tuple(
                SplitRequest(k, RegionId(rid), tuple(PeerId(p) for p in pids))
                for k, (rid, pids) in zip(split_keys, ids, strict=True)
            )
        )
        try:
            split.split_regions(peer.region, req)
        except split.SplitError as e:
            return str(e)
        try:
            index = peer.node.propose(codec.dumps(peer.command(req)))
        except ProposalDroppedError as e:
            return str(e)
        peer.proposals.append(Proposal(index, peer.node.term, [(token, 0)], is_admin=True))
        self._dirty.add(region_id)
        return None

    def take_split_reports(self) -> list[tuple[Region, ...]]:
        reports, self.split_reports = self.split_reports, []
        return reports

    def schedule_split_checks(self) -> None:
        """Measure every leader's region again (corrects the estimates)."""
        for rid, peer in self.peers.items():
            if peer.is_leader() and peer.initialized and not peer.split_checking:
                self._split_checks.add(rid)
                self._dirty.add(rid)

    def _set_region(self, peer: Peer, region: Region) -> None:
        if region.epoch != peer.region.epoch and peer.is_leader():
            self.heartbeat_due.add(region.id)
        peer.region = region
        peer.remember_peers(region)
        peer.storage.conf_state = membership.conf_state_of(region)
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
        )
        out.replies.extend(peer.fail_all(RegionNotFound(RegionId(region_id))))
        if peer.initialized:
            tomb = peer.region
            clear = tuple(
                subtract_ranges(
                    (peer.region.start_key, peer.region.end_key), self._other_ranges(region_id)
                )
            )
        else:
            # No data, no region record; but the tombstone must stay (an older
            # peer's, if any) and name this peer, so that a delayed message
            # cannot create it again with an empty hard state.
            old = self.tombstones.get(region_id)
            tomb = Region(
                RegionId(region_id),
                old.start_key if old else b"",
                old.end_key if old else b"",
                old.epoch if old else RegionEpoch(0, 0),
                (peer.meta,),
            )
            clear = ()
        out.destroy_tasks.append(DestroyTask(tomb, clear))
        self.tombstones[region_id] = tomb
        # The log goes, the term and vote stay; durably before the next round,
        # since a new peer of this region may be created from the next message
        # and reads them from raft/.
        peer.storage.clear_log(out.raft_after_kv)
        peer.storage.set_hard_state(
            destroyed_hard_state(peer.storage.hard_state), out.raft_after_kv
        )
        out.must_sync_after_kv = True
        if peer.storage.generated is not None:
            out.obsolete_files.append(peer.storage.generated[1])
        self.stats["peers_destroyed"] += 1

    def _on_role_change(self, peer: Peer, rd: Ready, replies: list[Reply]) -> None:
        ss = rd.soft_state
        assert ss is not None
        if ss.role == Role.LEADER:
            self.heartbeat_due.add(peer.region_id)
            log.info(
                "store %d: peer %d became leader of region %d at term %d",
                self.store_id,
                peer.meta.id,
                peer.region_id,
                peer.node.term,
            )
        elif peer.reading:
            replies.extend(peer.fail_reads(NotLeader(RegionId(peer.region_id), peer.leader_meta())))

    # -- views for the PD worker and tools ---------------------------------

    def status(self) -> StoreStatusResponse:
        peers = []
        for rid in sorted(self.peers):
            p = self.peers[rid]
            if not p.initialized:
                continue
            a = p.storage.apply_state
            peers.append(
                PeerStatus(
                    region=p.region,
                    is_leader=p.is_leader(),
                    term=p.node.term,
                    commit_index=p.node.commit_index,
                    applied_index=a.applied_index,
                    truncated_index=a.truncated_index,
                    log_entries=p.storage.log_entries(),
                    log_bytes=p.storage.log_bytes,
                    approximate_size=p.approximate_size or 0,
                    approximate_keys=p.approximate_keys or 0,
                )
            )
        return StoreStatusResponse(self.store_id, tuple(peers), tuple(sorted(self.stats.items())))

    def leader_regions(self) -> list[Peer]:
        return [
            self.peers[r]
            for r in sorted(self.peers)
            if self.peers[r].is_leader() and self.peers[r].initialized
        ]

    def take_heartbeat_due(self) -> list[Peer]:
        due, self.heartbeat_due = self.heartbeat_due, set()
        return [self.peers[r] for r in sorted(due) if r in self.peers and self.peers[r].is_leader()]

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
from collections.abc import Iterable
from dataclasses import dataclass, field

from kvproto import codec, epoch
from kvproto.errorpb import (
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    RegionError,
    RegionNotFound,
    ServerIsBusy,
    StoreNotMatch,
)
from kvproto.kvrpcpb import Context
from kvproto.metapb import PeerId, Region, RegionEpoch, RegionId, StoreId
from kvproto.raft_cmdpb import (
    ChangePeerRequest,
    DeleteRange,
    RaftCmdRequest,
    RaftRequestHeader,
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
from raft.types import Message, Role
from store_node import membership
from store_node.apply import ApplyOutcome, ApplyTask, range_inside
from store_node.engine import Engine, WriteBatch
from store_node.peer import Peer, Proposal, QueuedWrite, ReadBatch, Reply, Token
from store_node.peer_storage import PeerStorage
from store_node.records import ApplyState

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

    def is_empty(self) -> bool:
        return not (
            self.raft_batch.ops
            or self.messages_now
            or self.messages_after_persist
            or self.apply_tasks
            or self.readies
        )


class StoreCore:
    """Every peer of one store, and the rules for driving them."""

    def __init__(
        self,
        store_id: StoreId,
        engine: Engine,
        config: CoreConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store_id = store_id
        self.engine = engine
        self.config = config or CoreConfig()
        self.rng = rng or random.Random(store_id)
        self.peers: dict[int, Peer] = {}
        self._dirty: set[int] = set()
        # Regions whose leader or epoch changed since the PD last heard.
        self.heartbeat_due: set[int] = set()

    # -- peers -------------------------------------------------------------

    def add_peer(self, region: Region, apply_state: ApplyState) -> Peer:
        """Start the peer of `region` on this store from its persisted state."""
        meta = region.peer_on_store(self.store_id)
        if meta is None:
            raise AssertionError(f"region {region.id} has no peer on store {self.store_id}")
        storage = PeerStorage(self.engine, region.id, membership.conf_state_of(region), apply_state)
        hs = storage.hard_state
        if hs.commit < apply_state.applied_index:
            # A commit index is written lazily; anything applied was committed.
            storage.hard_state = type(hs)(hs.term, hs.vote, apply_state.applied_index)
        raft_cfg = RaftConfig(
            id=meta.id,
            election_ticks=self.config.election_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
            max_inflight_msgs=self.config.max_inflight_msgs,
            max_size_per_msg=self.config.max_size_per_msg,
            applied=apply_state.applied_index,
        )
        node = RaftNode(raft_cfg, storage, random.Random(self.rng.getrandbits(64)))
        peer = Peer(region=region, meta=meta, storage=storage, node=node)
        peer.remember_peers(region)
        self.peers[region.id] = peer
        self._dirty.add(region.id)
        log.info(
            "store %d: started peer %d of region %d [%r, %r) applied=%d",
            self.store_id,
            meta.id,
            region.id,
            region.start_key,
            region.end_key,
            apply_state.applied_index,
        )
        return peer

    def campaign(self, region_id: int) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.node.campaign()
            self._dirty.add(region_id)

    def regions(self) -> list[Region]:
        return [self.peers[r].region for r in sorted(self.peers)]

    # -- events ------------------------------------------------------------

    def tick(self) -> None:
        for rid in sorted(self.peers):
            self.peers[rid].node.tick()
        self._dirty.update(self.peers)

    def step_raft(self, msg: RaftMessage) -> None:
        peer = self.peers.get(msg.region_id)
        if peer is None:
            log.debug(
                "store %d: message for unknown region %d from store %d dropped",
                self.store_id,
                msg.region_id,
                msg.from_peer.store_id,
            )
            return
        if msg.to_peer.id != peer.meta.id:
            log.debug(
                "store %d: message for peer %d, but region %d has peer %d here; dropped",
                self.store_id,
                msg.to_peer.id,
                msg.region_id,
                peer.meta.id,
            )
            return
        peer.peer_cache[msg.from_peer.id] = msg.from_peer
        peer.node.step(msg.message)
        self._dirty.add(msg.region_id)

    def check_context(self, ctx: Context) -> Peer | RegionError:
        """The peer a request addressed by `ctx` goes to, or why it can't."""
        if ctx.peer.store_id != self.store_id:
            return StoreNotMatch(ctx.peer.store_id, self.store_id)
        peer = self.peers.get(ctx.region_id)
        if peer is None:
            return RegionNotFound(ctx.region_id)
        if not peer.is_leader():
            return NotLeader(RegionId(ctx.region_id), peer.leader_meta())
        if not epoch.check_request_epoch(ctx.region_epoch, peer.region, None):
            return EpochNotMatch((peer.region,))
        return peer

    def propose_write(
        self, token: Token, ctx: Context, ops: tuple[WriteOp, ...], nbytes: int
    ) -> RegionError | None:
        """Queue write ops for this round's batched proposal of the region."""
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
        queued = sum(w.nbytes for w in peer.queued_writes)
        if queued + nbytes > self.config.max_pending_write_bytes:
            return ServerIsBusy("too many writes queued on this region", backoff_ms=20)
        peer.queued_writes.append(QueuedWrite(token, ops, nbytes))
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
        peer = self.peers.get(region_id)
        if peer is None:
            return RegionNotFound(RegionId(region_id))
        if not peer.is_leader():
            return NotLeader(RegionId(region_id), peer.leader_meta())
        if not epoch.check_request_epoch(
            request_epoch, peer.region, epoch.AdminCmdType.CHANGE_PEER
        ):
            return EpochNotMatch((peer.region,))
        cmd = RaftCmdRequest(
            header=RaftRequestHeader(RegionId(region_id), peer.meta.id, peer.region.epoch),
            admin=req,
        )
        cc = membership.to_conf_change(req, codec.dumps(cmd))
        try:
            membership.apply_to_region(peer.region, cc, req)
            index = peer.node.propose_conf_change(cc)
        except (ConfChangeError, ConfChangePendingError) as e:
            return str(e)
        except NotLeaderError as e:
            return NotLeader(RegionId(region_id), peer.peer_cache.get(PeerId(e.leader_id)))
        except ProposalDroppedError as e:
            return str(e)
        peer.proposals.append(Proposal(index, peer.node.term, [(token, 0, 0)], is_admin=True))
        self._dirty.add(region_id)
        return None

    def transfer_leader(self, region_id: int, to_peer: PeerId) -> None:
        peer = self.peers.get(region_id)
        if peer is not None:
            peer.node.transfer_leader(to_peer)
            self._dirty.add(region_id)

    # -- rounds ------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._dirty)

    def end_round(self) -> RoundOutput:
        out = RoundOutput(
            raft_batch=WriteBatch(),
            must_sync=False,
            messages_now=defaultdict(list),
            messages_after_persist=defaultdict(list),
            apply_tasks=[],
            readies=[],
        )
        dirty, self._dirty = sorted(self._dirty), set()
        for rid in dirty:
            peer = self.peers.get(rid)
            if peer is None:
                continue
            self._flush_writes(peer, out)
            self._flush_reads(peer)
            if not peer.node.has_ready():
                continue
            rd = peer.node.ready()
            out.readies.append((peer, rd))
            self._collect(peer, rd, out)
        out.messages_now = dict(out.messages_now)
        out.messages_after_persist = dict(out.messages_after_persist)
        return out

    def _flush_writes(self, peer: Peer, out: RoundOutput) -> None:
        if not peer.queued_writes:
            return
        queued, peer.queued_writes = peer.queued_writes, []
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
        ops: list[WriteOp] = []
        waiters: list[tuple[Token, int, int]] = []
        for w in batch:
            waiters.append((w.token, len(ops), len(ops) + len(w.ops)))
            ops.extend(w.ops)
        cmd = RaftCmdRequest(
            header=RaftRequestHeader(RegionId(peer.region_id), peer.meta.id, peer.region.epoch),
            requests=tuple(ops),
        )
        err: RegionError | None = None
        try:
            index = peer.node.propose(codec.dumps(cmd))
        except LeaderTransferringError:
            err = ServerIsBusy("leadership is being transferred", backoff_ms=50)
        except NotLeaderError as e:
            err = NotLeader(RegionId(peer.region_id), peer.peer_cache.get(PeerId(e.leader_id)))
        except ProposalDroppedError as e:
            err = NotLeader(RegionId(peer.region_id), peer.peer_cache.get(PeerId(e.leader_id)))
        if err is not None:
            out.replies.extend(Reply(t, err) for t, _, _ in waiters)
            return
        peer.proposals.append(Proposal(index, peer.node.term, waiters))

    def _flush_reads(self, peer: Peer) -> None:
        if not peer.queued_reads:
            return
        ctx = peer.next_read_ctx()
        peer.reading[ctx] = ReadBatch(tokens=peer.queued_reads)
        peer.queued_reads = []
        peer.node.read_index(ctx)

    def _collect(self, peer: Peer, rd: Ready, out: RoundOutput) -> None:
        for m in rd.messages:
            self._route(peer, m, out.messages_now)
        if rd.snapshot is not None:
            raise AssertionError("region snapshots arrive with the replication issue")
        if rd.entries:
            peer.storage.append(rd.entries, out.raft_batch)
        if rd.hard_state is not None:
            peer.storage.set_hard_state(rd.hard_state, out.raft_batch)
        out.must_sync = out.must_sync or rd.must_sync
        for m in rd.persisted_messages:
            self._route(peer, m, out.messages_after_persist)
        if rd.committed_entries:
            out.apply_tasks.append(
                ApplyTask(peer.region, peer.storage.apply_state, rd.committed_entries)
            )

    def _route(self, peer: Peer, m: Message, into: dict[StoreId, list[RaftMessage]]) -> None:
        to = peer.peer_cache.get(PeerId(m.to))
        if to is None:
            log.debug("region %d: no store known for peer %d; dropped", peer.region_id, m.to)
            return
        region = peer.region
        into[to.store_id].append(
            RaftMessage(
                region_id=RegionId(region.id),
                from_peer=peer.meta,
                to_peer=to,
                region_epoch=region.epoch,
                message=m,
                start_key=region.start_key,
                end_key=region.end_key,
            )
        )

    def after_persist(self, out: RoundOutput, outcomes: list[ApplyOutcome]) -> list[Reply]:
        """The round's writes are durable and its tasks applied (outcomes in
        the order of `out.apply_tasks`): advance every peer, answer waiters."""
        replies = list(out.replies)
        by_region: dict[int, ApplyOutcome] = {o.region.id: o for o in outcomes}
        for peer, rd in out.readies:
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
            if peer.node.has_ready():
                self._dirty.add(peer.region_id)
        return replies

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
                    peer.resolve_applied(res.index, res.term, res.results, res.region_error)
                )
        return replies

    def _set_region(self, peer: Peer, region: Region) -> None:
        if region.epoch != peer.region.epoch and peer.is_leader():
            self.heartbeat_due.add(region.id)
        peer.region = region
        peer.remember_peers(region)
        peer.storage.conf_state = membership.conf_state_of(region)
        me = region.find_peer(peer.meta.id)
        if me is not None:
            peer.meta = me
        else:
            peer.pending_remove = True

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

    # -- views for the PD worker -------------------------------------------

    def leader_regions(self) -> list[Peer]:
        return [self.peers[r] for r in sorted(self.peers) if self.peers[r].is_leader()]

    def take_heartbeat_due(self) -> list[Peer]:
        due, self.heartbeat_due = self.heartbeat_due, set()
        return [self.peers[r] for r in sorted(due) if r in self.peers and self.peers[r].is_leader()]

"""One replica of one region on this store: a Raft node plus what waits on it.

A `Peer` owns its `RaftNode` and `PeerStorage`, the writes and reads queued
during the current round, the proposals in flight and the reads waiting for
a read index or for apply. It never does I/O itself beyond its storage seam;
`StoreCore` drives it round by round.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from kvproto.errorpb import RegionError, StaleCommand, UndeterminedResult
from kvproto.kvrpcpb import KvError, SessionRef
from kvproto.metapb import Peer as PeerMeta
from kvproto.metapb import PeerId, Region, RegionId
from kvproto.raft_cmdpb import (
    AdminRequest,
    ClientWrite,
    RaftCmdRequest,
    RaftRequestHeader,
    WriteCommand,
    WriteOp,
    WriteOutcome,
    WriteResult,
)
from raft.node import RaftNode
from raft.progress import ProgressState
from raft.types import Role
from store_node.freshness import Freshness
from store_node.lease import Lease
from store_node.peer_storage import PeerStorage
from store_node.records import ApplyState

log = logging.getLogger(__name__)

_READ_CTX = struct.Struct(">QQQ")

Token = Hashable


@dataclass(frozen=True, slots=True)
class WriteDone:
    """A client write was applied, now or (session) before: its ops'
    results; or its session refused it (`error`, SESSION_EXPIRED)."""

    results: tuple[WriteResult, ...] = ()
    error: KvError | None = None


@dataclass(frozen=True, slots=True)
class ReadPermit:
    """The read may now run against `kv/`: everything committed before it
    arrived is applied; or, for a stale read (`staleness` > 0), every write
    acknowledged before `staleness` seconds ago. `region` is the region as
    of now."""

    region: Region
    staleness: float = 0.0


@dataclass(frozen=True, slots=True)
class AdminDone:
    """An admin command applied: the region(s) it produced (a split: the
    original first, then the new regions in key order)."""

    regions: tuple[Region, ...]


ReplyValue = WriteDone | ReadPermit | AdminDone | RegionError


@dataclass(frozen=True, slots=True)
class Reply:
    token: Token
    value: ReplyValue


@dataclass(slots=True)
class Proposal:
    """A proposed entry and who waits for it: each waiter gets the outcome
    of its own client write (by position in the command)."""

    index: int
    term: int
    waiters: list[tuple[Token, int]]  # (token, client write index)
    is_admin: bool = False


@dataclass(slots=True)
class ReadBatch:
    """Reads that share one ReadIndex round (or a lease read), and the
    round itself: once applied up to its index, the peer is fresh as of
    `started_at` (store_node.freshness)."""

    tokens: list[Token]
    index: int = 0  # known once the ReadState arrives
    started_tick: int = 0  # when its ReadIndex round began (store ticks)
    # When the round began (monotonic seconds) and under which lease
    # generation and term, if a leader began it: its answer renews the lease.
    started_at: float = -math.inf
    generation: int = 0
    term: int = 0
    renews_lease: bool = False


@dataclass(slots=True)
class Flow:
    """A leader's client traffic in its region since `since_tick` (the store
    tick of its previous region heartbeat, or of becoming leader): what the
    next heartbeat reports to the PD (`pd_worker.region_heartbeat_request`)."""

    since_tick: int = 0
    written_bytes: int = 0
    written_keys: int = 0
    read_bytes: int = 0
    read_keys: int = 0


@dataclass(slots=True)
class QueuedWrite:
    token: Token
    ops: tuple[WriteOp, ...]
    nbytes: int
    session: SessionRef | None = None


@dataclass(slots=True)
class Peer:
    region: Region
    meta: PeerMeta
    storage: PeerStorage
    node: RaftNode
    proposals: deque[Proposal] = field(default_factory=deque)
    queued_writes: list[QueuedWrite] = field(default_factory=list)
    queued_bytes: int = 0
    queued_reads: list[Token] = field(default_factory=list)
    # Stale reads of this round, with the staleness each accepts (seconds):
    # decided when the round ends (store_node.queries.start_reads).
    queued_stale: list[tuple[Token, float]] = field(default_factory=list)
    # ReadIndex rounds in flight, by request context.
    reading: dict[bytes, ReadBatch] = field(default_factory=dict)
    # Reads whose index is known, waiting for apply to reach it (index order).
    read_waiting: deque[ReadBatch] = field(default_factory=deque)
    read_seq: int = 0
    lease: Lease = field(default_factory=lambda: Lease(0.0))
    freshness: Freshness = field(default_factory=Freshness)
    # Drawn at creation: a leader keys pending reads by context alone, so a
    # context must be unique among every peer of the region and across
    # restarts of this one (its counter starts again at 0).
    read_nonce: int = 0
    # Peers we ever knew in this region (messages to removed peers still go out).
    peer_cache: dict[PeerId, PeerMeta] = field(default_factory=dict)
    # The store tick at which each other peer was last heard from.
    last_heard: dict[PeerId, int] = field(default_factory=dict)
    pending_remove: bool = False
    # Regions produced by this region's latest split (for EpochNotMatch).
    split_siblings: tuple[Region, ...] = ()
    # Approximate data size and key count (None: unknown until scanned).
    approximate_size: int | None = None
    approximate_keys: int | None = None
    split_checking: bool = False
    # A write applied since the region was last measured (or never
    # measured): only such regions are measured again by the periodic scan.
    size_changed: bool = True

    # A snapshot is being generated for followers (at most one at a time).
    generating: bool = False
    # The peers the last region heartbeat reported pending: when one
    # catches up, the PD hears of it at once (an operator's AddLearner step
    # is done only then), not at the next periodic heartbeat.
    reported_pending: frozenset[PeerId] = frozenset()
    # Counted only while leader (the leader reports it), from zero at each
    # leader change.
    flow: Flow = field(default_factory=Flow)
    # Hibernation (store_node.hibernate): not ticked while asleep; a leader
    # counts its idle ticks, asks to sleep once it has enough
    # (`wants_sleep`), and sleeps when every other member acked.
    asleep: bool = False
    idle_ticks: int = 0
    wants_sleep: bool = False
    sleep_acks: set[PeerId] = field(default_factory=set)

    def pending_peers(self) -> list[PeerMeta]:
        """The members a leader would report pending: catching up by
        snapshot, or behind the truncated log."""
        status = self.node.status()
        truncated = self.storage.apply_state.truncated_index
        pending: list[PeerMeta] = []
        for node_id, pr in status.progress.items():
            if node_id == status.id:
                continue
            meta = self.region.find_peer(PeerId(node_id))
            if meta is not None and (pr.state == ProgressState.SNAPSHOT or pr.match < truncated):
                pending.append(meta)
        return pending

    @property
    def region_id(self) -> int:
        return self.region.id

    @property
    def initialized(self) -> bool:
        """False for a peer created from a message and still waiting for its
        first snapshot: it has no range, no data and knows no peers."""
        return bool(self.region.peers)

    @property
    def apply_state(self) -> ApplyState:
        return self.storage.apply_state

    def is_leader(self) -> bool:
        return self.node.role == Role.LEADER

    def leader_meta(self) -> PeerMeta | None:
        lid = self.node.leader_id
        if lid == 0:
            return None
        return self.peer_cache.get(PeerId(lid)) or self.region.find_peer(PeerId(lid))

    def command(self, admin: AdminRequest) -> RaftCmdRequest:
        """An admin command for this region's log, stamped with its epoch now."""
        return RaftCmdRequest(header=self._header(), admin=admin)

    def write_command(
        self, writes: tuple[ClientWrite, ...], time_ms: int, session_ttl_ms: int
    ) -> WriteCommand:
        """Client writes for this region's log, stamped with its epoch now."""
        return WriteCommand(self._header(), time_ms, session_ttl_ms, writes)

    def _header(self) -> RaftRequestHeader:
        return RaftRequestHeader(RegionId(self.region.id), self.meta.id, self.region.epoch)

    def remember_peers(self, region: Region) -> None:
        for p in region.peers:
            self.peer_cache[p.id] = p

    # -- proposals ---------------------------------------------------------------

    def resolve_applied(
        self,
        index: int,
        term: int,
        writes: tuple[WriteOutcome, ...],
        err: RegionError | None,
        regions: tuple[Region, ...] = (),
    ) -> list[Reply]:
        """Answer the proposals an entry applied at (index, term) decides.

        The entry at `index` answers the proposal made at (index, term); one of
        another term there was overwritten. A proposal of an older term than
        `term` can never commit any more (entries after `index` are all of
        term >= `term`): it is stale too, whatever its index.
        """
        replies: list[Reply] = []
        keep: deque[Proposal] = deque()
        for p in self.proposals:
            if p.index < index:
                # Skipped by a snapshot (`resolve_snapshot` answers those):
                # whether it committed is not known here.
                replies.extend(Reply(t, UndeterminedResult()) for t, _ in p.waiters)
            elif (p.index == index and p.term != term) or p.term < term:
                replies.extend(Reply(t, StaleCommand()) for t, _ in p.waiters)
            elif p.index == index:
                for t, i in p.waiters:
                    if err is not None:
                        replies.append(Reply(t, err))
                    elif p.is_admin:
                        replies.append(Reply(t, AdminDone(regions or (self.region,))))
                    else:
                        outcome = writes[i]
                        if isinstance(outcome, KvError):
                            replies.append(Reply(t, WriteDone(error=outcome)))
                        else:
                            replies.append(Reply(t, WriteDone(outcome)))
            else:
                keep.append(p)
        self.proposals = keep
        return replies

    def resolve_snapshot(self, index: int, term: int) -> list[Reply]:
        """Answer the proposals a snapshot at (index, term) covers: their
        entries were applied, or overwritten, elsewhere.

        One of a later term than the snapshot's cannot have committed at or
        below `index` (the committed entry there is of term <= `term`): stale.
        Any other may have committed (of the same term it certainly did:
        nobody but us wrote entries of our term), with an answer this peer
        never computed: undetermined, never "did not run".
        """
        replies: list[Reply] = []
        keep: deque[Proposal] = deque()
        for p in self.proposals:
            if p.index > index:
                keep.append(p)
                continue
            err: RegionError = StaleCommand() if p.term > term else UndeterminedResult()
            replies.extend(Reply(t, err) for t, _ in p.waiters)
        self.proposals = keep
        return replies

    def has_waiting(self) -> bool:
        """Whether anything waits in this peer: what `fail_all` answers."""
        return bool(
            self.proposals
            or self.queued_writes
            or self.queued_reads
            or self.queued_stale
            or self.reading
            or self.read_waiting
        )

    def fail_all(self, err: RegionError) -> list[Reply]:
        """Answer everything waiting (the peer is being destroyed or stopped)."""
        replies = [Reply(t, err) for p in self.proposals for t, _ in p.waiters]
        replies += [Reply(w.token, err) for w in self.queued_writes]
        replies += [Reply(t, err) for t in self.queued_reads]
        replies += [Reply(t, err) for t, _ in self.queued_stale]
        for b in list(self.reading.values()) + list(self.read_waiting):
            replies += [Reply(t, err) for t in b.tokens]
        self.proposals.clear()
        self.queued_writes.clear()
        self.queued_bytes = 0
        self.queued_reads.clear()
        self.queued_stale.clear()
        self.reading.clear()
        self.read_waiting.clear()
        return replies

    def fail_reads(self, err: RegionError) -> list[Reply]:
        """Reads in a ReadIndex round die with leadership (the round would
        never complete); reads already given an index stay valid."""
        replies = [Reply(t, err) for b in self.reading.values() for t in b.tokens]
        self.reading.clear()
        return replies

    def expire_reads(self, before_tick: int, err: RegionError) -> list[Reply]:
        """Answer the reads whose ReadIndex round began before `before_tick`
        and is still unanswered: a forwarded request or its answer was lost
        (Raft does not retry them)."""
        expired = [c for c, b in self.reading.items() if b.started_tick < before_tick]
        return [Reply(t, err) for c in expired for t in self.reading.pop(c).tokens]

    def next_read_ctx(self) -> bytes:
        """A ReadIndex context: this peer's id, its incarnation, a counter."""
        self.read_seq += 1
        return _READ_CTX.pack(self.meta.id, self.read_nonce, self.read_seq)

    def serve_reads(self) -> list[Reply]:
        """Permits for the reads whose index is applied; the peer is fresh
        as of their rounds' start."""
        applied = self.node.applied_index
        replies: list[Reply] = []
        while self.read_waiting and self.read_waiting[0].index <= applied:
            b = self.read_waiting.popleft()
            self.freshness.confirmed(b.started_at)
            replies.extend(Reply(t, ReadPermit(self.region)) for t in b.tokens)
        return replies

"""Commands through a region's log, at the leader: client writes queued
during a round and proposed as one batched entry per region (split by
`max_entry_bytes`; at most `max_round_bytes` a round, the rest in the next),
membership changes and splits proposed at once.

Functions of one `Peer` (the leader `StoreCore` found for the request);
they answer at once what cannot be proposed and leave a `Proposal` for the
rest, resolved when its entry applies (`Peer.resolve_applied`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from kvproto import codec
from kvproto.errorpb import KeyNotInRegion, NotLeader, RegionError, ServerIsBusy
from kvproto.kvrpcpb import SessionRef
from kvproto.metapb import PeerId, RegionId
from kvproto.raft_cmdpb import (
    BatchSplitRequest,
    ChangePeerRequest,
    ClientWrite,
    DeleteRange,
    SplitRequest,
    WriteOp,
)
from raft.errors import (
    ConfChangeError,
    ConfChangePendingError,
    LeaderTransferringError,
    NotLeaderError,
    ProposalDroppedError,
)
from raft.node import Status
from raft.types import Role
from store_node import membership, split
from store_node.apply import range_inside
from store_node.peer import Peer, Proposal, QueuedWrite, Reply, Token
from store_node.round_output import RoundOutput


def queue_write(
    peer: Peer,
    token: Token,
    ops: tuple[WriteOp, ...],
    nbytes: int,
    session: SessionRef | None,
    max_pending_bytes: int,
) -> RegionError | None:
    """Queue a client write for the round's batch, or say why not (a key
    outside the region, too much queued)."""
    region = peer.region
    for op in ops:
        if isinstance(op, DeleteRange):
            if not range_inside(region, op.start_key, op.end_key):
                return KeyNotInRegion(op.start_key, region.id, region.start_key, region.end_key)
        elif not region.contains(op.key):
            return KeyNotInRegion(op.key, region.id, region.start_key, region.end_key)
    if peer.queued_bytes + nbytes > max_pending_bytes:
        return ServerIsBusy("too many writes queued on this region", backoff_ms=20)
    peer.queued_writes.append(QueuedWrite(token, ops, nbytes, session))
    peer.queued_bytes += nbytes
    return None


def propose_writes(
    peer: Peer,
    max_entry_bytes: int,
    max_round_bytes: int,
    now_ms: int,
    session_ttl_ms: int,
    out: RoundOutput,
) -> bool:
    """Propose the round's queued writes, as few entries as the size allows,
    up to `max_round_bytes` of them (one write at least); True if some stay
    queued for the next round (large values: a round that appends and
    replicates several of them keeps every other region waiting)."""
    if not peer.queued_writes:
        return False
    n = total = 0
    for w in peer.queued_writes:
        if n and total + w.nbytes > max_round_bytes:
            break
        n += 1
        total += w.nbytes
    queued, peer.queued_writes = peer.queued_writes[:n], peer.queued_writes[n:]
    peer.queued_bytes -= total
    batch: list[QueuedWrite] = []
    size = 0
    for w in queued:
        if batch and size + w.nbytes > max_entry_bytes:
            _propose_batch(peer, batch, now_ms, session_ttl_ms, out)
            batch, size = [], 0
        batch.append(w)
        size += w.nbytes
    if batch:
        _propose_batch(peer, batch, now_ms, session_ttl_ms, out)
    return bool(peer.queued_writes)


def _propose_batch(
    peer: Peer, batch: list[QueuedWrite], now_ms: int, session_ttl_ms: int, out: RoundOutput
) -> None:
    writes = tuple(ClientWrite(w.session, w.ops) for w in batch)
    waiters = [(w.token, i) for i, w in enumerate(batch)]
    cmd = peer.write_command(writes, now_ms, session_ttl_ms)
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


def propose_change_peer(
    peer: Peer, token: Token, req: ChangePeerRequest, heard: Collection[int] = ()
) -> RegionError | str | None:
    """Propose a membership change now; a region error, a refusal reason,
    or None once proposed. Refused if it would leave the region without a
    healthy quorum (TiKV's check_conf_change): a group that cannot commit
    cannot take back the change either."""
    cc = membership.to_conf_change(req, codec.dumps(peer.command(req)))
    try:
        after = membership.apply_to_region(peer.region, cc, req)
        status = peer.node.status()
        if status.role == Role.LEADER:  # else propose_conf_change raises NotLeaderError
            healthy = _healthy(status) | set(heard)
            unsafe = membership.quorum_problem(peer.region, after, healthy)
            if unsafe is not None:
                return f"{unsafe} ({_HEALTHY})"
        index = peer.node.propose_conf_change(cc)
    except (ConfChangeError, ConfChangePendingError) as e:
        return str(e)
    except NotLeaderError as e:
        return NotLeader(RegionId(peer.region_id), peer.peer_cache.get(PeerId(e.leader_id)))
    except ProposalDroppedError as e:
        return str(e)
    peer.proposals.append(Proposal(index, peer.node.term, [(token, 0)], is_admin=True))
    peer.lease.suspend()
    return None


_HEALTHY = "healthy: the leader and the followers heard from within an election timeout"


def _healthy(status: Status) -> set[int]:
    """The members a leader can count on to acknowledge: itself and those
    heard from since its last CheckQuorum round (`recent_active`; that
    round clears it, so the caller adds the peers heard from lately)."""
    return {status.id} | {i for i, pr in status.progress.items() if pr.recent_active}


def propose_split(
    peer: Peer,
    token: Token,
    split_keys: tuple[bytes, ...],
    ids: Sequence[tuple[int, tuple[int, ...]]],
) -> str | None:
    """Propose a BatchSplit with ids from the PD; why not, or None."""
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
    # The followers create the new regions' peers when they apply the split:
    # until then the new regions cannot elect.
    peer.node.broadcast_commit_of(index)
    peer.proposals.append(Proposal(index, peer.node.term, [(token, 0)], is_admin=True))
    return None

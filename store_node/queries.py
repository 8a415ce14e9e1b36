"""Linearizable reads at the leader: from its lease (store_node.lease) when
it holds one, else through Raft's ReadIndex (section 6.4), where the reads
admitted during a round share one request; once the read index is known and
applied, each gets a `ReadPermit` and runs against kv/ at once.

Functions of one `Peer`. A read whose ReadIndex round cannot start (no
leader known) is answered NotLeader at once; one whose round never comes
back (a forwarded request or its answer lost) is answered NotLeader when it
expires, so nothing waits forever.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvproto.errorpb import KeyNotInRegion, NotLeader, RegionError
from kvproto.metapb import RegionId
from raft.errors import ProposalDroppedError
from store_node.peer import Peer, ReadBatch, ReadPermit, Reply, Token
from store_node.round_output import RoundOutput


def queue_read(peer: Peer, token: Token, keys: Iterable[bytes]) -> RegionError | None:
    """Queue a read of `keys` (or of a range whose bounds are passed as
    keys) for the round's shared ReadIndex, or say why not."""
    region = peer.region
    for key in keys:
        if not region.contains(key):
            return KeyNotInRegion(key, region.id, region.start_key, region.end_key)
    peer.queued_reads.append(token)
    return None


def start_reads(peer: Peer, tick: int, now: float, out: RoundOutput) -> None:
    """Serve the reads queued in this round from the lease, or start one
    ReadIndex request for them; renew a lease that is running out."""
    node = peer.node
    lease = peer.lease
    if node.transferring_leadership:
        lease.suspend()
    leader = peer.is_leader()
    if leader and lease.valid(now, node.term):
        if peer.queued_reads:
            tokens, peer.queued_reads = peer.queued_reads, []
            # Nobody else leads: everything acknowledged is committed here,
            # and is visible once applied up to the commit index of now.
            batch = ReadBatch(tokens=tokens, index=node.commit_index)
            if batch.index <= node.applied_index:
                out.replies.extend(Reply(t, ReadPermit(peer.region)) for t in tokens)
            else:
                peer.read_waiting.append(batch)
            out.lease_reads += len(tokens)
        if lease.wants_renewal(now, node.term):
            _start_round(peer, [], tick, now, out)
        return
    if peer.queued_reads:
        tokens, peer.queued_reads = peer.queued_reads, []
        _start_round(peer, tokens, tick, now, out)


def _start_round(peer: Peer, tokens: list[Token], tick: int, now: float, out: RoundOutput) -> None:
    ctx = peer.next_read_ctx()
    try:
        peer.node.read_index(ctx)
    except ProposalDroppedError:
        # Leadership went between admission and now, to nobody known yet.
        err = NotLeader(RegionId(peer.region_id), peer.leader_meta())
        out.replies.extend(Reply(t, err) for t in tokens)
        return
    lease = peer.lease
    peer.reading[ctx] = ReadBatch(
        tokens=tokens,
        started_tick=tick,
        started_at=now,
        generation=lease.generation,
        term=peer.node.term,
        renews_lease=peer.is_leader(),
    )
    lease.last_round_at = now


def read_answered(peer: Peer, ctx: bytes, index: int) -> None:
    """A ReadIndex round came back with its read index: its reads wait for
    apply to reach it, and a leader's round renews the lease."""
    batch = peer.reading.pop(ctx, None)
    if batch is None:
        return
    if batch.renews_lease:
        peer.lease.renew(batch.started_at, batch.term, batch.generation)
    if batch.tokens:
        batch.index = index
        peer.read_waiting.append(batch)


def expire_reads(peer: Peer, before_tick: int) -> list[Reply]:
    """Answer NotLeader to the reads whose ReadIndex round began before
    `before_tick` and never came back."""
    if not peer.reading:
        return []
    return peer.expire_reads(before_tick, NotLeader(RegionId(peer.region_id), peer.leader_meta()))

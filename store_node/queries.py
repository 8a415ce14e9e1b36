"""Reads, by the consistency each asks (`kvproto.kvrpcpb.Consistency`).

* Strong reads, at the leader: from its lease (store_node.lease) when it
  holds one, else through Raft's ReadIndex (section 6.4), where the reads
  admitted during a round share one request; once the read index is known
  and applied, each gets a `ReadPermit` and runs against kv/ at once.
* Follower reads, at any initialized peer: the same path. A follower's
  ReadIndex request is forwarded to the leader, which answers with its
  commit index once a quorum has confirmed its leadership; the follower
  serves the reads once it has applied that far. Linearizable: the index
  is the leader's commit index at a time after the read arrived, so it
  covers every write acknowledged before, and the state at it is no older
  than the read. A leader serves them like strong reads.
* Stale reads, at any initialized peer: decided when the round ends
  (`start_reads` has the clock). From the lease at a leader holding one
  (staleness 0); else at once from the applied state, with the staleness
  the peer's freshness (store_node.freshness) allows, if the read accepts
  it; else served as a follower read (staleness 0).

Functions of one `Peer`. A read whose ReadIndex round cannot start (no
leader known) is answered NotLeader at once; one whose round never comes
back (a forwarded request or its answer lost) is answered NotLeader when it
expires, so nothing waits forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kvproto.errorpb import KeyNotInRegion, NotLeader, RegionError, RegionNotFound
from kvproto.kvrpcpb import Consistency
from kvproto.metapb import RegionId
from raft.errors import ProposalDroppedError
from store_node.peer import Peer, ReadBatch, ReadPermit, Reply, Token
from store_node.round_output import RoundOutput


def lease_permit(peer: Peer, keys: Iterable[bytes], now: float) -> ReadPermit | RegionError | None:
    """A permit for a strong read of `keys` at once, from the leader's
    lease (TiKV's local reader), or None if the read must wait for a round:
    not the leader, no valid lease at `now`, a transfer under way, or no
    entry of this term applied yet.

    Why the applied state is enough: once an entry of its own term is
    applied, every entry of earlier terms is applied here, and the entries
    committed but not yet applied are this leader's own, not acknowledged
    to anyone (writes are answered once applied here). So the applied state
    holds every write acknowledged before the read arrived. Served between
    rounds, possibly while a round's writes are in flight: kv/ then holds at
    least what this peer has applied. A round that destroys this peer or
    changes its membership suspends the lease first. (A lease of this term
    comes from a ReadIndex round, which starts only once an entry of the
    term committed, so the applied-term check rarely refuses: it keeps the
    argument above local instead of resting on that.)
    """
    node = peer.node
    if not peer.is_leader() or node.transferring_leadership:
        return None
    lease = peer.lease
    if not lease.valid(now, node.term) or peer.storage.apply_state.applied_term != node.term:
        return None
    err = _check_keys(peer, keys)
    if err is not None:
        return err
    peer.freshness.confirmed(now)
    return ReadPermit(peer.region)


def queue_read(peer: Peer, token: Token, keys: Iterable[bytes]) -> RegionError | None:
    """Queue a read of `keys` (or of a range whose bounds are passed as
    keys) for the round's shared ReadIndex, or say why not."""
    err = _check_keys(peer, keys)
    if err is None:
        peer.queued_reads.append(token)
    return err


def queue_replica_read(
    peer: Peer,
    token: Token,
    keys: Iterable[bytes],
    consistency: Consistency,
    max_staleness: float,
) -> RegionError | None:
    """Queue a follower read, or a stale read accepting `max_staleness`
    seconds, at `peer` whatever its role; or say why not."""
    err = _check_keys(peer, keys)
    if err is not None:
        return err
    if consistency == Consistency.STALE:
        peer.queued_stale.append((token, max_staleness))
    else:
        peer.queued_reads.append(token)
    return None


def _check_keys(peer: Peer, keys: Iterable[bytes]) -> RegionError | None:
    region = peer.region
    for key in keys:
        if not region.contains(key):
            return KeyNotInRegion(key, region.id, region.start_key, region.end_key)
    return None


def start_reads(peer: Peer, tick: int, now: float, out: RoundOutput) -> None:
    """Serve the reads queued in this round from the lease, or start one
    ReadIndex request for them; serve stale reads from the applied state if
    fresh enough; renew a lease that is running out, or a freshness that
    stale reads will soon find too old."""
    node = peer.node
    lease = peer.lease
    if node.transferring_leadership:
        lease.suspend()
    leader = peer.is_leader()
    if leader and lease.valid(now, node.term):
        if peer.queued_reads or peer.queued_stale:
            stale = [t for t, _ in peer.queued_stale]
            tokens = peer.queued_reads + stale
            peer.queued_reads, peer.queued_stale = [], []
            # Nobody else leads: everything acknowledged is committed here,
            # and is visible once applied up to the commit index of now.
            batch = ReadBatch(tokens=tokens, index=node.commit_index, started_at=now)
            if batch.index <= node.applied_index:
                peer.freshness.confirmed(now)
                out.replies.extend(Reply(t, ReadPermit(peer.region)) for t in tokens)
            else:
                peer.read_waiting.append(batch)
            out.counts["lease_reads"] += len(tokens) - len(stale)
            out.counts["stale_reads"] += len(stale)
        if lease.wants_renewal(now, node.term):
            _start_round(peer, [], tick, now, out)
        return
    if peer.queued_stale:
        _serve_stale(peer, now, out)
    if peer.queued_reads:
        tokens, peer.queued_reads = peer.queued_reads, []
        _start_round(peer, tokens, tick, now, out)
    if peer.freshness.wants_renewal(now):
        _start_round(peer, [], tick, now, out)


def _serve_stale(peer: Peer, now: float, out: RoundOutput) -> None:
    """Answer the queued stale reads from the applied state, or queue those
    that do not accept its staleness as follower reads."""
    freshness = peer.freshness
    staleness = freshness.staleness(now)
    for token, max_staleness in peer.queued_stale:
        freshness.asked(now, max_staleness)
        if staleness <= max_staleness:
            out.stale_permits.append((peer, token, staleness))
            out.counts["stale_reads"] += 1
        else:
            peer.queued_reads.append(token)
            out.counts["stale_reads_refused"] += 1
    peer.queued_stale = []


def grant_stale(peers: Mapping[int, Peer], out: RoundOutput) -> list[Reply]:
    """Permits for the stale reads `start_reads` served in the round `out`,
    now that it is applied: with the region as of now, so that a snapshot
    installed or a split applied in the round (data replaced or moved out
    of the range) fails the read's epoch check instead of serving it."""
    replies: list[Reply] = []
    for peer, token, staleness in out.stale_permits:
        if peers.get(peer.region_id) is peer:
            replies.append(Reply(token, ReadPermit(peer.region, staleness)))
        else:
            replies.append(Reply(token, RegionNotFound(RegionId(peer.region_id))))
    return replies


def _start_round(peer: Peer, tokens: list[Token], tick: int, now: float, out: RoundOutput) -> None:
    ctx = peer.next_read_ctx()
    try:
        peer.node.read_index(ctx)
    except ProposalDroppedError:
        # Leadership went between admission and now, to nobody known yet;
        # or a follower read at a follower that knows no leader.
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
    peer.freshness.last_round_at = now
    if not peer.is_leader():
        # Served by a follower, once the leader answers.
        out.counts["follower_reads"] += len(tokens)


def read_answered(peer: Peer, ctx: bytes, index: int) -> None:
    """A ReadIndex round came back with its read index: its reads (and the
    peer's freshness) wait for apply to reach it, and a leader's round
    renews the lease."""
    batch = peer.reading.pop(ctx, None)
    if batch is None:
        return
    if batch.renews_lease:
        peer.lease.renew(batch.started_at, batch.term, batch.generation)
    batch.index = index
    peer.read_waiting.append(batch)


def expire_reads(peer: Peer, before_tick: int) -> list[Reply]:
    """Answer NotLeader to the reads whose ReadIndex round began before
    `before_tick` and never came back."""
    if not peer.reading:
        return []
    return peer.expire_reads(before_tick, NotLeader(RegionId(peer.region_id), peer.leader_meta()))

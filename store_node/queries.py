"""Linearizable reads at the leader (Raft's ReadIndex, section 6.4): reads
admitted during a round share one ReadIndex request; once its read index is
known and applied, each gets a `ReadPermit` and runs against kv/ at once.

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
from store_node.peer import Peer, ReadBatch, Reply, Token
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


def start_reads(peer: Peer, tick: int, out: RoundOutput) -> None:
    """One ReadIndex request for the reads queued in this round."""
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
    peer.reading[ctx] = ReadBatch(tokens=tokens, started_tick=tick)


def expire_reads(peer: Peer, before_tick: int) -> list[Reply]:
    """Answer NotLeader to the reads whose ReadIndex round began before
    `before_tick` and never came back."""
    if not peer.reading:
        return []
    return peer.expire_reads(before_tick, NotLeader(RegionId(peer.region_id), peer.leader_meta()))

"""What a store reports about itself to tools (`shardkv ctl store status`,
the debug RPC): every initialized peer's Raft and log position, and the
store's counters."""

from __future__ import annotations

from kvproto.debugpb import PeerStatus, StoreStatusResponse
from store_node.core import StoreCore


def store_status(core: StoreCore) -> StoreStatusResponse:
    peers = []
    for rid in sorted(core.peers):
        p = core.peers[rid]
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
    return StoreStatusResponse(core.store_id, tuple(peers), tuple(sorted(core.stats.items())))

"""What a store reports about itself to tools (`shardkv ctl store status`,
the debug RPC, `GET /status` on the status port): every initialized peer's
Raft and log position, and the store's counters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvproto.debugpb import PeerStatus, StoreStatusResponse
from store_node.core import StoreCore


def store_status(core: StoreCore, shell_counters: Mapping[str, int]) -> StoreStatusResponse:
    """The status of every initialized peer, and the core's counters with
    those of the shell (`StoreNode.loop_counters`: rounds, Raft traffic).
    Reads the core without changing it."""
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
    counters = {**core.stats, **shell_counters}
    return StoreStatusResponse(core.store_id, tuple(peers), tuple(sorted(counters.items())))


def status_json(
    status: StoreStatusResponse,
    address: str,
    disk: Mapping[str, Any] | None = None,
    *,
    blobs: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """`status` as the JSON document of `GET /status`: keys in hex (an empty
    end key is +infinity), this store's peer and its role in each region;
    `disk`: the disk's state (`DiskMonitor.state`: full or not, free and
    total bytes, the reserve); `blobs`: the blob files' figures
    (`BlobFiles.usage`)."""
    regions = []
    for p in status.peers:
        r = p.region
        me = r.peer_on_store(status.store_id)
        regions.append(
            {
                "id": r.id,
                "start_key": r.start_key.hex(),
                "end_key": r.end_key.hex(),
                "epoch": {"conf_ver": r.epoch.conf_ver, "version": r.epoch.version},
                "peer_id": None if me is None else me.id,
                "role": None if me is None else me.role.name.lower(),
                "leader": p.is_leader,
                "term": p.term,
                "commit_index": p.commit_index,
                "applied_index": p.applied_index,
                "truncated_index": p.truncated_index,
                "log_entries": p.log_entries,
                "log_bytes": p.log_bytes,
                "approximate_size": p.approximate_size,
                "approximate_keys": p.approximate_keys,
            }
        )
    return {
        "store_id": status.store_id,
        "address": address,
        "region_count": len(regions),
        "leader_count": sum(p.is_leader for p in status.peers),
        "disk": dict(disk or {}),
        "blobs": dict(blobs or {}),
        # Log growth (per region below): what compaction has not taken yet.
        "log_entries": sum(p.log_entries for p in status.peers),
        "log_bytes": sum(p.log_bytes for p in status.peers),
        "regions": regions,
        "counters": dict(status.counters),
    }

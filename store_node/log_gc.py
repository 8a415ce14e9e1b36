"""When a peer truncates its own Raft log (per region, locally).

A peer deletes its log prefix once the entries are applied (and, by the
time the deletion is written, durable in `kv/`: see `store_node.persist`).
A leader keeps what its followers still need, within a lag allowance; a
follower further behind than that gets a snapshot instead, so one slow or
dead replica never makes a log grow without bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: store_node.config imports LogGcConfig from here,
    # and the CLI, without the server extra, must not pull in lmdb.
    from store_node.peer import Peer
    from store_node.round_output import RoundOutput


@dataclass(frozen=True, slots=True)
class LogGcConfig:
    # Truncate only once at least this many entries can go (amortizes the
    # kv/ fsync every truncation costs).
    threshold: int = 128
    # A follower more than this many entries behind is left to a snapshot.
    count_limit: int = 10_000
    # Past this many log bytes, truncate to the applied index regardless of
    # followers (they get snapshots).
    size_limit: int = 64 << 20


def truncate_point(peer: Peer, cfg: LogGcConfig) -> int | None:
    """The index to truncate the log to, or None to leave it alone."""
    storage = peer.storage
    a = storage.apply_state
    applied = a.applied_index
    if applied - a.truncated_index < cfg.threshold:
        return None
    target = applied
    if peer.is_leader() and storage.log_bytes <= cfg.size_limit:
        status = peer.node.status()
        for node_id, pr in status.progress.items():
            if node_id == status.id:
                continue
            if applied - pr.match <= cfg.count_limit:
                # Within the allowance: keep what it still needs.
                target = min(target, pr.match)
    if target - a.truncated_index < cfg.threshold:
        return None
    return target


def write_truncations(
    peers: Mapping[int, Peer], truncations: Mapping[int, tuple[int, int]], out: RoundOutput
) -> int:
    """Add the decided truncations (region -> (index, term)) to the round:
    the log deletions after the kv/ write, the apply states with the new
    truncation point (in the region's apply task if it has one, which
    writes the apply state anyway). Returns how many were written."""
    with_task = {t.region.id for t in out.apply_tasks}
    written = 0
    for rid, (index, term) in sorted(truncations.items()):
        peer = peers.get(rid)
        if peer is None or index <= peer.storage.apply_state.truncated_index:
            continue
        peer.storage.truncate_to(index, term, out.raft_after_kv)
        written += 1
        if rid in with_task:
            for i, t in enumerate(out.apply_tasks):
                if t.region.id == rid:
                    out.apply_tasks[i] = replace(t, apply_state=peer.storage.apply_state)
        else:
            out.apply_states.append((rid, peer.storage.apply_state))
    return written

"""Snapshots as the core sees them: the files received for a peer, held
until Raft takes or refuses their snapshot, and what installing one does to
the peer (its data range replaced, its log restarted, its proposals
answered). Generation and transfer are the shell's (store_node.snapshot,
store_node.snapshot_transfer); installing into kv/ is region_tasks'. A delta
(store_node.snapshot_delta) installs the same way, clearing only the ranges
it replaces.
"""

from __future__ import annotations

from pathlib import Path

from raft.types import Snapshot
from store_node.peer import Peer
from store_node.region_tasks import Range, SnapshotTask, subtract_ranges
from store_node.round_output import RoundOutput
from store_node.snapshot import descriptor_of
from store_node.snapshot_delta import delta_refusal

SnapKey = tuple[int, int, int]  # region id, index, term


class ReceivedSnapshots:
    """Verified snapshot files waiting for their peer's next Ready."""

    def __init__(self) -> None:
        self._files: dict[SnapKey, Path] = {}

    def add(self, region_id: int, snap: Snapshot, path: Path) -> None:
        self._files[(region_id, snap.metadata.index, snap.metadata.term)] = path

    def take(self, region_id: int, snap: Snapshot) -> Path:
        key = (region_id, snap.metadata.index, snap.metadata.term)
        path = self._files.pop(key, None)
        if path is None:
            raise AssertionError(f"region {region_id}: no file for snapshot {key}")
        return path

    def sweep(self, out: RoundOutput) -> None:
        """At the end of a round: a snapshot Raft took was installed in it,
        any other was refused (below the commit index, replaced by a newer
        one...); its file goes."""
        out.obsolete_files.extend(self._files.values())
        self._files.clear()


def install(peer: Peer, snap: Snapshot, path: Path, others: list[Range], out: RoundOutput) -> None:
    """Install a snapshot Raft accepted for `peer` in this round: replace the
    data of its new (and old) range, except `others` (ranges of other peers
    here), restart its log at the snapshot, answer the proposals it covers.
    The caller then sets the peer's region to the snapshot's."""
    desc = descriptor_of(snap)
    region = desc.region
    index, term = snap.metadata.index, snap.metadata.term
    clear: list[Range] = [(region.start_key, region.end_key)]
    if desc.delta is not None:
        # Checked as it arrived (core.on_snapshot_received); no round ran since.
        why = delta_refusal(peer, peer.meta.id, desc)
        if why is not None:
            raise AssertionError(f"region {peer.region_id}: delta snapshot taken: {why}")
        clear = list(desc.delta.ranges)
    elif peer.initialized and (peer.region.start_key, peer.region.end_key) != clear[0]:
        clear.append((peer.region.start_key, peer.region.end_key))
    parts = [p for r in clear for p in subtract_ranges(r, others)]
    out.snapshot_tasks.append(SnapshotTask(region, path, index, term, tuple(parts)))
    out.obsolete_files.append(path)  # deleted by the shell once installed
    out.replies.extend(peer.resolve_snapshot(index, term))
    peer.storage.reset_to_snapshot(index, term, out.raft_after_kv)

"""What one round of the store core produces for its shell: the writes to
persist, the messages to send before and after them, the apply tasks, and
the whole-region work (snapshots, destroys, files, split measures)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kvproto.metapb import PeerId, Region, RegionId, StoreId
from kvproto.raft_serverpb import HibernateFlag, RaftMessage
from raft.node import Ready
from raft.types import Message, MessageType
from store_node.apply import ApplyTask
from store_node.engine import WriteBatch
from store_node.hibernate import flag_for
from store_node.peer import Peer, Reply, Token
from store_node.records import ApplyState
from store_node.region_tasks import DestroyTask, SnapshotTask

log = logging.getLogger(__name__)


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
    # Whole-region kv/ work: snapshot installs, peer destructions, and apply
    # states that changed without an apply task (log truncation points).
    snapshot_tasks: list[SnapshotTask] = field(default_factory=list)
    destroy_tasks: list[DestroyTask] = field(default_factory=list)
    apply_states: list[tuple[int, ApplyState]] = field(default_factory=list)
    # Raft writes that must follow a durable kv/ write (log resets, deletions).
    raft_after_kv: WriteBatch = field(default_factory=WriteBatch)
    must_sync_after_kv: bool = False
    # Snapshot messages go over their own connection with their data file.
    snapshot_sends: list[tuple[StoreId, RaftMessage, Path]] = field(default_factory=list)
    # Regions whose leader asked for a snapshot that must be generated.
    generate_snapshots: list[int] = field(default_factory=list)
    # Snapshot files no longer needed (the shell deletes them).
    obsolete_files: list[Path] = field(default_factory=list)
    # Regions (as of now) whose size must be measured for a split.
    split_checks: list[Region] = field(default_factory=list)
    # Client writes proposed in this round (a measure of load).
    proposed_writes: int = 0
    # Stale reads served from the applied state in this round, with their
    # staleness: permitted once the round is applied, with the region as of
    # then (store_node.queries.grant_stale).
    stale_permits: list[tuple[Peer, Token, float]] = field(default_factory=list)
    # Read counters of the round (lease_reads; follower_reads: reads a
    # follower forwarded to the leader; stale_reads, stale_reads_refused:
    # stale reads served from the applied state, or as follower reads),
    # added to the store's.
    counts: Counter[str] = field(default_factory=Counter)
    # How long the round's synced raft/ write and its kv/ transaction took
    # (seconds; None: none ran), set by store_node.persist for the shell's
    # latency histograms.
    fsync_seconds: float | None = None
    apply_seconds: float | None = None

    # Stores to send a liveness batch to (an empty one if nothing else goes
    # there this round): store_node.hibernate.
    pings: list[StoreId] = field(default_factory=list)

    def route(
        self,
        peer: Peer,
        m: Message,
        into: dict[StoreId, list[RaftMessage]],
        flag: HibernateFlag | None = None,
    ) -> None:
        """Address `m` from `peer` to its destination store in `into`; a
        snapshot goes to `snapshot_sends` with the file generated for it.
        `flag`: the hibernation flag (default: `hibernate.flag_for`)."""
        to = peer.peer_cache.get(PeerId(m.to))
        if to is None:
            log.debug("region %d: no store known for peer %d; dropped", peer.region_id, m.to)
            return
        region = peer.region
        rm = RaftMessage(
            region_id=RegionId(region.id),
            from_peer=peer.meta,
            to_peer=to,
            region_epoch=region.epoch,
            message=m,
            start_key=region.start_key,
            end_key=region.end_key,
            hibernate=flag_for(peer, m) if flag is None else flag,
        )
        if m.type == MessageType.SNAPSHOT:
            generated = peer.storage.generated
            assert generated is not None and generated[0] == m.snapshot, "snapshot not generated"
            self.snapshot_sends.append((to.store_id, rm, generated[1]))
        else:
            into[to.store_id].append(rm)

"""What the hand-driven Raft tests do to a node's storage, as the driver
contract of `raft.node` says: boot it from a snapshot, write a Ready."""

from __future__ import annotations

from raft import ConfState, HardState, MemoryStorage, Ready, Snapshot, SnapshotMetadata


def booted_storage(cs: ConfState, index: int = 1) -> MemoryStorage:
    """A storage starting from a snapshot at `index` (term 1) holding `cs`.
    The term of the snapshot is durable too, and `index` committed: no node
    starts below the term of an entry it holds."""
    storage = MemoryStorage()
    storage.apply_snapshot(Snapshot(SnapshotMetadata(index=index, term=1, conf_state=cs)))
    storage.set_hard_state(HardState(term=1, commit=index))
    return storage


def write_ready(storage: MemoryStorage, rd: Ready) -> None:
    """Write what `rd` asks to persist, in order: snapshot, entries, hard
    state (the caller then sends, applies and advances)."""
    if rd.snapshot is not None:
        storage.apply_snapshot(rd.snapshot)
    storage.append(rd.entries)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)

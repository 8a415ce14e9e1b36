"""A simulated node's disk: a `MemoryStorage` with an fsync model.

Writes land at once (they are the page cache, which the Raft core reads
back), but only a synced write makes them durable: `crash()` rolls the disk
back to its state at the last sync. A write that is not synced (the driver
contract lets a Ready with `must_sync == False` be written lazily) is lost
by a crash that comes before the next synced write.

A Ready is written part by part in the contract's order (snapshot, entries,
hard state); a crash may tear the write after any part (`tear_after`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from raft import Entry, HardState, MemoryStorage, Snapshot


@dataclass(slots=True)
class _Image:
    """What the disk held at the last sync (the parts touched since)."""

    hard_state: HardState
    # Captured only once an unsynced write touches the log itself.
    log: tuple[Snapshot, list[Entry]] | None = None


class SimDisk(MemoryStorage):
    """The durable state of one node; survives the node's crashes."""

    def __init__(self) -> None:
        super().__init__()
        self._image: _Image | None = None
        # Set by the simulator: called when the Raft core asks for a
        # snapshot; may raise SnapshotTemporarilyUnavailableError (while a
        # fresh one is being built) or return None to use the stored one.
        self.snapshot_hook: Callable[[], None] | None = None

    # -- the fsync model -------------------------------------------------------

    @property
    def has_unsynced_writes(self) -> bool:
        return self._image is not None

    def _before_unsynced(self, touches_log: bool) -> None:
        if self._image is None:
            self._image = _Image(self.hard_state)
        if touches_log and self._image.log is None:
            self._image.log = (self._snapshot, list(self._ents))

    def write_ready(
        self,
        snapshot: Snapshot | None,
        entries: tuple[Entry, ...],
        hard_state: HardState | None,
        sync: bool,
        tear_after: int | None = None,
    ) -> list[str]:
        """Write one Ready in the contract's order; returns the parts written.

        With `tear_after=k`, only the first k parts present are written (and
        made durable, as if synced part by part): the caller then crashes.
        """
        parts: list[str] = []
        if not sync:
            self._before_unsynced(touches_log=snapshot is not None or bool(entries))
        if snapshot is not None and tear_after != len(parts):
            self.apply_snapshot(snapshot)
            parts.append("snapshot")
        if entries and tear_after != len(parts):
            self.append(entries)
            parts.append("entries")
        if hard_state is not None and tear_after != len(parts):
            self.set_hard_state(hard_state)
            parts.append("hard state")
        if sync:
            self._image = None  # fsync makes every earlier write durable too
        return parts

    @staticmethod
    def parts_of(
        snapshot: Snapshot | None, entries: tuple[Entry, ...], hs: HardState | None
    ) -> int:
        return (snapshot is not None) + bool(entries) + (hs is not None)

    def sync(self) -> None:
        self._image = None

    def crash(self) -> bool:
        """Lose every unsynced write; returns whether anything was lost."""
        img = self._image
        if img is None:
            return False
        self._image = None
        self.hard_state = img.hard_state
        if img.log is not None:
            self._snapshot, self._ents = img.log
        return True

    # -- LogStorage -------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        hook = self.snapshot_hook
        if hook is not None:
            hook()
        return self._snapshot

    def stored_snapshot(self) -> Snapshot:
        """The stored snapshot, without asking for a fresh one."""
        return self._snapshot

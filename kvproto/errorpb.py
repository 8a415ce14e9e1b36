"""Region errors (tags 40..59): values returned in responses, never raised
across the wire as text.

Each carries what the caller needs to retry (the leader hint, the current
regions) and a one-line `describe()` for logs; `str()` is the same line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from kvproto.codec import wire
from kvproto.metapb import Peer, Region, RegionId, StoreId


def _key(key: bytes) -> str:
    # Keys are binary; repr is unambiguous and short enough for one line.
    return repr(key) if key else "''"


@wire(40)
@dataclass(frozen=True, slots=True)
class NotLeader:
    """This peer is not the leader; `leader` is its best guess (None if it
    knows of none): retry there."""

    region_id: RegionId
    leader: Peer | None = None

    def describe(self) -> str:
        hint = (
            f"try peer {self.leader.id} on store {self.leader.store_id}"
            if self.leader
            else "leader unknown"
        )
        return f"region {self.region_id}: not leader ({hint})"

    def __str__(self) -> str:
        return self.describe()


@wire(41)
@dataclass(frozen=True, slots=True)
class EpochNotMatch:
    """The request's epoch is not the region's; `current_regions` are what
    the store knows now (the region, or after a split all its parts)."""

    current_regions: tuple[Region, ...] = ()

    def describe(self) -> str:
        parts = ", ".join(
            f"{r.id}@v{r.epoch.version}/c{r.epoch.conf_ver}" for r in self.current_regions
        )
        return f"epoch not match (current: {parts or 'none'})"

    def __str__(self) -> str:
        return self.describe()


@wire(42)
@dataclass(frozen=True, slots=True)
class RegionNotFound:
    """This store has no peer of the region: reload it from the PD."""

    region_id: RegionId

    def describe(self) -> str:
        return f"region {self.region_id} not found on this store"

    def __str__(self) -> str:
        return self.describe()


@wire(43)
@dataclass(frozen=True, slots=True)
class KeyNotInRegion:
    """The key is outside ``[start_key, end_key)`` of the region addressed."""

    key: bytes
    region_id: RegionId
    start_key: bytes
    end_key: bytes

    def describe(self) -> str:
        end = _key(self.end_key) if self.end_key else "+inf"
        return (
            f"key {_key(self.key)} not in region {self.region_id} [{_key(self.start_key)}, {end})"
        )

    def __str__(self) -> str:
        return self.describe()


@wire(44)
@dataclass(frozen=True, slots=True)
class ServerIsBusy:
    """The store sheds load; retry after `backoff_ms`."""

    reason: str
    backoff_ms: int = 0

    def describe(self) -> str:
        return f"server is busy: {self.reason} (retry in {self.backoff_ms} ms)"

    def __str__(self) -> str:
        return self.describe()


@wire(45)
@dataclass(frozen=True, slots=True)
class StaleCommand:
    """The proposal was dropped (leadership or term changed under it); the
    command did not apply: safe to retry."""

    def describe(self) -> str:
        return "stale command"

    def __str__(self) -> str:
        return self.describe()


@wire(46)
@dataclass(frozen=True, slots=True)
class StoreNotMatch:
    """The request was meant for another store (addresses moved)."""

    request_store_id: StoreId
    actual_store_id: StoreId

    def describe(self) -> str:
        return (
            f"store not match: request for store {self.request_store_id}, "
            f"this is store {self.actual_store_id}"
        )

    def __str__(self) -> str:
        return self.describe()


@wire(47)
@dataclass(frozen=True, slots=True)
class UndeterminedResult:
    """The command may have been applied, but this store cannot tell its
    answer (its log entry was committed by another leader and reached this
    peer only through a snapshot). Not proof that it did not run: a retry in
    the same client session is answered from the session's record instead of
    running again."""

    def describe(self) -> str:
        return "result undetermined: the command may have been applied"

    def __str__(self) -> str:
        return self.describe()


@wire(48)
@dataclass(frozen=True, slots=True)
class DiskFull:
    """The store's free disk space is below its reserve (`min_free_disk`):
    it refuses client writes before proposing them (nothing was applied) and
    still serves reads. Retry later: an operator frees space, or the
    region's leader moves to a store that has room."""

    reason: str = ""

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"disk full{why}: writes refused"

    def __str__(self) -> str:
        return self.describe()


RegionError: TypeAlias = (
    NotLeader
    | EpochNotMatch
    | RegionNotFound
    | KeyNotInRegion
    | ServerIsBusy
    | StaleCommand
    | StoreNotMatch
    | UndeterminedResult
    | DiskFull
)

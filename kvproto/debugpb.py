"""A store's status for operators, tools and tests (tags 320..339).

Read-only: what each region's peer on the store looks like (applied and
truncated indexes, log size, leadership) and the store's counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvproto.codec import wire
from kvproto.metapb import Region, StoreId


@wire(320)
@dataclass(frozen=True, slots=True)
class StoreStatusRequest:
    pass


@wire(321)
@dataclass(frozen=True, slots=True)
class PeerStatus:
    region: Region
    is_leader: bool
    term: int
    commit_index: int
    applied_index: int
    truncated_index: int
    log_entries: int
    log_bytes: int
    approximate_size: int = 0
    approximate_keys: int = 0


@wire(322)
@dataclass(frozen=True, slots=True)
class StoreStatusResponse:
    store_id: StoreId
    peers: tuple[PeerStatus, ...] = ()
    # Counters since the store started, as (name, value) pairs in name order:
    # snapshots_generated/sent/received, log_truncations, splits,
    # peers_created/destroyed, rounds...
    counters: tuple[tuple[str, int], ...] = ()

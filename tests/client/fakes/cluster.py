"""The fake cluster's truth: regions, leaders, data, and what the stores
and the PD were asked. Tests change it directly (split a region, move a
leader, change membership, freeze what the PD knows) between calls."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from kvproto import kvrpcpb as kv
from kvproto.metapb import Peer, Region, RegionEpoch, StoreId
from tests.factories import peer, region


def store_address(store_id: int) -> str:
    return f"store{store_id}:20160"


@dataclass(slots=True)
class Seen:
    """One request as a store received it."""

    store_id: int
    kind: str
    region_id: int
    keys: tuple[bytes, ...]
    range: tuple[bytes, bytes] | None
    answer: str
    consistency: kv.Consistency = kv.Consistency.STRONG


@dataclass
class FakeCluster:
    store_ids: list[int]
    regions: dict[int, Region] = field(default_factory=dict)
    leaders: dict[int, Peer | None] = field(default_factory=dict)
    addresses: dict[int, str] = field(default_factory=dict)
    data: SortedDict[bytes, bytes] = field(default_factory=SortedDict)
    # What the PD serves when frozen (None: the truth).
    pd_view: tuple[dict[int, Region], dict[int, Peer | None]] | None = None
    seen: list[Seen] = field(default_factory=list)
    pd_calls: Counter[str] = field(default_factory=Counter)
    # Stores answer EpochNotMatch with every region overlapping the request's
    # old range (like TiKV after a split), not just the region asked.
    epoch_error_with_siblings: bool = False
    # Reads stop once they hold this many bytes of keys and values, as the
    # store's do at its MAX_READ_BYTES (scan: `more`, batch get: `unread`).
    max_read_bytes: int | None = None
    next_id: int = 100
    # Answers of session writes, by (region id, session id, number); a split
    # copies the region's to the new one.
    session_answers: dict[tuple[int, bytes, int], object] = field(default_factory=dict)

    @classmethod
    def build(
        cls, store_ids: list[int] | None = None, split_keys: Sequence[bytes] = ()
    ) -> FakeCluster:
        c = cls(store_ids or [1, 2, 3])
        c.addresses = {s: store_address(s) for s in c.store_ids}
        first = region(1, stores=c.store_ids)
        c.regions[1] = first
        c.leaders[1] = first.peers[0]
        for k in split_keys:
            c.split_at(k)
        return c

    # -- changes ----------------------------------------------------------

    def region_of(self, key: bytes) -> Region:
        for r in self.regions.values():
            if r.contains(key):
                return r
        raise AssertionError(f"no region holds {key!r}")

    def split_at(self, key: bytes) -> tuple[Region, Region]:
        """Split the region holding `key` at it: the left part keeps the id,
        both get version + 1, the right one's leader is on the left's
        leader's store."""
        old = self.region_of(key)
        assert old.start_key != key, "already a boundary"
        new_id = self.next_id
        self.next_id += 1
        epoch = RegionEpoch(old.epoch.conf_ver, old.epoch.version + 1)
        left = dataclasses.replace(old, end_key=key, epoch=epoch)
        right = region(
            new_id,
            key,
            old.end_key,
            conf_ver=epoch.conf_ver,
            version=epoch.version,
            stores=[p.store_id for p in old.peers],
        )
        self.regions[old.id] = left
        self.regions[new_id] = right
        for (rid, sid, seq), answer in list(self.session_answers.items()):
            if rid == old.id:
                self.session_answers[(new_id, sid, seq)] = answer
        leader = self.leaders.get(old.id)
        self.leaders[new_id] = None if leader is None else right.peer_on_store(leader.store_id)
        return left, right

    def move_leader(self, region_id: int, store_id: int | None) -> None:
        r = self.regions[region_id]
        self.leaders[region_id] = None if store_id is None else r.peer_on_store(StoreId(store_id))

    def set_peers(self, region_id: int, store_ids: list[int]) -> Region:
        """A membership change: conf_ver + 1, fresh peer ids for new stores."""
        r = self.regions[region_id]
        peers = tuple(
            r.peer_on_store(StoreId(s)) or peer(self._fresh_peer_id(), s) for s in store_ids
        )
        r2 = dataclasses.replace(
            r, peers=peers, epoch=RegionEpoch(r.epoch.conf_ver + 1, r.epoch.version)
        )
        self.regions[region_id] = r2
        leader = self.leaders.get(region_id)
        if leader is not None and r2.find_peer(leader.id) is None:
            self.leaders[region_id] = peers[0]
        return r2

    def _fresh_peer_id(self) -> int:
        self.next_id += 1
        return self.next_id * 10

    def freeze_pd(self) -> None:
        """From now on the PD answers with what it knows now."""
        self.pd_view = (dict(self.regions), dict(self.leaders))

    def thaw_pd(self) -> None:
        self.pd_view = None

    def kinds_seen(self, store_id: int | None = None) -> list[str]:
        return [s.kind for s in self.seen if store_id is None or s.store_id == store_id]

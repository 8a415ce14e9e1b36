"""Builders of the cluster metadata tests make again and again: peers,
regions, stores, epochs (the `kvproto.metapb` values), with plain ints for
ids and keywords for everything that has a usual value.

Conventions, so tests read without arithmetic:

* a region's peer on store `s` has id ``region_id * 10 + s`` (region 1:
  peers 11, 12, 13 on stores 1, 2, 3): voters first, then learners;
* `region(1)` covers the whole key space at epoch ``conf_ver=1, version=1``
  (`kvproto.epoch.INITIAL_EPOCH`) with voters on stores 1, 2, 3;
* store `s` listens on ``127.0.0.1:20160 + s``.

    region(2, b"m", b"", version=2)              # right half of a split
    region(1, stores=(1,), learners=(2,))        # voter 11, learner 12
    region(1, peers=(peer(100, 1), learner(101, 2)))   # ids chosen by the test
    store(3, state=StoreState.OFFLINE)
"""

from __future__ import annotations

from collections.abc import Iterable

from kvproto.metapb import (
    Peer,
    PeerId,
    PeerRole,
    Region,
    RegionEpoch,
    RegionId,
    Store,
    StoreId,
    StoreState,
)

__all__ = ["epoch", "learner", "peer", "peers", "region", "store"]


def epoch(*, conf_ver: int = 1, version: int = 1) -> RegionEpoch:
    return RegionEpoch(conf_ver=conf_ver, version=version)


def peer(peer_id: int, store_id: int, role: PeerRole = PeerRole.VOTER) -> Peer:
    return Peer(PeerId(peer_id), StoreId(store_id), role)


def learner(peer_id: int, store_id: int) -> Peer:
    return peer(peer_id, store_id, PeerRole.LEARNER)


def peers(
    region_id: int, stores: Iterable[int] = (1, 2, 3), *, learners: Iterable[int] = ()
) -> tuple[Peer, ...]:
    """A voter of region `region_id` on each of `stores`, then a learner on
    each of `learners`; the peer on store `s` has id ``region_id * 10 + s``."""
    return tuple(peer(region_id * 10 + s, s) for s in stores) + tuple(
        learner(region_id * 10 + s, s) for s in learners
    )


_peers = peers  # `region` has a parameter of that name


def region(
    region_id: int,
    start: bytes = b"",
    end: bytes = b"",
    *,
    version: int = 1,
    conf_ver: int = 1,
    stores: Iterable[int] | None = None,
    learners: Iterable[int] = (),
    peers: Iterable[Peer] | None = None,
) -> Region:
    """Region `region_id` over ``[start, end)`` (empty end: +infinity).

    Its peers are `peers` as given, or else those of the module's `peers`
    function: voters on `stores` (default 1, 2, 3), learners on `learners`.
    ``stores=()`` builds a region without peers."""
    if peers is None:
        members = _peers(region_id, (1, 2, 3) if stores is None else stores, learners=learners)
    elif stores is None and not learners:
        members = tuple(peers)
    else:
        raise TypeError("region(): give `peers`, or `stores` / `learners`, not both")
    return Region(
        RegionId(region_id), start, end, epoch(conf_ver=conf_ver, version=version), members
    )


def store(
    store_id: int,
    *,
    address: str | None = None,
    state: StoreState = StoreState.UP,
    labels: Iterable[tuple[str, str]] = (),
) -> Store:
    """Store `store_id` at `address` (default ``127.0.0.1:20160 + store_id``)."""
    return Store(
        StoreId(store_id),
        f"127.0.0.1:{20160 + store_id}" if address is None else address,
        state,
        tuple(labels),
    )

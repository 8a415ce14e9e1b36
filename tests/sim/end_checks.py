"""What the end of a whole-cluster simulation run checks of the cluster itself
(the history is the linearizability checker's): that it settled (every
region has one leader whose replicas applied all it committed, and every
key has a region with a leader), that every region's replicas are
byte-equal (data and client sessions), that no consistency check found
replicas that differ, and that a region tree tiles the key space.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from kvproto.metapb import PeerRole, Region
from placement_driver.consistency import CheckState
from tests.sim.digests import region_digest
from tests.sim.pd import SimPd
from tests.sim.store import SimStore


def leaders(stores: Mapping[int, SimStore]) -> dict[int, list[SimStore]]:
    """Region id -> the stores whose peer of it believes it leads (all stores up)."""
    out: dict[int, list[SimStore]] = {}
    for s in stores.values():
        assert s.core is not None
        for peer in s.core.leader_regions():
            out.setdefault(peer.region_id, []).append(s)
    return out


def converged(stores: Mapping[int, SimStore]) -> bool:
    """Every store up, every region led by one store whose replicas applied
    all it committed, and every key in a region with a leader."""
    if any(s.core is None for s in stores.values()):
        return False
    led = leaders(stores)
    for region_id, (store, *rest) in led.items():
        if rest:
            return False
        assert store.core is not None
        leader = store.core.peers[region_id]
        region = leader.region
        applied = leader.node.applied_index
        if leader.node.commit_index != applied:
            return False
        for p in region.peers:
            other = stores[p.store_id].core
            assert other is not None
            peer = other.peers.get(region_id)
            if peer is None or not peer.initialized or peer.node.applied_index != applied:
                return False
    # Every key has a region with a leader.
    regions = sorted(
        (stores[s[0].store_id].core.peers[rid].region for rid, s in led.items()),  # type: ignore[union-attr]
        key=lambda r: r.start_key,
    )
    return tiles(regions) is None


def leaderless(stores: Mapping[int, SimStore]) -> list[int]:
    """Regions whose voters are mostly on stores that are up, none of which
    leads them (the stores up may be partitioned: call it on a calm
    network). A region's shape is the newest epoch an up store knows."""
    up = {s.store_id: s.core for s in stores.values() if s.core is not None}
    newest: dict[int, Region] = {}
    led: set[int] = set()
    for core in up.values():
        for rid, peer in core.peers.items():
            if not peer.initialized:
                continue
            known = newest.get(rid)
            if known is None or (peer.region.epoch.conf_ver, peer.region.epoch.version) > (
                known.epoch.conf_ver,
                known.epoch.version,
            ):
                newest[rid] = peer.region
            if peer.is_leader():
                led.add(rid)
    out = []
    for rid, region in sorted(newest.items()):
        voters = [p for p in region.peers if p.role == PeerRole.VOTER]
        if rid not in led and 2 * sum(p.store_id in up for p in voters) > len(voters):
            out.append(rid)
    return out


def differing_replicas(stores: Mapping[int, SimStore]) -> tuple[str, str] | None:
    """The first region led whose replicas are not byte-equal, as (what, details), or None."""
    for region_id, (store, *_) in leaders(stores).items():
        assert store.core is not None
        region = store.core.peers[region_id].region
        sums = {}
        for p in region.peers:
            sums[p.store_id] = region_digest(stores[p.store_id].engine, region)
        if len(set(sums.values())) != 1:
            return f"replicas of region {region_id} differ", f"digests by store: {sums}"
    return None


def consistency_mismatches(stores: Mapping[int, SimStore], pd: SimPd) -> str | None:
    """What any consistency check of the run found to differ, or None: a
    store that counted a mismatch, or a check the PD judged one."""
    counted = {s.store_id: s.stats()["consistency_mismatches"] for s in stores.values()}
    found = [f"store {s} counted {n} mismatches" for s, n in sorted(counted.items()) if n]
    if pd.up:
        for check in pd.service.checks.latest():
            if check.state is CheckState.MISMATCH:
                found.append(
                    f"region {check.region_id} at {check.index}: "
                    + ", ".join(f"store {s} {d.hex()}" for s, d in sorted(check.digests.items()))
                )
    return "\n".join(found) or None


def tiles(regions: list[Region]) -> str | None:
    """Why sorted `regions` do not cover the key space exactly once, or None."""
    if not regions:
        return "no regions"
    if regions[0].start_key != b"":
        return f"nothing covers keys below {regions[0].start_key!r}"
    for a, b in itertools.pairwise(regions):
        if a.end_key != b.start_key:
            return f"region {a.id} ends at {a.end_key!r}, region {b.id} starts at {b.start_key!r}"
    if regions[-1].end_key != b"":
        return f"nothing covers keys from {regions[-1].end_key!r}"
    return None

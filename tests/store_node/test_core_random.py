"""Randomized runs of whole stores (StoreCore + real LMDB, in-thread
delivery): writes through splits while messages are dropped and stores
crash (one, or all at once) and restart. After healing, every acknowledged write is on every
replica of its region, replicas agree byte for byte, and the regions tile
the key space. A failure names its seed; rerun it with the same seed."""

from __future__ import annotations

import itertools
import random
import zlib
from pathlib import Path

import pytest

from kvproto.errorpb import RegionError
from kvproto.raft_cmdpb import Put
from kvproto.raft_serverpb import RaftMessage
from store_node import keys
from store_node.config import CoreConfig
from store_node.log_gc import LogGcConfig
from store_node.peer import WriteDone
from tests import factories
from tests.store_node.harness import CoreCluster, bootstrapped

CONFIG = CoreConfig(
    election_ticks=10, heartbeat_ticks=2, log_gc=LogGcConfig(max_entries=30, max_follower_lag=60)
)
STORES = [1, 2, 3]


def route(c: CoreCluster, key: bytes) -> tuple[int, int] | None:
    for s, core in c.cores.items():
        for rid, peer in core.peers.items():
            if peer.is_leader() and peer.initialized and peer.region.contains(key):
                return s, rid
    return None


def run(tmp_path: Path, seed: int, steps: int) -> tuple[int, int]:
    """One run; returns (acknowledged writes, regions at the end)."""
    rng = random.Random(seed)
    c = bootstrapped(tmp_path, STORES, CONFIG, sync=True)
    c.split_limits = (1 << 30, 40)
    acked: set[bytes] = set()
    sent: dict[object, bytes] = {}
    drop_rate = 0.0
    c.drop = lambda m: rng.random() < drop_rate
    written = 0
    for _ in range(steps):
        action = rng.random()
        if action < 0.55:  # a few writes to whoever leads the key's region
            for _ in range(rng.randint(1, 4)):
                key = b"k%06d" % rng.randrange(100_000)
                found = route(c, key)
                if found is None:
                    continue
                store, region_id = found
                token = ("w", seed, written)
                written += 1
                err = c.cores[store].propose_write(
                    token, c.context(region_id), (Put(key, b"v"),), 10
                )
                if err is None:
                    sent[token] = key
            c.stabilize()
        elif action < 0.85:
            c.tick(rng.randint(1, 3))
        elif action < 0.93:
            drop_rate = rng.choice([0.0, 0.0, 0.1, 0.3])
        elif c.down:
            for s in sorted(c.down):
                c.start(s)
        elif rng.random() < 0.2:  # every store at once, as in a power cut
            for s in STORES:
                c.crash(s)
        elif rng.random() < 0.5:  # one store: the others keep a quorum
            c.crash(rng.choice(STORES))
        for token, reply in list(c.replies.items()):
            if token in sent:
                if isinstance(reply.value, WriteDone):
                    acked.add(sent[token])
                else:
                    assert isinstance(reply.value, RegionError), reply
                del c.replies[token]
    # Heal: no drops, everyone up, time to converge.
    drop_rate = 0.0
    for s in sorted(c.down):
        c.start(s)
    c.tick(120)
    regions = {
        rid: p.region for core in c.cores.values() for rid, p in core.peers.items() if p.initialized
    }
    ranges = sorted((r.start_key, r.end_key) for r in regions.values())
    assert ranges[0][0] == b"" and ranges[-1][1] == b"", f"seed {seed}: {ranges}"
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), f"seed {seed}"
    data = {s: {k for k, _ in c.engines[s].kv_items(keys.DATA_DB)} for s in STORES}
    for s in STORES:
        missing = acked - data[s]
        assert not missing, f"seed {seed}: store {s} lost {len(missing)} acknowledged writes"
    for region in regions.values():
        sums = set()
        for p in region.peers:
            crc = 0
            for k, v in c.engines[p.store_id].kv_items(
                keys.DATA_DB, region.start_key, region.end_key
            ):
                crc = zlib.crc32(k + v, crc)
            sums.add(crc)
        assert len(sums) == 1, f"seed {seed}: replicas of region {region.id} differ"
    assert len(acked) > 20, f"seed {seed}: the run wrote too little to mean anything"
    return len(acked), len(regions)


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_lose_no_acknowledged_write(tmp_path: Path, seed: int) -> None:
    _, regions = run(tmp_path, seed, steps=400)
    assert regions >= 2, f"seed {seed}: no split happened"


def test_a_message_dropping_filter_sees_raft_messages(tmp_path: Path) -> None:
    # The fault injection itself must act, or the runs above prove nothing.
    seen: list[RaftMessage] = []
    c = CoreCluster(tmp_path, STORES, CONFIG)
    c.drop = lambda m: seen.append(m) is None
    c.bootstrap(factories.region(1, stores=STORES))
    c.tick(30)
    assert seen and c.leader_of(1) is None  # everything dropped: nobody can win

"""Incremental catch-up between real stores: a PD and three StoreNodes
in-process (trio, TCP on 127.0.0.1 port 0, LMDB in tmp dirs). A follower is
stopped, the leader writes and truncates its log past it, the follower comes
back and catches up by a delta of the sub-ranges that changed; with another
range, or with the setting off, by the whole snapshot. Bounded by
`trio.fail_after`."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

import client
from kvproto.pd_client import open_pd_client
from placement_driver.server import PdServer
from placement_driver.testing import TEST_CLUSTER_CONFIG, open_pd
from shardkv.local_cluster import wait_for_voters
from store_node import keys
from store_node.config import StoreConfig
from store_node.node import StoreNode
from tests.store_node.test_node import store_config

LIMIT = 60
KEYS = 2000
VALUE = b"v" * 1000


@dataclass
class Stores:
    tmp: Path
    pd: PdServer
    configs: dict[int, StoreConfig]
    nursery: trio.Nursery
    nodes: dict[int, StoreNode] = field(default_factory=dict)
    # The region store 1 bootstrapped.
    first: int = 0
    # Per running store: the scope that stops it, and its end.
    running: dict[int, tuple[trio.CancelScope, trio.Event]] = field(default_factory=dict)

    async def start(self, i: int) -> None:
        self.nodes[i] = await self.nursery.start(self._run, i)

    async def _run(self, i: int, task_status: trio.TaskStatus[StoreNode]) -> None:
        ended = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self.running[i] = (scope, ended)
                node = StoreNode(self.configs[i])
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    task_status.started(node)
        finally:
            ended.set()

    async def stop(self, i: int) -> None:
        scope, ended = self.running.pop(i)
        scope.cancel()
        await ended.wait()
        del self.nodes[i]

    def leader(self, region_id: int = 0) -> int:
        region_id = region_id or self.first
        for i, node in self.nodes.items():
            assert node.core is not None
            peer = node.core.peers.get(region_id)
            if peer is not None and peer.is_leader():
                return i
        raise LookupError(region_id)

    def applied(self, i: int, region_id: int = 0) -> int:
        region_id = region_id or self.first
        core = self.nodes[i].core
        assert core is not None
        peer = core.peers.get(region_id)
        return 0 if peer is None else peer.storage.apply_state.applied_index

    def last_index(self, i: int) -> int:
        """The last index of store i's log of the first region (what it
        could catch up from without a snapshot)."""
        core = self.nodes[i].core
        assert core is not None
        return core.peers[self.first].storage.last_index()

    async def sent(self, i: int, before: Counter[str]) -> Counter[str]:
        """Store i's snapshot counters since `before`, once a send ended
        (the receiver may install it before the sender hears back)."""
        node = self.nodes[i]
        await until(lambda: node.snapshot_counts != before, "a snapshot sent")
        return node.snapshot_counts - before

    async def data(self, i: int) -> list[tuple[bytes, bytes]]:
        """Store i's data once its current round is written (a peer's
        applied index moves to a snapshot's as its round begins)."""
        await self.nodes[i].call_core(lambda core: None)
        return self.nodes[i].engine.kv_items(keys.DATA_DB)


@asynccontextmanager
async def three_stores(tmp: Path, **store_kw: object) -> AsyncIterator[Stores]:
    """A PD and stores 1-3 (store 1 bootstraps), region 1 on all three,
    logs truncated after a few dozen entries whatever the followers."""
    settings: dict[str, object] = {
        "log_gc_max_entries": 10,
        "log_gc_max_follower_lag": 20,
        "kv_sync_interval": 0.1,
        **store_kw,
    }
    # No balancing: the leader stays where it is (a new one may not have
    # truncated its log past the follower).
    config = {**TEST_CLUSTER_CONFIG, "leader_schedule_limit": 0, "region_schedule_limit": 0}
    async with open_pd(tmp / "pd", config=config) as pd, trio.open_nursery() as nursery:
        addr = pd.addresses.rpc
        configs = {i: store_config(tmp, f"s{i}", addr, **settings) for i in (1, 2, 3)}
        stores = Stores(tmp, pd, configs, nursery)
        try:
            for i in (1, 2, 3):
                await stores.start(i)
            async with open_pd_client([addr]) as pdc:
                stores.first = (await wait_for_voters(pdc, 3)).id
            yield stores
        finally:
            nursery.cancel_scope.cancel()


async def until(cond: Callable[[], bool], what: str) -> None:
    """Wait until `cond()` holds (`what`: for the reader; the stores have
    no event for such things, so poll)."""
    while not cond():  # noqa: ASYNC110
        await trio.sleep(0.02)


async def load_then_lag(s: Stores, kvc: client.Client) -> int:
    """Load the keys, stop a follower once it has them all, change 1% of
    them over and over until the leader truncated past it; its store."""
    await kvc.batch_put([(b"key%05d" % i, VALUE) for i in range(KEYS)])
    leader = s.leader()
    follower = next(i for i in (3, 2) if i != leader)
    await until(lambda: s.applied(follower) == s.applied(leader), "the follower has it all")
    behind = s.last_index(follower)
    await s.stop(follower)
    for n in range(3):
        for i in range(0, KEYS, 100):
            await kvc.put(b"key%05d" % i, b"changed %d" % n)

    def truncated() -> int:
        core = s.nodes[leader].core
        assert core is not None
        return core.peers[s.first].storage.apply_state.truncated_index

    await until(lambda: truncated() > behind, "the leader truncated past the follower")
    return follower


async def test_a_follower_back_with_an_older_copy_catches_up_by_delta(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with three_stores(tmp_path) as s, client.connect([s.pd.addresses.rpc]) as kvc:
            follower = await load_then_lag(s, kvc)
            leader = s.leader()
            before = s.nodes[leader].snapshot_counts.copy()  # the replicas' first copies
            await s.start(follower)
            await until(lambda: s.applied(follower) >= s.applied(leader), "caught up")
            counts = await s.sent(leader, before)
            assert counts["delta_snapshots_sent"] == 1 and counts["full_snapshots_sent"] == 0
            # 1% of the keys changed: a few percent of the region travelled.
            assert counts["snapshot_bytes_whole"] > KEYS * len(VALUE)
            assert counts["snapshot_bytes_sent"] * 10 < counts["snapshot_bytes_whole"]
            core = s.nodes[follower].core
            assert core is not None and core.stats["delta_snapshots_installed"] == 1
            await kvc.put(b"after", b"1")
            await until(lambda: s.applied(follower) == s.applied(leader), "in step again")
            assert await s.data(follower) == await s.data(leader)


async def test_a_copy_of_another_range_catches_up_whole(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with three_stores(tmp_path) as s, client.connect([s.pd.addresses.rpc]) as kvc:
            await kvc.batch_put([(b"key%05d" % i, VALUE) for i in range(KEYS)])
            leader = s.leader()
            follower = next(i for i in (3, 2) if i != leader)
            await until(lambda: s.applied(follower) == s.applied(leader), "the follower has it")
            behind = s.last_index(follower)
            await s.stop(follower)
            # Region 1 shrinks while the follower is away: its copy's range
            # is not the snapshot's any more.
            await s.nodes[leader].split_region(s.first, (b"key01000",))
            core = s.nodes[leader].core
            assert core is not None
            await until(lambda: len(core.peers) == 2, "the split")
            for n in range(3):
                for i in range(0, 1000, 50):
                    await kvc.put(b"key%05d" % i, b"changed %d" % n)
            peer = core.peers[s.first]
            await until(lambda: peer.storage.apply_state.truncated_index > behind, "truncated")
            before = s.nodes[leader].snapshot_counts.copy()
            await s.start(follower)
            await until(lambda: s.applied(follower) >= s.applied(leader), "caught up")
            counts = await s.sent(leader, before)
            assert counts["full_snapshots_sent"] >= 1 and counts["delta_snapshots_sent"] == 0
            fcore = s.nodes[follower].core
            assert fcore is not None and fcore.stats["delta_snapshots_installed"] == 0
            for rid in core.peers:
                await until(lambda r=rid: s.applied(follower, r) >= s.applied(leader, r), "all")
            assert await s.data(follower) == await s.data(leader)


async def test_with_incremental_snapshots_off_the_whole_snapshot_goes(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with (
            three_stores(tmp_path, incremental_snapshots=False) as s,
            client.connect([s.pd.addresses.rpc]) as kvc,
        ):
            follower = await load_then_lag(s, kvc)
            leader = s.leader()
            before = s.nodes[leader].snapshot_counts.copy()
            await s.start(follower)
            await until(lambda: s.applied(follower) >= s.applied(leader), "caught up")
            counts = await s.sent(leader, before)
            assert counts["delta_snapshots_sent"] == 0 and counts["full_snapshots_sent"] == 1
            assert counts["snapshot_bytes_sent"] == counts["snapshot_bytes_whole"]
            assert await s.data(follower) == await s.data(leader)

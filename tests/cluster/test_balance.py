"""The PD's balance schedulers across real store processes: a fourth store
added to three full ones receives regions and leaders until every store is
within the tolerance, while a client keeps writing with no error surfaced;
the scheduler API answers on the PD's HTTP port. Loopback only; bounded by
`trio.fail_after`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import trio

from kvproto.metapb import PeerRole
from kvproto.pd_client import PdClient
from shardkv.local_cluster import wait_replicated
from tests.cluster.helpers import eventually, fast_cluster, serving
from tests.placement_driver.helpers import http_request

SPLIT_KEYS = [b"k%d" % i for i in range(1, 8)]  # 8 regions


async def placement(pd: PdClient) -> tuple[Counter[int], Counter[int]]:
    """Peers and leaders per store id, as the PD knows them."""
    peers: Counter[int] = Counter()
    leaders: Counter[int] = Counter()
    for info in await pd.scan_regions(b"", b"", 0):
        peers.update(p.store_id for p in info.region.peers)
        if info.leader is not None:
            leaders[info.leader.store_id] += 1
    return peers, leaders


async def under_way(pd: PdClient) -> bool:
    """Whether a region is not at three voters and nothing else (a move
    under way)."""
    return any(
        [p.role for p in info.region.peers] != [PeerRole.VOTER] * 3
        for info in await pd.scan_regions(b"", b"", 0)
    )


async def test_a_fourth_store_fills_until_balanced_while_a_client_writes(tmp_path: Path) -> None:
    cluster = fast_cluster(tmp_path, 3)
    api = f"http://{cluster.http_address}/pd/api/v1"
    with trio.fail_after(60):
        async with serving(cluster, voters=3) as (pd, kv):
            schedulers = json.loads((await http_request(f"{api}/schedulers")).body)
            assert [s["name"] for s in schedulers["schedulers"]] == [
                "balance-leader",
                "balance-region",
            ]
            first, _ = await pd.get_region(b"")
            assert first is not None
            body = {"region_id": first.id, "keys": [{"text": k.decode()} for k in SPLIT_KEYS]}
            r = await http_request(f"{api}/regions/split", "POST", json.dumps(body).encode())
            assert r.status == 200, r.body

            async def split_and_replicated() -> bool:
                return len(await pd.scan_regions(b"", b"", 0)) == len(SPLIT_KEYS) + 1

            await eventually(split_and_replicated)
            await wait_replicated(pd, 3)
            written = 0
            stop = trio.Event()

            async def writer() -> None:
                nonlocal written
                while not stop.is_set():
                    # Keys all over the key space: every region moves under it.
                    await kv.put(b"k%d-%06d" % (written % 8, written), b"v")  # raises on error
                    written += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                spec = cluster.add_store()
                await cluster.start_store(spec.index)
                stores = {s.address: s.id for s in await pd.get_all_stores()}

                async def balanced() -> bool:
                    ids = {s.address: s.id for s in await pd.get_all_stores()}
                    stores.update(ids)
                    if spec.address not in ids:
                        return False
                    if await under_way(pd):
                        return False
                    peers, leaders = await placement(pd)
                    p = [peers[s] for s in ids.values()]
                    ld = [leaders[s] for s in ids.values()]
                    return len(ids) == 4 and max(p) - min(p) <= 2 and max(ld) - min(ld) <= 2

                async def describe() -> str:
                    return str(await placement(pd))

                await eventually(balanced, poll=0.5, describe=describe)
                stop.set()
            new_store = stores[spec.address]
            peers, leaders = await placement(pd)
            assert peers[new_store] >= 5 and leaders[new_store] >= 1
            assert written > 0
            # Every write reads back.
            got = await kv.batch_get([b"k%d-%06d" % (i % 8, i) for i in range(written)])
            assert len(got) == written
            schedulers = json.loads((await http_request(f"{api}/schedulers")).body)
            created = {s["name"]: s["operators_created"] for s in schedulers["schedulers"]}
            assert created["balance-region"] >= 5 and created["balance-leader"] >= 1

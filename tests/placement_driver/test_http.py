"""The admin HTTP API, through a real HTTP connection (h11 over trio).

Rules: loopback only, port 0; every test runs under `trio.fail_after`.
"""

from __future__ import annotations

from urllib.parse import quote_from_bytes

import pytest
import trio

from kvproto.metapb import Peer, Region, RegionEpoch
from kvproto.pdpb import PeerStats
from placement_driver.http_api import key_json, region_json
from placement_driver.regions import REPORTED_FIELDS, Flow, RegionRecord, RegionStat
from placement_driver.server import PdServer
from tests.factories import peer, region
from tests.placement_driver.helpers import PdCaller, bootstrap_cluster, http_request

TIMEOUT = 10
API = "/pd/api/v1"


async def get(pd: PdServer, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = await http_request(pd.addresses.http_url + path)
    assert r.headers["content-type"] == "application/json"
    return r.status, r.json()


async def split_at(caller: PdCaller, key: bytes) -> tuple[Region, Region]:
    """Report the first region split at `key` (left keeps its id)."""
    first = (await caller.get_region(b"")).region
    assert first is not None
    new_id, new_peer = await caller.alloc_id(), await caller.alloc_id()
    left = first.with_range(b"", key).with_epoch(RegionEpoch(1, 2))
    right = region(new_id, key, version=2, peers=(peer(new_peer, first.peers[0].store_id),))
    await caller.region_heartbeat(left, term=1, approximate_size=300, approximate_keys=3)
    await caller.region_heartbeat(right, term=1)
    return left, right


async def test_health_and_cluster_before_and_after_bootstrap(
    pd: PdServer, caller: PdCaller
) -> None:
    with trio.fail_after(TIMEOUT):
        assert await get(pd, f"{API}/health") == (
            200,
            {"health": True, "bootstrapped": False, "cluster_id": 0},
        )
        await bootstrap_cluster(caller, store_count=2)
        status, body = await get(pd, f"{API}/cluster")
        assert status == 200
        assert body == {
            "cluster_id": caller.cluster_id,
            "bootstrapped": True,
            "store_count": 2,
            "region_count": 1,
            "max_replicas": 3,
        }


async def test_stores_and_one_store(pd: PdServer, caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        s1, s2 = await bootstrap_cluster(caller, store_count=2)
        await caller.store_heartbeat(s2.id, capacity=1000, available=400, region_count=1)
        status, body = await get(pd, f"{API}/stores")
        assert status == 200 and body["count"] == 2
        assert [s["id"] for s in body["stores"]] == [s1.id, s2.id]
        status, one = await get(pd, f"{API}/store/{s2.id}")
        assert status == 200
        assert one["address"] == s2.address and one["state"] == "Up"
        assert one["stats"]["capacity"] == 1000 and one["stats"]["available"] == 400
        assert one["seconds_since_heartbeat"] >= 0
        assert body["stores"][0]["stats"] is None  # no heartbeat yet


async def test_regions_and_stores_show_the_flow_their_leaders_report(
    pd: PdServer, caller: PdCaller
) -> None:
    with trio.fail_after(TIMEOUT):
        s1, s2 = await bootstrap_cluster(caller, store_count=2)
        left, right = await split_at(caller, b"m")
        for reported, seconds in [(left, 10.0), (right, 2.0)]:
            await caller.region_heartbeat(
                reported,
                term=1,
                written_bytes=400,
                written_keys=4,
                read_bytes=100,
                read_keys=2,
                interval_seconds=seconds,
            )

        status, r = await get(pd, f"{API}/region/id/{right.id}")
        assert status == 200
        assert (r["written_bytes"], r["read_keys"], r["interval_seconds"]) == (400, 2, 2.0)
        assert r["flow"] == {
            "write_bytes_rate": 200.0,
            "write_keys_rate": 2.0,
            "read_bytes_rate": 50.0,
            "read_keys_rate": 1.0,
        }
        # Both regions are led on the first store: its flow is their sum.
        status, body = await get(pd, f"{API}/stores")
        flows = {s["id"]: s["leader_flow"] for s in body["stores"]}
        assert flows[s1.id] == {
            "write_bytes_rate": 240.0,
            "write_keys_rate": 2.4,
            "read_bytes_rate": 60.0,
            "read_keys_rate": 1.2,
        }
        assert flows[s2.id] == dict.fromkeys(flows[s2.id], 0.0)
        status, one = await get(pd, f"{API}/store/{s1.id}")
        assert (status, one["leader_flow"]) == (200, flows[s1.id])


def test_a_region_shows_every_field_of_its_last_heartbeat() -> None:
    r = region(1)  # voters on stores 1, 2, 3
    stat = RegionStat(
        leader=r.peers[1],
        term=2,
        approximate_size=3,
        approximate_keys=4,
        down_peers=(PeerStats(r.peers[2], 5),),
        pending_peers=(r.peers[0],),
        written_bytes=6,
        written_keys=7,
        read_bytes=8,
        read_keys=9,
        interval_seconds=10.0,
        flow=Flow(0.6, 0.7, 0.8, 0.9),
        last_heartbeat=8.0,
    )
    document = region_json(RegionRecord(r, stat), now=9.5)

    def peer(p: Peer) -> dict[str, object]:
        return {"id": p.id, "store_id": p.store_id, "role": "voter"}

    assert document == {
        "id": 1,
        "start_key": key_json(b""),
        "end_key": key_json(b""),
        "epoch": {"conf_ver": 1, "version": 1},
        "peers": [peer(p) for p in r.peers],
        "leader": peer(r.peers[1]),
        "term": 2,
        "approximate_size": 3,
        "approximate_keys": 4,
        "down_peers": [{"peer": peer(r.peers[2]), "down_seconds": 5}],
        "pending_peers": [peer(r.peers[0])],
        "written_bytes": 6,
        "written_keys": 7,
        "read_bytes": 8,
        "read_keys": 9,
        "interval_seconds": 10.0,
        "flow": {
            "write_bytes_rate": 0.6,
            "write_keys_rate": 0.7,
            "read_bytes_rate": 0.8,
            "read_keys_rate": 0.9,
        },
        "seconds_since_heartbeat": 1.5,
    }
    assert list(document)[5:-2] == list(REPORTED_FIELDS)
    assert region_json(RegionRecord(r, RegionStat()), now=9.5)["leader"] is None


async def test_regions_by_id_and_by_escaped_binary_key(pd: PdServer, caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        await bootstrap_cluster(caller)
        split_key = b"user\x00\xff/x"
        left, right = await split_at(caller, split_key)
        status, body = await get(pd, f"{API}/regions")
        assert status == 200 and body["count"] == 2
        assert [r["id"] for r in body["regions"]] == [left.id, right.id]
        assert body["regions"][0]["end_key"] == {"hex": split_key.hex(), "text": None}
        assert body["regions"][1]["end_key"] == {"hex": "", "text": ""}

        status, r = await get(pd, f"{API}/region/id/{left.id}")
        assert status == 200
        assert r["epoch"] == {"conf_ver": 1, "version": 2}
        assert r["leader"] == {
            "id": left.peers[0].id,
            "store_id": left.peers[0].store_id,
            "role": "voter",
        }
        assert (r["approximate_size"], r["approximate_keys"]) == (300, 3)

        # Just below the split key: left; the key itself and above: right.
        for key, expected in [
            (b"user\x00\xfe", left.id),
            (split_key, right.id),
            (b"\xff\xff", right.id),
            (b"", left.id),
        ]:
            status, r = await get(pd, f"{API}/region/key/{quote_from_bytes(key, safe='')}")
            assert (status, r["id"]) == (200, expected), key
        # An unescaped slash is part of the key too.
        status, r = await get(pd, f"{API}/region/key/a/b")
        assert (status, r["id"]) == (200, left.id)


async def test_config(pd: PdServer) -> None:
    with trio.fail_after(TIMEOUT):
        status, body = await get(pd, f"{API}/config")
        assert status == 200
        assert body["max_replicas"] == 3
        assert body["region_max_size"] == "96MiB"
        assert body["region_max_keys"] == 960000
        assert body["store_disconnect_time"] == "2s"  # TEST_CLUSTER_CONFIG


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        (f"{API}/store/12345", 404, "store 12345 not found"),
        (f"{API}/region/id/12345", 404, "region 12345 not found"),
        (f"{API}/store/abc", 400, "bad store id 'abc'"),
        (f"{API}/region/id/-1", 400, "bad region id '-1'"),
        (f"{API}/nothing", 404, "no such endpoint"),
        ("/", 404, "no such endpoint"),
    ],
)
async def test_unknown_ids_and_paths_get_json_errors(
    pd: PdServer, caller: PdCaller, path: str, status: int, reason: str
) -> None:
    with trio.fail_after(TIMEOUT):
        await bootstrap_cluster(caller)
        got_status, body = await get(pd, path)
        assert got_status == status
        assert reason in body["error"]


async def test_a_key_outside_every_region_is_404(pd: PdServer) -> None:
    with trio.fail_after(TIMEOUT):
        status, body = await get(pd, f"{API}/region/key/abc")  # not bootstrapped: no regions
        assert status == 404 and "no region contains key b'abc'" in body["error"]


async def test_read_endpoints_are_read_only(pd: PdServer) -> None:
    with trio.fail_after(TIMEOUT):
        r = await http_request(pd.addresses.http_url + f"{API}/regions", method="POST")
        assert r.status == 405 and "read-only" in r.json()["error"]
        assert r.headers["allow"] == "GET, HEAD"


def test_keys_are_hex_and_text_where_utf8() -> None:
    assert key_json(b"abc") == {"hex": "616263", "text": "abc"}
    assert key_json("ключ".encode()) == {"hex": "ключ".encode().hex(), "text": "ключ"}
    assert key_json(b"\xff") == {"hex": "ff", "text": None}

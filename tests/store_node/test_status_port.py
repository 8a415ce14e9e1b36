"""The store's status port (`--status`): `GET /status` (JSON) and
`GET /metrics` (Prometheus) of a real store in-process, with a real PD, over
HTTP on 127.0.0.1 port 0. Every test is bounded by `trio.fail_after`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from kvproto import kvrpcpb as kv
from kvproto.rpc import connect
from placement_driver.testing import open_pd
from plumbing.config_file import ConfigError, load
from store_node.config import StoreConfig
from store_node.node import StoreNode
from store_node.status_http import StatusAddressError, StatusApp
from tests.placement_driver.helpers import http_request
from tests.prometheus import Samples
from tests.store_node.test_node import pd_and_one_store, running_store, store_config


async def status(url: str) -> dict[str, Any]:
    r = await http_request(url + "/status")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    document: dict[str, Any] = r.json()
    return document


async def metrics(url: str) -> Samples:
    r = await http_request(url + "/metrics")
    assert r.status == 200 and r.headers["content-type"] == CONTENT_TYPE_LATEST
    return Samples(r.body.decode())


async def test_status_and_metrics_follow_writes_and_a_split(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with pd_and_one_store(tmp_path, status="127.0.0.1:0") as (pd, info, ctx):
            assert info.status_address is not None
            url = f"http://{info.status_address}"
            before = await status(url)
            assert (before["store_id"], before["address"]) == (info.store_id, info.address)
            assert before["region_count"] == before["leader_count"] == 1
            (region,) = before["regions"]
            assert region["id"] == ctx.region_id
            assert (region["start_key"], region["end_key"]) == ("", "")
            assert region["leader"] and region["role"] == "voter"
            assert region["peer_id"] == ctx.peer.id
            assert region["epoch"] == {
                "conf_ver": ctx.region_epoch.conf_ver,
                "version": ctx.region_epoch.version,
            }
            assert region["applied_index"] <= region["commit_index"]
            assert region["term"] >= 1

            writes = 20
            async with connect(info.address) as conn:
                for i in range(writes):
                    r = await conn.call(kv.RawPutRequest(ctx, b"k%02d" % i, b"v" * 10))
                    assert r == kv.RawWriteResponse()

            after = await status(url)
            (region,) = after["regions"]
            assert region["applied_index"] >= before["regions"][0]["applied_index"] + writes
            assert region["log_entries"] > 0 and region["log_bytes"] > 0
            assert after["counters"]["rounds"] > before["counters"]["rounds"]
            assert after["counters"]["proposed_writes"] >= writes

            m = await metrics(url)
            assert m.labelled("shardkv_store_proposals_total", "type")["write"] >= writes
            assert m["shardkv_store_raft_log_fsync_seconds_count"] > 0
            assert m["shardkv_store_apply_seconds_count"] > 0
            assert m["shardkv_store_log_entries_appended_total"] >= writes
            assert m["shardkv_store_log_bytes_appended_total"] >= writes * 10
            assert m["shardkv_store_rounds_total"] > 0
            assert (m["shardkv_store_regions"], m["shardkv_store_leaders"]) == (1, 1)
            assert m["shardkv_store_raft_log_entries"] >= writes
            assert m.types["shardkv_store_raft_log_fsync_seconds"] == "histogram"

            op = pd.split_region(ctx.region_id, (b"k10",))
            while op.is_running:  # noqa: ASYNC110 - the PD signals no event for this
                await trio.sleep(0.05)
            split = await status(url)
            assert split["region_count"] == split["leader_count"] == 2
            ranges = [(r["start_key"], r["end_key"]) for r in split["regions"]]
            assert sorted(ranges) == [("", b"k10".hex()), (b"k10".hex(), "")]
            m = await metrics(url)
            assert m.labelled("shardkv_store_proposals_total", "type")["split"] == 1
            assert m["shardkv_store_splits_total"] == 1
            assert m["shardkv_store_regions"] == 2
            # The PD heartbeats were timed (the store observes an answer after
            # the PD acted on it: wait for it rather than race it).
            timed = m.labelled("shardkv_store_pd_heartbeat_seconds_count", "kind")
            while timed.get("region", 0) == 0 or timed.get("store", 0) == 0:
                await trio.sleep(0.05)
                timed = (await metrics(url)).labelled(
                    "shardkv_store_pd_heartbeat_seconds_count", "kind"
                )


async def test_log_growth_per_region_shows_in_status_and_metrics(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with pd_and_one_store(tmp_path, status="127.0.0.1:0", log_gc_max_entries=16) as (
            pd,
            info,
            ctx,
        ):
            url = f"http://{info.status_address}"
            async with connect(info.address) as conn:
                for i in range(40):
                    r = await conn.call(kv.RawPutRequest(ctx, b"k%02d" % i, b"v" * 100))
                    assert r == kv.RawWriteResponse()
            op = pd.split_region(ctx.region_id, (b"k20",))
            while op.is_running:  # noqa: ASYNC110 - the PD signals no event for this
                await trio.sleep(0.05)
            doc = await status(url)
            m = await metrics(url)
    regions = doc["regions"]
    assert len(regions) == 2
    entries = [r["log_entries"] for r in regions]
    sizes = [r["log_bytes"] for r in regions]
    assert all(0 <= n <= 16 for n in entries) and max(sizes) > 0
    assert (doc["log_entries"], doc["log_bytes"]) == (sum(entries), sum(sizes))
    assert doc["counters"]["log_truncations_by_entries"] >= 2
    assert m.labelled("shardkv_store_log_truncations_total", "trigger") == {
        "entries": doc["counters"]["log_truncations_by_entries"],
        "bytes": 0,
        "interval": 0,
    }
    assert (m["shardkv_store_raft_log_entries"], m["shardkv_store_raft_log_bytes"]) == (
        sum(entries),
        sum(sizes),
    )
    assert m["shardkv_store_region_raft_log_entries_max"] == max(entries)
    assert m["shardkv_store_region_raft_log_bytes_max"] == max(sizes)
    assert m.types["shardkv_store_region_raft_log_entries"] == "histogram"
    by_entries = m.labelled("shardkv_store_region_raft_log_entries_bucket", "le")
    assert by_entries["16.0"] == by_entries["+Inf"] == 2
    assert by_entries["64.0"] == 2 and by_entries.get("0.0") is None
    by_bytes = m.labelled("shardkv_store_region_raft_log_bytes_bucket", "le")
    assert by_bytes["+Inf"] == 2
    assert by_bytes[str(float(64 << 10))] == 2  # 16 entries of ~130 bytes at most
    assert m["shardkv_store_region_raft_log_bytes_gsum"] == sum(sizes)


async def test_bad_requests_get_clean_answers(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with pd_and_one_store(tmp_path, status="127.0.0.1:0") as (_, info, __):
            url = f"http://{info.status_address}"
            r = await http_request(url + "/nothing")
            assert r.status == 404 and r.json() == {"error": "no such page: /nothing"}
            r = await http_request(url + "/status", method="POST", body=b"{}")
            assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
            assert "read-only" in r.json()["error"]
            r = await http_request(url + "/metrics", method="HEAD")
            assert r.status == 200 and r.body == b""
            r = await http_request(url + "/status/?verbose=1")  # a trailing slash, a query
            assert r.status == 200 and r.json()["region_count"] == 1


async def test_the_status_port_is_off_by_default(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with pd_and_one_store(tmp_path) as (_, info, __):
            assert info.status_address is None


def test_status_answers_503_until_the_store_has_registered(tmp_path: Path) -> None:
    node = StoreNode(store_config(tmp_path, "s1", "127.0.0.1:1"))
    try:
        page, _ = StatusApp(node.status_pages()).respond("GET", "/status")
        assert page.status == 503 and b"registering with the PD" in page.body
        page, _ = StatusApp(node.status_pages()).respond("GET", "/metrics")
        assert page.status == 200 and page.content_type == CONTENT_TYPE_LATEST
    finally:
        node.engine.close()


async def test_an_address_in_use_is_a_clear_start_error(tmp_path: Path) -> None:
    with trio.fail_after(30):
        taken = trio.socket.socket()
        with taken:
            await taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            async with open_pd(tmp_path / "pd") as pd:
                cfg = store_config(tmp_path, "s1", pd.addresses.rpc, status=f"127.0.0.1:{port}")
                with pytest.RaisesGroup(
                    pytest.RaisesExc(StatusAddressError, match="Address already in use"),
                    flatten_subgroups=True,
                ):
                    async with running_store(cfg):
                        pass


def test_a_malformed_status_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad value for status"):
        load(StoreConfig, overrides={"data_dir": "d", "status": "127.0.0.1:99999"})
    assert load(StoreConfig, overrides={"data_dir": "d", "status": ""}).status is None

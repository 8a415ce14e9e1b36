"""The PD through its RPC, with fake stores in-process over loopback TCP.

Rules: loopback only, port 0; every test runs under `trio.fail_after`; no
sleeps (see conftest.py).
"""

from __future__ import annotations

import dataclasses

import pytest
import trio

from kvproto import pdpb
from kvproto.codec import decode_cbor, encode_cbor, from_wire, to_wire
from kvproto.frame import FrameReader, encode_frame
from kvproto.metapb import StoreId, StoreState
from kvproto.pd_client import PdServerError, open_pd_client
from kvproto.pdpb import PdErrorCode
from kvproto.rpc import FrameKind, RpcError, RpcErrorCode, connect
from placement_driver.server import PdServer
from tests.factories import peer, region, store
from tests.placement_driver.helpers import PdCaller, bootstrap_cluster

TIMEOUT = 10


async def test_bootstrap_is_accepted_once_and_sets_the_cluster_id(caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        r = await caller.ok(
            pdpb.IsBootstrappedRequest(caller.header()), pdpb.IsBootstrappedResponse
        )
        assert not r.bootstrapped and r.header.cluster_id == 0
        stores = await bootstrap_cluster(caller)
        assert caller.cluster_id != 0
        r = await caller.ok(
            pdpb.IsBootstrappedRequest(caller.header()), pdpb.IsBootstrappedResponse
        )
        assert r.bootstrapped and r.header.cluster_id == caller.cluster_id

        second = pdpb.BootstrapRequest(
            caller.header(), stores[0], region(1, peers=(peer(2, stores[0].id),))
        )
        error = await caller.error(second, pdpb.BootstrapResponse)
        assert error.code == PdErrorCode.ALREADY_BOOTSTRAPPED
        assert "already bootstrapped" in error.message


async def test_every_response_carries_the_cluster_id_and_another_id_is_refused(
    caller: PdCaller,
) -> None:
    with trio.fail_after(TIMEOUT):
        # Before bootstrap any non-zero cluster id is someone else's.
        error = await caller.error(
            pdpb.AllocIdRequest(pdpb.RequestHeader(123)), pdpb.AllocIdResponse
        )
        assert error.code == PdErrorCode.CLUSTER_MISMATCH
        await bootstrap_cluster(caller)
        ours = caller.cluster_id
        for request, response in [
            (pdpb.AllocIdRequest(caller.header()), pdpb.AllocIdResponse),
            (pdpb.GetConfigRequest(caller.header()), pdpb.GetConfigResponse),
            (pdpb.GetRegionRequest(caller.header(), b"k"), pdpb.GetRegionResponse),
        ]:
            assert (await caller.ok(request, response)).header.cluster_id == ours
        wrong = pdpb.GetRegionRequest(pdpb.RequestHeader(ours + 1), b"k")
        error = await caller.error(wrong, pdpb.GetRegionResponse)
        assert error.code == PdErrorCode.CLUSTER_MISMATCH
        assert str(ours) in error.message


async def test_alloc_id_is_unique_and_increasing_across_concurrent_callers(
    pd: PdServer,
) -> None:
    got: list[int] = []

    async def allocate(n: int) -> None:
        async with connect(pd.addresses.rpc) as conn:
            c = PdCaller(conn)
            for _ in range(n):
                got.append(await c.alloc_id())

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(allocate, 30)  # blocks of 10: many boundaries
    assert len(set(got)) == 120 and 0 not in got


async def test_stores_register_heartbeat_and_are_listed(caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        stores = await bootstrap_cluster(caller, store_count=3)
        r = await caller.store_heartbeat(stores[1].id, capacity=100, available=60, region_count=4)
        assert (r.region_max_size, r.region_max_keys) == (96 << 20, 960_000)
        got = await caller.get_store(stores[1].id)
        assert got.store == stores[1]
        assert got.stats is not None and got.stats.available == 60
        listed = await caller.ok(
            pdpb.GetAllStoresRequest(caller.header()), pdpb.GetAllStoresResponse
        )
        assert listed.stores == tuple(stores)
        assert all(s.state == StoreState.UP for s in listed.stores)


async def test_an_address_used_by_another_store_is_refused(caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        stores = await bootstrap_cluster(caller, store_count=2)
        new_id = await caller.alloc_id()
        clash = store(new_id, address=stores[1].address)
        error = await caller.error(
            pdpb.PutStoreRequest(caller.header(), clash), pdpb.PutStoreResponse
        )
        assert error.code == PdErrorCode.DUPLICATE_STORE_ADDRESS
        assert f"store {stores[1].id}" in error.message


async def test_region_heartbeats_build_the_region_tree(caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        _, s2, s3 = await bootstrap_cluster(caller, store_count=3)
        first = (await caller.get_region(b"")).region
        assert first is not None
        # The region got two more peers (conf change), then split at "m".
        peers = (*first.peers, peer(1001, s2.id), peer(1002, s3.id))
        grown = dataclasses.replace(first, peers=peers, epoch=pdpb.RegionEpoch(4, 1))
        await caller.region_heartbeat(grown, leader=peers[1], term=3, approximate_size=1 << 20)
        got = await caller.get_region(b"anything")
        assert got.region == grown and got.leader == peers[1]

        split = await caller.ok(
            pdpb.AskBatchSplitRequest(caller.header(), grown, 1), pdpb.AskBatchSplitResponse
        )
        (ids,) = split.ids
        left = dataclasses.replace(grown, end_key=b"m", epoch=pdpb.RegionEpoch(4, 2))
        right = region(
            ids.new_region_id,
            b"m",
            conf_ver=4,
            version=2,
            peers=(peer(pid, p.store_id) for pid, p in zip(ids.new_peer_ids, peers, strict=True)),
        )
        await caller.ok(
            pdpb.ReportBatchSplitRequest(caller.header(), (left, right)),
            pdpb.ReportBatchSplitResponse,
        )
        await caller.region_heartbeat(right, leader=right.peers[1], term=1)
        assert await caller.scan() == [left, right]
        assert await caller.scan(b"n", b"z") == [right]
        assert await caller.scan(b"", b"", limit=1) == [left]
        by_id = await caller.get_region_by_id(ids.new_region_id)
        assert by_id.region == right and by_id.leader == right.peers[1]

        # A late heartbeat from before the split is stale and changes nothing.
        error = await caller.error(
            caller.heartbeat_request(grown, leader=peers[1], term=3),
            pdpb.RegionHeartbeatResponse,
        )
        assert error.code == PdErrorCode.STALE_REGION
        assert await caller.scan() == [left, right]


async def test_unknown_regions_are_answered_with_none(caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        await bootstrap_cluster(caller)
        r = await caller.get_region_by_id(999)
        assert r.region is None and r.leader is None


@pytest.mark.parametrize(
    ("make_request", "response", "code"),
    [
        (
            lambda h: pdpb.PutStoreRequest(h, store(1, address="nowhere")),
            pdpb.PutStoreResponse,
            PdErrorCode.INVALID_ARGUMENT,
        ),
        (
            lambda h: pdpb.PutStoreRequest(h, store(0)),
            pdpb.PutStoreResponse,
            PdErrorCode.INVALID_ARGUMENT,
        ),
        (
            lambda h: pdpb.GetStoreRequest(h, StoreId(404)),
            pdpb.GetStoreResponse,
            PdErrorCode.STORE_NOT_FOUND,
        ),
        (
            lambda h: pdpb.StoreHeartbeatRequest(h, pdpb.StoreStats(StoreId(404))),
            pdpb.StoreHeartbeatResponse,
            PdErrorCode.STORE_NOT_FOUND,
        ),
        (
            lambda h: pdpb.RegionHeartbeatRequest(h, region(7, peers=(peer(70, 1),)), peer(71, 1)),
            pdpb.RegionHeartbeatResponse,
            PdErrorCode.INVALID_ARGUMENT,
        ),
        (
            lambda h: pdpb.AskBatchSplitRequest(h, region(404, peers=(peer(70, 1),)), 1),
            pdpb.AskBatchSplitResponse,
            PdErrorCode.REGION_NOT_FOUND,
        ),
        (
            lambda h: pdpb.ScanRegionsRequest(h, b"z", b"a"),
            pdpb.ScanRegionsResponse,
            PdErrorCode.INVALID_ARGUMENT,
        ),
        (
            lambda h: pdpb.SetConfigRequest(h, (pdpb.ConfigItem("max_replicas", "-1"),)),
            pdpb.SetConfigResponse,
            PdErrorCode.INVALID_ARGUMENT,
        ),
        (
            lambda h: pdpb.SetConfigRequest(h, (pdpb.ConfigItem("nope", "1"),)),
            pdpb.SetConfigResponse,
            PdErrorCode.UNKNOWN_CONFIG,
        ),
    ],
)
async def test_bad_requests_get_typed_errors_and_the_connection_stays_up(
    caller: PdCaller, make_request: object, response: type, code: PdErrorCode
) -> None:
    with trio.fail_after(TIMEOUT):
        await bootstrap_cluster(caller)
        error = await caller.error(make_request(caller.header()), response)  # type: ignore[operator]
        assert error.code == code and error.message
        assert await caller.alloc_id() > 0  # the same connection still works


async def test_requests_before_bootstrap_are_refused_as_not_bootstrapped(
    caller: PdCaller,
) -> None:
    with trio.fail_after(TIMEOUT):
        for request, response in [
            (pdpb.GetAllStoresRequest(caller.header()), pdpb.GetAllStoresResponse),
            (pdpb.PutStoreRequest(caller.header(), store(1)), pdpb.PutStoreResponse),
            (pdpb.GetRegionRequest(caller.header(), b""), pdpb.GetRegionResponse),
            (caller.heartbeat_request(region(1)), pdpb.RegionHeartbeatResponse),
        ]:
            error = await caller.error(request, response)
            assert error.code == PdErrorCode.NOT_BOOTSTRAPPED


async def test_an_undecodable_request_is_a_bad_request_not_a_crash(pd: PdServer) -> None:
    with trio.fail_after(TIMEOUT):
        # A GetStoreRequest whose store id is text, sent as a raw frame.
        body = to_wire(pdpb.GetStoreRequest(pdpb.RequestHeader(), StoreId(1)))
        body[2] = "one"
        host, port = pd.addresses.rpc.rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(encode_frame(encode_cbor([FrameKind.REQUEST, 1, body])))
            frame = await FrameReader(stream, 1 << 20).receive_frame()
        assert frame is not None
        kind, request_id, answer = decode_cbor(frame)
        assert (kind, request_id) == (FrameKind.ERROR, 1)
        error = from_wire(answer, RpcError)
        assert error.code == RpcErrorCode.BAD_REQUEST and "GetStoreRequest" in error.message
        async with connect(pd.addresses.rpc) as conn:  # the PD still serves
            assert await PdCaller(conn).alloc_id() > 0


async def test_config_is_readable_and_settable(caller: PdCaller) -> None:
    with trio.fail_after(TIMEOUT):
        config = await caller.config()
        assert config["max_replicas"] == "3"
        assert config["region_max_size"] == "96MiB"
        r = await caller.ok(
            pdpb.SetConfigRequest(
                caller.header(),
                (pdpb.ConfigItem("max_replicas", "5"), pdpb.ConfigItem("region_max_size", "1GiB")),
            ),
            pdpb.SetConfigResponse,
        )
        assert {i.name: i.value for i in r.items}["max_replicas"] == "5"
        assert (await caller.config())["region_max_size"] == "1GiB"
        await bootstrap_cluster(caller)
        hb = await caller.store_heartbeat((await caller.scan())[0].peers[0].store_id)
        assert hb.region_max_size == 1 << 30


async def test_the_store_nodes_pd_client_works_against_the_pd(pd: PdServer) -> None:
    """The flow of store_node/identity.py through kvproto's PdClient."""
    with trio.fail_after(TIMEOUT):
        async with open_pd_client([pd.addresses.rpc]) as client:
            assert not await client.is_bootstrapped()
            store_id = StoreId(await client.alloc_id())
            region_id, peer_id = await client.alloc_id(), await client.alloc_id()
            first = region(region_id, peers=(peer(peer_id, store_id),))
            await client.bootstrap(store(store_id), first)
            assert client.cluster_id == pd.cluster.cluster_id != 0
            with pytest.raises(PdServerError) as info:
                await client.bootstrap(store(store_id), first)
            assert info.value.code == PdErrorCode.ALREADY_BOOTSTRAPPED
            joiner = StoreId(await client.alloc_id())
            await client.put_store(store(joiner))
            assert (await client.get_store(joiner)) == store(joiner)
            await client.store_heartbeat(pdpb.StoreStats(joiner, capacity=1))
            await client.region_heartbeat(
                pdpb.RegionHeartbeatRequest(pdpb.RequestHeader(), first, first.peers[0])
            )
            found, leader = await client.get_region(b"k")
            assert found == first and leader == first.peers[0]
            ids = await client.ask_batch_split(first, 2)
            assert len(ids) == 2
            assert (await client.set_config({"max_replicas": "1"}))["max_replicas"] == "1"


async def test_a_fresh_pd_client_learns_the_cluster_id_before_other_calls(
    pd: PdServer, caller: PdCaller
) -> None:
    """The PD refuses id 0 on everything but IsBootstrapped, Bootstrap and
    AllocId once bootstrapped: a client that knows no id asks first."""
    with trio.fail_after(TIMEOUT):
        (s1,) = await bootstrap_cluster(caller)
        async with open_pd_client([pd.addresses.rpc]) as client:
            assert client.cluster_id == 0
            found, _ = await client.get_region(b"k")
            assert found is not None
            assert client.cluster_id == pd.cluster.cluster_id
            assert [s.id for s in await client.get_all_stores()] == [s1.id]


async def test_a_call_refused_for_id_0_goes_again_once_the_refusal_taught_the_id(
    pd: PdServer, caller: PdCaller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster bootstrapped between the client's IsBootstrapped (no id
    yet) and its call: refused unexecuted, the call is sent again with the
    id the refusal carried."""
    with trio.fail_after(TIMEOUT):
        async with open_pd_client([pd.addresses.rpc]) as client:
            assert not await client.is_bootstrapped()
            (s1,) = await bootstrap_cluster(caller)

            async def answer_from_before_the_bootstrap() -> bool:
                return False

            monkeypatch.setattr(client, "is_bootstrapped", answer_from_before_the_bootstrap)
            assert [s.id for s in await client.get_all_stores()] == [s1.id]
            assert client.cluster_id == pd.cluster.cluster_id

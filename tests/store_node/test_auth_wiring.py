"""Cluster and client tokens on a real PD and store (issue 15, findings 1
and 5): members prove the cluster token and work as before; clients prove
the client token and may use the KV API and the PD's routing reads only;
a Raft message from a client connection (the forged-tombstone attack) is
dropped; a connection without a token is closed. In-process, TCP on
127.0.0.1, every test bounded by trio.fail_after."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

import client
from kvproto import kvrpcpb as kv
from kvproto import pdpb
from kvproto.pd_client import open_pd_client
from kvproto.raft_serverpb import RaftMessageBatch
from kvproto.rpc import (
    AuthRefusedError,
    Credentials,
    Role,
    RpcConnectionLostError,
    RpcErrorCode,
    RpcRemoteError,
    authenticating_opener,
    connect,
    open_tcp,
)
from placement_driver.config import ServerConfig
from placement_driver.testing import open_pd
from plumbing.config_file import ConfigError
from shardkv.local_cluster import leader_context
from tests.store_node.test_node import running_store, store_config


def tokens(tmp: Path) -> tuple[Path, Path]:
    cluster, clients = tmp / "cluster.token", tmp / "client.token"
    cluster.write_text("cluster-secret-1\n")
    clients.write_text("client-secret-2\n")
    return cluster, clients


async def test_members_and_clients_prove_their_tokens_and_clients_stay_clients(
    tmp_path: Path,
) -> None:
    cluster, clients = tokens(tmp_path)
    with trio.fail_after(30):
        async with (
            open_pd(tmp_path / "pd", cluster_token_file=cluster, client_token_file=clients) as pd,
            running_store(
                store_config(
                    tmp_path,
                    "s1",
                    pd.addresses.rpc,
                    cluster_token_file=str(cluster),
                    client_token_file=str(clients),
                )
            ) as (node, info),
        ):
            # The store registered and bootstrapped through the PD: the
            # cluster token works. A client with the client token reads and
            # writes.
            async with client.connect([pd.addresses.rpc], token="client-secret-2") as c:
                await c.put(b"k", b"v")
                assert await c.get(b"k") == b"v"
            as_client = authenticating_opener(
                open_tcp, Credentials(Role.CLIENT, b"client-secret-2")
            )
            # The PD: a client may not register a store or heartbeat.
            async with connect(pd.addresses.rpc, open_stream=as_client) as conn:
                named = pdpb.RequestHeader(info.cluster_id)
                stores = await conn.call(pdpb.GetAllStoresRequest(named))
                assert isinstance(stores, pdpb.GetAllStoresResponse) and stores.stores
                with pytest.raises(RpcRemoteError) as err:
                    await conn.call(
                        pdpb.StoreHeartbeatRequest(named, pdpb.StoreStats(info.store_id))
                    )
                assert err.value.code == RpcErrorCode.PERMISSION_DENIED
            # The store: a client's Raft batch is dropped (one-way messages
            # are handled in order, so the answered get comes after it).
            frames = node.raft_frames_received
            async with open_pd_client([pd.addresses.rpc], open_stream=as_client) as pdc:
                ctx, _ = await leader_context(pdc)
            async with connect(info.address, open_stream=as_client) as conn:
                await conn.send_oneway(RaftMessageBatch(info.store_id, (), 1))
                got = await conn.call(kv.RawGetRequest(ctx, b"k"))
                assert isinstance(got, kv.RawGetResponse) and got.value == b"v"
            assert node.raft_frames_received == frames


async def test_connections_without_the_right_token_are_refused(tmp_path: Path) -> None:
    cluster, _ = tokens(tmp_path)
    with trio.fail_after(30):
        async with (
            open_pd(tmp_path / "pd", cluster_token_file=cluster) as pd,
            running_store(
                store_config(tmp_path, "s1", pd.addresses.rpc, cluster_token_file=str(cluster))
            ) as (_, info),
        ):
            for address in (pd.addresses.rpc, info.address):
                # No token: the first frame (longer than a handshake's first
                # message) is not a handshake; the connection is closed.
                async with connect(address) as conn:
                    with pytest.raises(RpcConnectionLostError):
                        await conn.call(pdpb.GetRegionRequest(pdpb.RequestHeader(), b"k" * 100))
                # A wrong token.
                wrong = authenticating_opener(open_tcp, Credentials(Role.CLUSTER, b"guess"))
                with pytest.raises(AuthRefusedError):
                    async with connect(address, open_stream=wrong):
                        pass


def test_a_client_token_alone_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="client_token_file needs cluster_token_file"):
        store_config(tmp_path, "s", "127.0.0.1:1", client_token_file="c").validate()
    with pytest.raises(ValueError, match="client_token_file needs cluster_token_file"):
        ServerConfig(data_dir=str(tmp_path), client_token_file="c").validate()


async def test_an_unreadable_token_file_stops_the_store_at_start(tmp_path: Path) -> None:
    cfg = store_config(tmp_path, "s", "127.0.0.1:1", cluster_token_file=str(tmp_path / "none"))
    with trio.fail_after(10), pytest.raises(ConfigError, match="cannot read the cluster token"):
        async with running_store(cfg):
            pass


def test_the_store_command_says_why_in_one_line_when_the_token_file_is_missing(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-token"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardkv",
            "store",
            "--data-dir",
            str(tmp_path / "d"),
            "--pd",
            "127.0.0.1:1",
            "--cluster-token-file",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "cannot read the cluster token file" in r.stderr
    assert "Traceback" not in r.stderr

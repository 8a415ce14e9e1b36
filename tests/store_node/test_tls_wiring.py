"""TLS on a real PD and store (issue 15): with certificates and the
cluster's CA the store joins over mutual TLS, a client that trusts the CA
reads and writes, a client certificate-less connection is a client (its
Raft batch dropped), and a client that does not speak TLS gets nowhere.
In-process, TCP on 127.0.0.1, a throwaway CA (trustme)."""

from __future__ import annotations

import dataclasses
import ssl
import urllib.request
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

import client
from client.admin_http import AdminError, PdAdminClient
from client.errors import ClientError
from kvproto import kvrpcpb as kv
from kvproto.pd_client import open_pd_client
from kvproto.raft_serverpb import RaftMessageBatch
from kvproto.rpc import connect, open_tcp
from kvproto.rpc.tls import client_context, tls_opener
from placement_driver.config import ServerConfig
from placement_driver.server import PdServer
from placement_driver.testing import open_pd
from shardkv.local_cluster import leader_context
from store_node.config import StoreConfig
from tests.kvproto.test_rpc_tls import Files
from tests.store_node.test_node import running_store, store_config


def tls_store(tmp: Path, files: Files, pd: str) -> StoreConfig:
    return store_config(
        tmp,
        "s1",
        pd,
        tls_cert_file=files.server_cert,
        tls_key_file=files.server_key,
        tls_ca_file=files.ca,
    )


def tls_pd(tmp: Path, files: Files) -> AbstractAsyncContextManager[PdServer]:
    return open_pd(
        tmp / "pd",
        tls_cert_file=files.server_cert,
        tls_key_file=files.server_key,
        tls_ca_file=files.ca,
    )


async def test_a_store_joins_over_tls_and_clients_that_trust_the_ca_use_it(
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    with trio.fail_after(30):
        async with (
            tls_pd(tmp_path, files) as pd,
            running_store(tls_store(tmp_path, files, pd.addresses.rpc)) as (node, info),
        ):
            async with client.connect([pd.addresses.rpc], tls_ca=files.ca) as c:
                await c.put(b"k", b"v")
                assert await c.get(b"k") == b"v"
            # No client certificate: a client; its Raft batch is dropped.
            as_client = tls_opener(open_tcp, client_context(files.ca))
            async with open_pd_client([pd.addresses.rpc], open_stream=as_client) as pdc:
                ctx, _ = await leader_context(pdc)
            frames = node.raft_frames_received
            async with connect(info.address, open_stream=as_client) as conn:
                await conn.send_oneway(RaftMessageBatch(info.store_id, (), 1))
                got = await conn.call(kv.RawGetRequest(ctx, b"k"))
                assert isinstance(got, kv.RawGetResponse) and got.value == b"v"
            assert node.raft_frames_received == frames
            # A client without TLS gets no answer.
            async with client.connect([pd.addresses.rpc], timeout=2.0) as c:
                with pytest.raises(ClientError):
                    await c.get(b"k")


async def test_the_http_ports_serve_https_with_the_same_certificate(tmp_path: Path) -> None:
    files = Files(tmp_path)
    with trio.fail_after(30):
        async with (
            tls_pd(tmp_path, files) as pd,
            running_store(
                dataclasses.replace(
                    tls_store(tmp_path, files, pd.addresses.rpc), status="127.0.0.1:0"
                )
            ) as (_, info),
        ):
            url = pd.addresses.http_url
            assert url.startswith("https://")
            # shardkv ctl's client with the CA; without it the PD is not trusted.
            ctl = PdAdminClient(url, tls_ca=files.ca)
            stores = await trio.to_thread.run_sync(ctl.get, "/stores")
            assert [s["id"] for s in stores["stores"]] == [info.store_id]
            with pytest.raises(AdminError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
                await trio.to_thread.run_sync(PdAdminClient(url).get, "/stores")
            # The store's status port: HTTPS, checked against the CA.
            ctx = ssl.create_default_context(cafile=files.ca)

            def metrics() -> bytes:
                address = f"https://{info.status_address}/metrics"
                with urllib.request.urlopen(address, context=ctx, timeout=10) as r:
                    body: bytes = r.read()
                    return body

            assert b"shardkv_store_regions" in await trio.to_thread.run_sync(metrics)


def test_tls_settings_come_together() -> None:
    with pytest.raises(ValueError, match="tls_cert_file, tls_key_file and tls_ca_file"):
        store_config(Path("x"), "s", "127.0.0.1:1", tls_cert_file="c").validate()
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file together"):
        ServerConfig(data_dir="x", tls_cert_file="c").validate()

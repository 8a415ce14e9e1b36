"""Run a PD in-process, for tests of the PD and of everything that talks to
it (store node tests, cluster tests)::

    async with open_pd(tmp_path / "pd") as pd:
        pd.addresses.rpc        # "127.0.0.1:41234"
        pd.addresses.http_url   # "http://127.0.0.1:41235"
        pd.cluster              # the core, for assertions

Both listeners use port 0 on 127.0.0.1. Leaving the block stops the PD
(regions flushed, storage closed); opening it again on the same directory
is a restart. Works under trio's MockClock (store states follow
`trio.current_time()`).
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio
import trio.testing

from kvproto.rpc import RpcConnection
from placement_driver.config import ServerConfig
from placement_driver.operators import OperatorTimeouts
from placement_driver.server import PdServer
from placement_driver.service import OperatorHook
from plumbing.nursery import open_background_nursery

__all__ = ["TEST_CLUSTER_CONFIG", "connect_in_memory", "open_pd"]

# Short store timings for tests (seconds); any cluster key may be given.
TEST_CLUSTER_CONFIG: Mapping[str, object] = {
    "store_disconnect_time": 2.0,
    "max_store_down_time": 6.0,
}


@asynccontextmanager
async def open_pd(
    data_dir: str | os.PathLike[str],
    *,
    config: Mapping[str, object] | None = None,
    host: str = "127.0.0.1",
    id_alloc_step: int = 1000,
    region_flush_interval: float = 1.0,
    seed: int | None = None,
    operators: OperatorHook | None = None,
    patrol_interval: float = 1.0,
    operator_history_size: int = 256,
    operator_timeouts: OperatorTimeouts | None = None,
    admin_token_file: str | os.PathLike[str] | None = None,
    cluster_token_file: str | os.PathLike[str] | None = None,
    client_token_file: str | os.PathLike[str] | None = None,
    tls_cert_file: str = "",
    tls_key_file: str = "",
    tls_ca_file: str = "",
    max_connections: int = 1024,
) -> AsyncIterator[PdServer]:
    """A running PdServer on `data_dir`; `config` holds cluster keys (as in
    pd.toml) applied over the stored config, default TEST_CLUSTER_CONFIG.
    `seed` makes the cluster id reproducible. Scheduling is on (the
    replica checker; set `replica_schedule_limit` 0 to turn it off);
    `pd.split_region(region_id, keys)` starts a manual split. With
    `admin_token_file`, the admin API's orders need its token; with
    `cluster_token_file` (and `client_token_file`), RPC connections must
    authenticate. `max_connections`: the RPC port's (`ServerConfig`)."""
    server = PdServer(
        ServerConfig(
            data_dir=os.fspath(data_dir),
            listen=f"{host}:0",
            http=f"{host}:0",
            admin_token_file="" if admin_token_file is None else os.fspath(admin_token_file),
            cluster_token_file="" if cluster_token_file is None else os.fspath(cluster_token_file),
            client_token_file="" if client_token_file is None else os.fspath(client_token_file),
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_ca_file=tls_ca_file,
            max_connections=max_connections,
        ),
        cluster_overrides=TEST_CLUSTER_CONFIG if config is None else config,
        id_alloc_step=id_alloc_step,
        region_flush_interval=region_flush_interval,
        rng=None if seed is None else random.Random(seed),
        operators=operators,
        patrol_interval=patrol_interval,
        operator_history_size=operator_history_size,
        operator_timeouts=operator_timeouts,
    )
    async with open_background_nursery() as nursery:
        await nursery.start(server.run)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect_in_memory(pd: PdServer) -> AsyncIterator[RpcConnection]:
    """An RPC connection to `pd` over an in-memory stream: no kernel
    involved, so virtual time under an autojump MockClock only moves when
    every task waits on a timer."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with open_background_nursery() as nursery:
        nursery.start_soon(pd.rpc_server.handle_connection, server_stream, "in-memory")
        conn = RpcConnection(client_stream, peer="in-memory")
        nursery.start_soon(conn.run)
        try:
            yield conn
        finally:
            conn.close()
            nursery.cancel_scope.cancel()

"""Stores on machines of their own, stood in for by loopback addresses:
each store listens, advertises and serves its status on 127.0.0.2, .3 or
.4 (the PD on 127.0.0.1), so a store or client that dialled anything but
the advertised address would not reach it. On Linux all of 127.0.0.0/8 is
loopback; where it is not, the test is skipped. Bounded by
`trio.fail_after`."""

from __future__ import annotations

import os
import socket
import struct
import sys
from pathlib import Path

import pytest
import trio

from kvproto.pd_client import PdClient
from shardkv.local_cluster import LocalCluster
from tests.cluster.helpers import (
    FAST_PD,
    FAST_STORE,
    eventually,
    region_of,
    serving,
    store_status,
    voters,
)
from tests.placement_driver.helpers import http_request

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def require_bindable(hosts: tuple[str, ...]) -> None:
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, 0))
            except OSError as e:
                pytest.skip(
                    f"cannot bind {host} ({e.strerror}): only Linux makes all of "
                    "127.0.0.0/8 loopback; elsewhere add the aliases first "
                    "(macOS: sudo ifconfig lo0 alias 127.0.0.2 up)"
                )


def listening_addresses(pid: int) -> set[str]:
    """HOST:PORT of every TCP socket process `pid` listens on: its socket
    inodes matched against the LISTEN rows (state 0A) of /proc/net/tcp."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)  # the header
        for line in f:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                ip, port = local.split(":")
                # The kernel prints the address as a u32 in host byte order.
                host = socket.inet_ntoa(struct.pack("=I", int(ip, 16)))
                found.add(f"{host}:{int(port, 16)}")
    return found


async def store_addresses(pd: PdClient) -> dict[int, str]:
    """Store id -> the address the PD hands to stores and clients."""
    return {s.id: s.address for s in await pd.get_all_stores()}


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; 127.0.0.0/8 is Linux's")
async def test_stores_on_distinct_hosts_replicate_and_survive_the_leaders_loss(
    tmp_path: Path,
) -> None:
    require_bindable(HOSTS)
    cluster = LocalCluster(
        tmp_path, stores=3, hosts=HOSTS, store_flags=dict(FAST_STORE), pd_flags=dict(FAST_PD)
    )
    assert [s.address.rsplit(":", 1)[0] for s in cluster.store_specs] == list(HOSTS)
    with trio.fail_after(60):
        async with serving(cluster, voters=3) as (pd, kv):
            # Each store listens on its own host only: nothing of it on 127.0.0.1.
            for spec in cluster.store_specs:
                assert spec.child.process is not None
                bound = listening_addresses(spec.child.process.pid)
                assert bound == {spec.address, spec.status_address}

            # The PD knows each store by the address it advertised, and that
            # address answers as that store.
            addresses = await store_addresses(pd)
            assert sorted(addresses.values()) == sorted(s.address for s in cluster.store_specs)
            for store_id, address in addresses.items():
                status = await store_status(address)
                assert status is not None and status.store_id == store_id
            for spec in cluster.store_specs:
                r = await http_request(spec.status_url + "/status")
                assert r.status == 200 and r.json()["address"] == spec.address

            acked = [(b"k%03d" % i, b"v%03d" % i) for i in range(50)]
            await kv.batch_put(acked[:25])
            for k, v in acked[25:]:
                await kv.put(k, v)
            assert await kv.scan(b"k", b"l", limit=100) == acked

            # One region, a voter on each host.
            region = await region_of(pd, b"k")
            assert region is not None
            assert {addresses[s] for s in voters(region)} == {
                s.address for s in cluster.store_specs
            }

            _, leader = await pd.get_region(b"k")
            assert leader is not None
            victim = next(s for s in cluster.store_specs if s.address == addresses[leader.store_id])
            await cluster.kill_store(victim.index)

            # The client finds the new leader at another host's address:
            # writes and reads go on (each retried within its deadline).
            more = [(b"m%03d" % i, b"w%03d" % i) for i in range(20)]
            for k, v in more:
                await kv.put(k, v)
            assert await kv.get(b"k000") == b"v000"
            assert await kv.scan(b"k", b"n", limit=200) == [*acked, *more]

            async def led_elsewhere() -> bool:
                _, now = await pd.get_region(b"k")
                return now is not None and now.store_id != leader.store_id

            await eventually(led_elsewhere)
            _, new_leader = await pd.get_region(b"k")
            assert new_leader is not None
            assert addresses[new_leader.store_id] in {
                s.address for s in cluster.store_specs if s is not victim
            }

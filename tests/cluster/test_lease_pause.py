"""A leader's lease does not survive a pause of its process.

The lease is measured on the monotonic clock, which keeps running while a
process is stopped. A leader paused (SIGSTOP) for longer than an election
timeout, while the others elect a new leader and a write lands there, must
not answer a read from its old lease when it resumes: a read it receives
(sent while it was stopped, so it is the first thing it may see) either is
refused (not leader, epoch, ...) or returns the new value. Loopback only;
bounded by `trio.fail_after`.
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio
import trio.testing

import client
from kvproto.kvrpcpb import RawGetRequest, RawGetResponse
from kvproto.pd_client import PdClient
from kvproto.rpc import connect
from shardkv.local_cluster import LocalCluster, leader_context
from tests.cluster.helpers import eventually, fast_cluster, serving, store_status

# Slower ticks than the other cluster tests: the lease is
# (election_ticks - 1) * tick - margin = 9 * 50 ms - 100 ms = 350 ms, and an
# election timeout is 0.5 to 1 s.
LEASE_FLAGS = {"--tick-interval": "50ms", "--lease-margin": "100ms"}
KEY = b"lease-key"


async def _lease_reads(address: str) -> int:
    status = await store_status(address)
    assert status is not None
    return dict(status.counters).get("lease_reads", 0)


async def _pause_and_read(
    cluster: LocalCluster, pd: PdClient, kv: client.Client, old: bytes, new: bytes
) -> RawGetResponse:
    """Write `old`, pause its leader inside a lease, write `new` elsewhere,
    and return the answer the resumed leader gives to a read of the key."""
    index_of = {spec.address: spec.index for spec in cluster.store_specs}
    await kv.put(KEY, old)
    ctx, address = await leader_context(pd, KEY)
    answer: list[object] = []
    async with connect(address, connect_timeout=5) as conn:
        # Reads at the leader until one is served from its lease.
        before = await _lease_reads(address)
        while await _lease_reads(address) == before:
            r = await conn.call(RawGetRequest(ctx, KEY), timeout=5)
            assert isinstance(r, RawGetResponse) and r.value == old, r
        # Within that lease, stop the leader.
        stopped = index_of[address]
        cluster.signal_store(stopped, signal.SIGSTOP)
        try:
            # The others elect a leader; the client's write lands there.
            await kv.put(KEY, new)

            async def moved() -> bool:
                _, leader = await pd.get_region(KEY)
                return leader is not None and leader.id != ctx.peer.id

            await eventually(moved)

            async def read() -> None:
                answer.append(await conn.call(RawGetRequest(ctx, KEY), timeout=20))

            async with trio.open_nursery() as n:
                n.start_soon(read)
                # Once every task here waits, the request is in the stopped
                # leader's socket buffer: resume it.
                await trio.testing.wait_all_tasks_blocked()
                cluster.signal_store(stopped, signal.SIGCONT)
        finally:
            cluster.signal_store(stopped, signal.SIGCONT)
    r = answer[0]
    assert isinstance(r, RawGetResponse), r
    return r


async def test_a_paused_leader_never_answers_from_its_old_lease(tmp_path: Path) -> None:
    cluster = fast_cluster(tmp_path, 3, **LEASE_FLAGS)
    with trio.fail_after(150):
        async with serving(cluster, voters=3, client_timeout=30) as (pd, kv):
            for i in range(3):
                old, new = b"old-%d" % i, b"new-%d" % i
                r = await _pause_and_read(cluster, pd, kv, old, new)
                # Refused, or the new value: never the value its lease covered.
                assert r.region_error is not None or r.value == new, (i, r)
                assert await kv.get(KEY) == new

"""Every port of a PD and a store against garbage (issue 15, the bounded
fuzz run in CI): random bytes, oversized and truncated frames, deeply
nested CBOR, mutated valid frames of every registered message type, large
dense frames, abrupt closes, slow senders and more idle connections than
the RPC ports' limit, on the store's RPC port, the PD's RPC port, the PD's
admin HTTP port and the store's status port. Meanwhile a well-behaved
client reads and writes within its deadline; afterwards the processes
still serve, the data written before is unchanged, and the process grew
by less than its bound.

In-process, TCP on 127.0.0.1, seeded (`SHARDKV_FUZZ_SEED`), bounded:
`SHARDKV_FUZZ_ROUNDS` (default 60) garbage connections per port,
`SHARDKV_FUZZ_IDLE` (default 1,500) idle connections per RPC port,
against a `max_connections` of 256, and `SHARDKV_FUZZ_DENSE` (default 2)
frames of a million items per RPC port; raise them for a longer run.
Deadlines are generous and every wait is for a condition: the run must
pass on a loaded two-core machine.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path

import trio
import trio.lowlevel

import client
from kvproto import codec, pdpb, raft_serverpb, raftpb
from kvproto import kvrpcpb as kv
from kvproto.codec import cbor_cost, encode_cbor, to_wire
from kvproto.frame import encode_frame
from kvproto.metapb import RegionEpoch
from kvproto.raft_serverpb import RaftMessageBatch
from placement_driver.testing import open_pd
from tests.factories import peer
from tests.kvproto.random_messages import mutate_wire, random_message
from tests.store_node.test_node import running_store, store_config

logger = logging.getLogger(__name__)

ROUNDS = int(os.environ.get("SHARDKV_FUZZ_ROUNDS", "60"))
IDLE = int(os.environ.get("SHARDKV_FUZZ_IDLE", "1500"))
SEED = int(os.environ.get("SHARDKV_FUZZ_SEED", "15"))
# Low, so that the idle connections outnumber it several times over.
MAX_CONNECTIONS = 256
# Connections that send one frame, read its answer and stay: fewer than
# the limit, as a client that finds every slot taken by connections that
# are idle but not silent waits for one to be idle 5 s (test_rpc_admission).
PROVEN_IDLE = MAX_CONNECTIONS // 4
SLOW_SENDERS = 8  # per RPC port
# Per RPC port: each 1 MB, a million items, 24 MB decoded. They cost CPU
# (a cost walk in a thread, the decode on the loop): while they are worked
# through, the PD and the store (one process, one loop here) answer slowly.
DENSE_FRAMES = int(os.environ.get("SHARDKV_FUZZ_DENSE", "2"))
DENSE_SIZE = 1_000_000
# The well-behaved client's deadline while attacked: generous, as the test
# runs on loaded two-core machines (its three calls took 2 to 5.5 s there,
# most of it waiting behind the dense frames).
CLIENT_DEADLINE = 30.0

# Store-to-store traffic (Raft messages, snapshots) is the cluster's own:
# only authentication keeps it from strangers (the cluster token, TLS), so
# the store is not sent forged member traffic here; the PD gets every type.
MEMBER_MODULES = (raft_serverpb.__name__, raftpb.__name__, "raft.types")


def message_types(member_traffic: bool) -> list[type]:
    return [
        cls
        for _, cls in sorted(codec.registered_types().items())
        if member_traffic or cls.__module__ not in MEMBER_MODULES
    ]


def _valid_messages() -> list[object]:
    """Frames the ports know, to mutate."""
    ctx = kv.Context(2, RegionEpoch(1, 1), peer(3, 1))
    header = pdpb.RequestHeader()
    return [
        kv.RawPutRequest(ctx, b"k", b"v"),
        kv.RawGetRequest(ctx, b"k"),
        kv.RawScanRequest(ctx, b"", b"", 10),
        pdpb.GetRegionRequest(header, b"k"),
        pdpb.StoreHeartbeatRequest(header, pdpb.StoreStats(1)),
        pdpb.SetConfigRequest(header, (pdpb.ConfigItem("max_replicas", "3"),)),
        RaftMessageBatch(1, (), 7),
    ]


def mutated_frame(rng: random.Random, types: list[type]) -> bytes:
    """A request or one-way envelope around a random message of a
    registered type, mutated or not."""
    msg = None
    while msg is None:
        msg = random_message(rng.choice(types), rng)
    wire = to_wire(msg)
    if rng.random() < 0.7:
        wire = mutate_wire(wire, rng)
    kind = rng.choice([0, 3])  # REQUEST, ONEWAY
    frame = bytearray(encode_frame(encode_cbor([kind, rng.randrange(1, 1 << 31), wire])))
    if rng.random() < 0.2:  # bytes flipped too, the length kept
        i = rng.randrange(4, len(frame))
        frame[i] = rng.randrange(256)
    return bytes(frame)


def rpc_garbage(rng: random.Random, types: list[type]) -> bytes:
    """One connection's worth of bad input for an RPC port."""
    kind = rng.randrange(8)
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randrange(1, 3000))
    if kind == 1:  # a length far beyond the frame limit
        return struct.pack(">I", rng.choice([1 << 31, (1 << 32) - 1, 200 << 20])) + b"\xa0"
    if kind == 2:  # a frame cut short
        frame = encode_frame(encode_cbor([0, 1, to_wire(rng.choice(_valid_messages()))]))
        return frame[: rng.randrange(1, len(frame))]
    if kind == 3:  # deep nesting
        depth = rng.choice([100, 5000, 100_000])
        body = b"\x81" * depth + b"\x00"
        return struct.pack(">I", len(body)) + body
    if kind >= 6:  # mutated messages of every registered type, several in a row
        return b"".join(mutated_frame(rng, types) for _ in range(rng.randrange(1, 8)))
    frame = bytearray(encode_frame(encode_cbor([0, 1, to_wire(rng.choice(_valid_messages()))])))
    if kind == 4:  # a valid frame with bytes flipped (the length kept)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(4, len(frame))
            frame[i] = rng.randrange(256)
        return bytes(frame)
    # a valid envelope of the wrong kind or id, then noise
    frame[5] = rng.randrange(256)
    return bytes(frame) + rng.randbytes(rng.randrange(0, 64))


def http_garbage(rng: random.Random, types: list[type]) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 2000))
    if kind == 1:
        return b"GET /" + b"a" * rng.randrange(1, 100_000) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    if kind == 2:
        return b"POST /pd/api/v1/config HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n{"
    return b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * rng.randrange(1, 500) + b"\r\n"


def dense_frame(size: int) -> bytes:
    """A one-way envelope of [0, 0, 0] arrays: 24 times its size decoded,
    under the ratio limit (as dense as Raft heartbeats), a few items short
    of the item limit at 1 MB."""
    n = (size - 10) // 4
    return encode_frame(bytes([0x83, 3, 0x00]) + b"\x9a" + struct.pack(">I", n) + b"\x83\0\0\0" * n)


class Counts:
    def __init__(self) -> None:
        self.connections = 0
        self.refused = 0


async def open_to(address: str, counts: Counts) -> trio.SocketStream | None:
    host, port = address.rsplit(":", 1)
    try:
        stream = await trio.open_tcp_stream(host, int(port))
    except OSError:
        counts.refused += 1
        return None
    counts.connections += 1
    return stream


async def attack(address: str, payload: bytes, rng: random.Random, counts: Counts) -> None:
    """Send `payload`, then close now, read what comes for a moment, or
    leave the connection idle for a while."""
    stream = await open_to(address, counts)
    if stream is None:
        return
    async with stream:
        try:
            await stream.send_all(payload)
            how = rng.randrange(3)
            if how == 1:
                with trio.move_on_after(0.05):
                    while await stream.receive_some():
                        pass
            elif how == 2:
                await trio.sleep(0.2)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def fuzz(
    address: str,
    garbage: Callable[[random.Random, list[type]], bytes],
    types: list[type],
    rng: random.Random,
    counts: Counts,
) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(ROUNDS):
            payload = garbage(rng, types)
            nursery.start_soon(attack, address, payload, random.Random(rng.random()), counts)
            await trio.lowlevel.checkpoint()  # a few dozen at once, not all


async def hold_idle(address: str, first: bytes | None, counts: Counts, done: trio.Event) -> None:
    """A connection that sends nothing (or one frame, reading the answer),
    then stays until `done`."""
    stream = await open_to(address, counts)
    if stream is None:
        return
    async with stream:
        try:
            if first is not None:
                await stream.send_all(first)
                await stream.receive_some()
            await done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def slow_sender(address: str, frame: bytes, counts: Counts, done: trio.Event) -> None:
    """Sends `frame` a byte every 20 ms until `done` (a large one never
    completes here; the frame timeout, 30 s, would cut it: test_rpc_limits
    has that)."""
    stream = await open_to(address, counts)
    if stream is None:
        return
    async with stream:
        for i in range(len(frame)):
            if done.is_set():
                return
            try:
                await stream.send_all(frame[i : i + 1])
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            await trio.sleep(0.02)


async def dense_sender(address: str, frame: bytes, counts: Counts, done: trio.Event) -> None:
    stream = await open_to(address, counts)
    if stream is None:
        return
    async with stream:
        try:
            await stream.send_all(frame)
            await done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def memory_bound(connections: int) -> int:
    """What the attack may make the process hold: every dense frame at
    once, raw and decoded (the servers' budgets allow more), 16 KiB a
    connection (both ends are in this process; ~9 KiB measured), and 64 MiB
    for the rest (the garbage's buffers, the client, logging)."""
    frame = dense_frame(DENSE_SIZE)
    decoded = cbor_cost(frame[4:], max_items=1 << 21, max_memory=1 << 40).memory
    return 2 * DENSE_FRAMES * (len(frame) + decoded) + connections * (16 << 10) + (64 << 20)


def memory_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_memory() -> bool:
    """Resets VmHWM to the current RSS (Linux); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


async def test_every_port_survives_garbage_and_the_data_stays_as_written(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    written = {b"key%03d" % i: b"value%03d" % i for i in range(50)}
    counts = Counts()
    with trio.fail_after(120 + ROUNDS + IDLE / 20 + 5 * DENSE_FRAMES):
        async with open_pd(tmp_path / "pd", max_connections=MAX_CONNECTIONS) as pd:
            cfg = store_config(
                tmp_path,
                "s1",
                pd.addresses.rpc,
                status="127.0.0.1:0",
                max_connections=MAX_CONNECTIONS,
            )
            async with running_store(cfg) as (node, info):
                assert info.status_address is not None
                async with client.connect([pd.addresses.rpc], timeout=10.0) as c:
                    for k, v in written.items():
                        await c.put(k, v)
                rpc_ports = [
                    (info.address, message_types(member_traffic=False)),
                    (pd.addresses.rpc, message_types(member_traffic=True)),
                ]
                first_frames = [
                    encode_frame(
                        encode_cbor(
                            [
                                0,
                                1,
                                to_wire(
                                    kv.RawGetRequest(
                                        kv.Context(2, RegionEpoch(1, 1), peer(3, 1)), b"k"
                                    )
                                ),
                            ]
                        )
                    ),
                    encode_frame(
                        encode_cbor(
                            [0, 1, to_wire(pdpb.IsBootstrappedRequest(pdpb.RequestHeader()))]
                        )
                    ),
                ]
                peak_measured = reset_peak_memory()
                rss_before = memory_kib("VmRSS")
                start = time.monotonic()
                done = trio.Event()
                async with trio.open_nursery() as attackers:
                    # Idle connections, several times the limit, most of them
                    # silent; some with one frame answered.
                    for (address, _), first in zip(rpc_ports, first_frames, strict=True):
                        for i in range(IDLE):
                            hello = first if i < PROVEN_IDLE else None
                            attackers.start_soon(hold_idle, address, hello, counts, done)
                            if i % 50 == 0:
                                await trio.lowlevel.checkpoint()
                        large = struct.pack(">I", 1 << 20) + bytes(1 << 20)
                        for i in range(SLOW_SENDERS):
                            frame = first if i % 2 else large
                            attackers.start_soon(slow_sender, address, frame, counts, done)
                        for _ in range(DENSE_FRAMES):
                            attackers.start_soon(
                                dense_sender, address, dense_frame(DENSE_SIZE), counts, done
                            )
                    # Garbage on every port.
                    async with trio.open_nursery() as nursery:
                        targets = [
                            (info.address, rpc_garbage, rpc_ports[0][1]),
                            (pd.addresses.rpc, rpc_garbage, rpc_ports[1][1]),
                            (pd.addresses.http, http_garbage, []),
                            (info.status_address, http_garbage, []),
                        ]
                        for address, garbage, types in targets:
                            nursery.start_soon(
                                fuzz, address, garbage, types, random.Random(rng.random()), counts
                            )
                    attacked = time.monotonic() - start
                    # While the idle connections still hold every slot and the
                    # slow senders dribble, a client reads and writes within
                    # its deadline (its connections take the place of silent
                    # ones).
                    calls_start = time.monotonic()
                    async with client.connect([pd.addresses.rpc], timeout=CLIENT_DEADLINE) as c:
                        assert await c.get(b"key007") == b"value007"
                        await c.put(b"during", b"attack")
                        assert await c.get(b"during") == b"attack"
                    calls = time.monotonic() - calls_start
                    done.set()
                grown = (memory_kib("VmHWM") - rss_before) * 1024
                assert node.rpc_server is not None
                servers = [node.rpc_server, pd.rpc_server]
                # Both still serve, within the client's deadline, and nothing
                # written changed (SetConfig and heartbeats in the garbage
                # were refused or harmless).
                async with client.connect([pd.addresses.rpc], timeout=10.0) as c:
                    pairs = await c.scan(b"key", b"kez", limit=100)
                    assert dict(pairs) == written
                    await c.put(b"after", b"fuzz")
                    assert await c.get(b"after") == b"fuzz"
                assert pd.cluster.config.max_replicas == 3
                assert [s.id for s in pd.cluster.stores()] == [info.store_id]
                # Thousands of connections came and went through 256 slots.
                assert all(s.evicted_connections > 0 for s in servers)
                assert all(s.open_connections <= MAX_CONNECTIONS for s in servers)
                for s in servers:
                    assert s.buffer_budget.used == 0 and s.decode_gate.budget.used == 0
    bound = memory_bound(counts.connections)
    if peak_measured:
        assert grown < bound, f"grew {grown / 1e6:.0f} MB, over {bound / 1e6:.0f} MB"
    logger.info(
        "fuzz: %d connections in %.1f s (%.0f/s); the client's three calls took %.2f s; "
        "evicted %s refused %s, peak memory %s (bound %.0f MB)",
        counts.connections,
        attacked,
        counts.connections / attacked,
        calls,
        [s.evicted_connections for s in servers],
        [s.refused_connections for s in servers],
        f"+{grown / 1e6:.0f} MB" if peak_measured else "not measured (clear_refs refused)",
        bound / 1e6,
    )

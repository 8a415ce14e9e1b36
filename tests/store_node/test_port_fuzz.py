"""Every port of a PD and a store against garbage (issue 15, the bounded
fuzz run in CI): random bytes, oversized and truncated frames, deeply
nested CBOR, valid frames with bytes flipped, abrupt closes and idle
connections, on the store's RPC port, the PD's RPC port, the PD's admin
HTTP port and the store's status port. Afterwards the processes still
serve, a client's reads and writes work within their deadline, and the
data written before is unchanged.

In-process, TCP on 127.0.0.1, seeded (`SHARDKV_FUZZ_SEED`), bounded:
`SHARDKV_FUZZ_ROUNDS` (default 60) connections per port; raise it for a
longer run."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

import trio
import trio.lowlevel

import client
from kvproto import kvrpcpb as kv
from kvproto import pdpb
from kvproto.codec import encode_cbor, to_wire
from kvproto.frame import encode_frame
from kvproto.metapb import RegionEpoch
from kvproto.raft_serverpb import RaftMessageBatch
from placement_driver.testing import open_pd
from tests.factories import peer
from tests.store_node.test_node import running_store, store_config

ROUNDS = int(os.environ.get("SHARDKV_FUZZ_ROUNDS", "60"))
SEED = int(os.environ.get("SHARDKV_FUZZ_SEED", "15"))


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


def rpc_garbage(rng: random.Random) -> bytes:
    """One connection's worth of bad input for an RPC port."""
    kind = rng.randrange(6)
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
    frame = bytearray(encode_frame(encode_cbor([0, 1, to_wire(rng.choice(_valid_messages()))])))
    if kind == 4:  # a valid frame with bytes flipped (the length kept)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(4, len(frame))
            frame[i] = rng.randrange(256)
        return bytes(frame)
    # a valid envelope of the wrong kind or id, then noise
    frame[5] = rng.randrange(256)
    return bytes(frame) + rng.randbytes(rng.randrange(0, 64))


def http_garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 2000))
    if kind == 1:
        return b"GET /" + b"a" * rng.randrange(1, 100_000) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    if kind == 2:
        return b"POST /pd/api/v1/config HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n{"
    return b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * rng.randrange(1, 500) + b"\r\n"


async def attack(address: str, payload: bytes, rng: random.Random) -> None:
    """Send `payload`, then close now, read what comes for a moment, or
    leave the connection idle for a while."""
    host, port = address.rsplit(":", 1)
    try:
        stream = await trio.open_tcp_stream(host, int(port))
    except OSError:
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


async def fuzz(address: str, garbage: Callable[[random.Random], bytes], rng: random.Random) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(ROUNDS):
            nursery.start_soon(attack, address, garbage(rng), random.Random(rng.random()))
            await trio.lowlevel.checkpoint()  # a few dozen at once, not all


async def test_every_port_survives_garbage_and_the_data_stays_as_written(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    written = {b"key%03d" % i: b"value%03d" % i for i in range(50)}
    with trio.fail_after(60 + ROUNDS):
        async with open_pd(tmp_path / "pd") as pd:
            cfg = store_config(tmp_path, "s1", pd.addresses.rpc, status="127.0.0.1:0")
            async with running_store(cfg) as (_, info):
                assert info.status_address is not None
                async with client.connect([pd.addresses.rpc], timeout=10.0) as c:
                    for k, v in written.items():
                        await c.put(k, v)
                targets = [
                    (info.address, rpc_garbage),
                    (pd.addresses.rpc, rpc_garbage),
                    (pd.addresses.http, http_garbage),
                    (info.status_address, http_garbage),
                ]
                async with trio.open_nursery() as nursery:
                    for address, garbage in targets:
                        nursery.start_soon(fuzz, address, garbage, random.Random(rng.random()))
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

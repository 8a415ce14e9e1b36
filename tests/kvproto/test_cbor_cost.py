"""`cbor_cost`: the cost of decoding a CBOR item, found without building it
(issue 15, finding 3: a frame of empty arrays cost about 65 times its size
once decoded, and seconds of the event loop).

It counts what the decoder builds, estimates the memory close to what
tracemalloc measures, never refuses what `decode_cbor` accepts (but for its
budget), raises only DecodeError, and stops as soon as the budget is spent.
"""

from __future__ import annotations

import gc
import struct
import time
import tracemalloc
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvproto.codec import MAX_DEPTH, DecodeError, cbor_cost, decode_cbor, dumps, encode_cbor
from kvproto.metapb import Peer, RegionEpoch
from kvproto.raft_serverpb import RaftMessage, RaftMessageBatch
from raft.types import Entry, Message, MessageType
from tests.kvproto.test_codec import _mutated

UNLIMITED = {"max_items": 1 << 40, "max_memory": 1 << 60}


def nodes(obj: Any) -> int:
    if isinstance(obj, list):
        return 1 + sum(nodes(x) for x in obj)
    if isinstance(obj, dict):
        return 1 + sum(nodes(k) + nodes(v) for k, v in obj.items())
    return 1


def measured(data: bytes) -> int:
    """Bytes tracemalloc sees `decode_cbor` keep for `data`."""
    gc.collect()
    tracemalloc.start()
    obj = decode_cbor(data)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del obj
    return size


def array_of(item: bytes, n: int) -> bytes:
    return b"\x9a" + struct.pack(">I", n) + item * n


def heartbeats(n: int) -> bytes:
    def message(i: int) -> RaftMessage:
        heartbeat = Message(MessageType.HEARTBEAT, to=3000 + i, from_=2000 + i, term=12, commit=9)
        return RaftMessage(
            1000 + i, Peer(2000 + i, 2), Peer(3000 + i, 1), RegionEpoch(5, 7), heartbeat
        )

    return dumps(RaftMessageBatch(2, tuple(message(i) for i in range(n)), 12345678))


def appends(n: int) -> bytes:
    entries = tuple(Entry(term=7, index=1000 + i, data=bytes(100)) for i in range(64))
    append = Message(MessageType.APPEND, to=1, from_=2, term=7, index=999, entries=entries)
    peers = Peer(2, 2), Peer(3, 1)
    return dumps(RaftMessageBatch(2, (RaftMessage(1, *peers, RegionEpoch(1, 1), append),) * n))


SHAPES = {
    "empty arrays": array_of(b"\x80", 100_000),
    "arrays of an empty array": array_of(b"\x81\x80", 50_000),
    "arrays of one int": array_of(b"\x81\x00", 50_000),
    "arrays of three ints": array_of(b"\x83\x00\x00\x00", 25_000),
    "small ints": array_of(b"\x01", 100_000),
    "large ints": array_of(b"\x1b" + b"\x01" * 8, 10_000),
    "empty maps": array_of(b"\xa0", 100_000),
    "empty bytes": array_of(b"\x40", 100_000),
    "floats": encode_cbor([1.1] * 10_000),
    "text": encode_cbor([f"héllo {i}" for i in range(10_000)]),
    "raft heartbeats": heartbeats(2000),
    "raft appends": appends(50),
}


@pytest.mark.parametrize("data", SHAPES.values(), ids=SHAPES.keys())
def test_the_estimate_is_close_to_what_decoding_allocates(data: bytes) -> None:
    cost = cbor_cost(data, **UNLIMITED)
    assert cost.items == nodes(decode_cbor(data))
    real = measured(data)
    assert real * 0.97 <= cost.memory <= real * 1.25, (cost.memory / real, real / len(data))


def test_a_frame_of_empty_arrays_costs_65_times_its_size_and_raft_traffic_20() -> None:
    assert 60 < cbor_cost(SHAPES["empty arrays"], **UNLIMITED).memory / 100_000 < 70
    data = SHAPES["raft heartbeats"]
    assert cbor_cost(data, **UNLIMITED).memory / len(data) < 22


def test_the_walk_stops_as_soon_as_the_budget_is_spent() -> None:
    data = array_of(b"\x80", 4_000_000)
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="more than 1,000 items"):
        cbor_cost(data, max_items=1000, max_memory=1 << 60)
    with pytest.raises(DecodeError, match="decoding would cost too much"):
        cbor_cost(data, max_items=1 << 40, max_memory=100_000)
    assert time.perf_counter() - start < 0.5


HOSTILE = {
    "tag": bytes.fromhex("c11a00"),
    "tag-inside": bytes.fromhex("82c11a0000"),
    "indefinite-array": bytes.fromhex("9f0102ff"),
    "indefinite-bytes": bytes.fromhex("5f4101ff"),
    "lone-break": b"\xff",
    "reserved": b"\x1c",
    "absurd-array-length": bytes.fromhex("9b7fffffffffffffff"),
    "array-longer-than-the-bytes": b"\x9a" + struct.pack(">I", 1000) + b"\x00" * 999,
    "absurd-bytes-length": bytes.fromhex("5b7fffffffffffffff"),
    "truncated-bytes": bytes.fromhex("4401"),
    "absurd-map-length": bytes.fromhex("bb7fffffffffffffff"),
    "truncated-head": bytes.fromhex("1a0000"),
    "empty": b"",
    "trailing-bytes": b"\x00\x00",
    "deep-nesting": b"\x81" * 100_000 + b"\x00",
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_what_the_decoder_refuses_for_its_shape_is_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        cbor_cost(data, **UNLIMITED)
    with pytest.raises(DecodeError):
        decode_cbor(data)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
def test_the_depth_limit_is_the_decoders(depth: int) -> None:
    for data in (b"\x81" * depth + b"\x00", b"\x81" * (depth - 1) + b"\x80"):
        try:
            decode_cbor(data)
        except DecodeError:
            decoded = False
        else:
            decoded = True
        if decoded:
            cbor_cost(data, **UNLIMITED)


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=8)
    | st.text(max_size=4)
    | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-5, 500) | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(cbor_values)
def test_every_value_the_decoder_takes_is_walked_and_counted(value: Any) -> None:
    data = cbor2.dumps(value)
    try:
        decoded = decode_cbor(data)
    except DecodeError:
        return
    assert cbor_cost(data, **UNLIMITED).items == nodes(decoded)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_mutated(), st.binary(max_size=200)))
def test_it_never_refuses_what_the_decoder_takes_and_raises_only_decode_error(
    data: bytes,
) -> None:
    try:
        decode_cbor(data)
    except DecodeError:
        decoded = False
    else:
        decoded = True
    try:
        cbor_cost(data, **UNLIMITED)
    except DecodeError:
        assert not decoded

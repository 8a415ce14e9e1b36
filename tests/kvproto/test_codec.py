"""The message codec: round trips of every registered type, and decoding of
hostile input raising DecodeError and nothing else."""

from __future__ import annotations

import datetime
import importlib
import itertools
import pkgutil
import struct
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import kvproto
from kvproto import codec
from kvproto.codec import DecodeError, EncodeError, dumps, from_wire, loads, to_wire, wire
from kvproto.errorpb import NotLeader, RegionError
from kvproto.metapb import Peer, PeerRole, StoreId
from raft.types import Entry, EntryType, Message, MessageType
from tests.factories import peer
from tests.kvproto.strategies import any_message, message_strategy

# Every kvproto module is imported so that all of its message types are in
# the registry when the round-trip test is parametrized.
for _module in pkgutil.iter_modules(kvproto.__path__):
    importlib.import_module(f"kvproto.{_module.name}")


# Test-only messages (tags 9000+) exercising hints no production type uses yet.
@wire(9000)
@dataclass(frozen=True, slots=True)
class Exotic:
    ratio: float
    name: str | None
    pair: tuple[int, str]
    errors: tuple[RegionError, ...]
    error: RegionError | None
    flags: tuple[bool, ...]
    roles: tuple[PeerRole, ...]
    store: StoreId
    maybe_peer: Peer | None = None


@wire(9001)
@dataclass(frozen=True, slots=True)
class Tree:
    value: int
    children: tuple[Tree, ...] = ()


@wire(9002)
@dataclass(frozen=True, slots=True)
class NonNegative:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")


# Tag blocks by module, as allocated in kvproto/__init__.py. A module not
# listed here fails the test below until it is given a block.
TAG_RANGES = {
    "raft.types": range(1, 20),
    "kvproto.metapb": range(20, 40),
    "kvproto.errorpb": range(40, 60),
    "kvproto.rpc": range(60, 80),
    "kvproto.backuppb": range(80, 100),
    "kvproto.pdpb": range(100, 200),
    "kvproto.kvrpcpb": range(200, 240),
    "kvproto.raft_cmdpb": range(240, 280),
    "kvproto.raft_serverpb": range(280, 320),
    "kvproto.debugpb": range(320, 340),
}
TEST_TAGS = range(9000, 10000)


def _depth(obj: object) -> int:
    if isinstance(obj, list | tuple):
        return 1 + max((_depth(x) for x in obj), default=0)
    return 0


def _entries(n: int, size: int) -> tuple[Entry, ...]:
    return tuple(Entry(term=5, index=i, data=bytes(size)) for i in range(1, n + 1))


APPEND = Message(
    MessageType.APPEND, to=2, from_=1, term=5, log_term=5, index=0, entries=_entries(3, 8)
)


# --------------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize(
    "cls", list(codec.registered_types().values()), ids=lambda c: c.__qualname__
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_registered_type_round_trips(cls: type, data: st.DataObject) -> None:
    value = data.draw(message_strategy(cls))
    assume(_depth(to_wire(value)) < codec.MAX_DEPTH)
    encoded = dumps(value)
    decoded = loads(encoded)
    assert type(decoded) is cls
    assert decoded == value
    # Decoding is canonical: re-encoding gives the same bytes.
    assert dumps(decoded) == encoded
    assert loads(encoded, cls) == value


def test_registered_tags_stay_in_their_module_blocks() -> None:
    blocks = sorted(TAG_RANGES.values(), key=lambda r: r.start)
    assert all(a.stop <= b.start for a, b in itertools.pairwise(blocks)), "blocks overlap"
    for tag, cls in codec.registered_types().items():
        if tag in TEST_TAGS:
            continue
        allowed = TAG_RANGES.get(cls.__module__)
        assert allowed is not None, f"{cls.__module__} has no tag block (see kvproto/__init__)"
        assert tag in allowed, f"{cls.__qualname__} has tag {tag} outside {allowed}"


def test_message_is_a_compact_tagged_array() -> None:
    assert cbor2.loads(dumps(Entry(term=1, index=2, data=b"x"))) == [1, 1, 2, 0, b"x"]
    # Nested messages are tagged arrays too; field names never travel.
    wire_form = cbor2.loads(dumps(NotLeader(7, peer(3, 4))))
    assert wire_form == [40, 7, [20, 3, 4, 0]]


def test_enum_members_come_back_as_enum_members() -> None:
    decoded = loads(dumps(Entry(term=1, index=1, type=EntryType.CONF_CHANGE)), Entry)
    assert decoded.type is EntryType.CONF_CHANGE


def test_recursive_types_round_trip() -> None:
    tree = Tree(1, (Tree(2), Tree(3, (Tree(4),))))
    assert loads(dumps(tree)) == tree


def test_raft_append_with_64_entries_round_trips() -> None:
    msg = Message(MessageType.APPEND, to=2, from_=1, term=9, entries=_entries(64, 100))
    assert loads(dumps(msg), Message) == msg


# --------------------------------------------------------------------------
# Registration.


def test_registering_a_taken_tag_or_class_is_refused() -> None:
    @dataclass(frozen=True, slots=True)
    class Fresh:
        x: int

    with pytest.raises(TypeError, match="taken"):
        codec.register(Fresh, 1)
    with pytest.raises(TypeError, match="already registered"):
        codec.register(Entry, 9999)
    with pytest.raises(TypeError, match="not a dataclass"):
        codec.register(int, 9998)
    with pytest.raises(TypeError, match="int >= 1"):
        codec.register(Fresh, True)
    assert Fresh not in codec.registered_types().values()


def test_unsupported_type_hint_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unsupported"):
        codec._field_codec(dict[str, int], "X.f")
    with pytest.raises(TypeError, match="unsupported union"):
        codec._field_codec(int | str, "X.f")


def test_encoding_an_unregistered_value_is_an_encode_error() -> None:
    @dataclass(frozen=True, slots=True)
    class Unregistered:
        x: int

    with pytest.raises(EncodeError):
        dumps(Unregistered(1))
    with pytest.raises(EncodeError):
        to_wire(42)


# --------------------------------------------------------------------------
# Decoding refuses bad input with DecodeError and a message saying why.


def _with(wire_form: list[Any], path: tuple[int, ...], value: Any) -> bytes:
    target = wire_form
    for i in path[:-1]:
        target = target[i]
    target[path[-1]] = value
    return cbor2.dumps(wire_form)


def _append_wire() -> list[Any]:
    result: list[Any] = cbor2.loads(dumps(APPEND))
    return result


INVALID = [
    (cbor2.dumps([9999, 1]), "unknown message tag 9999"),
    (cbor2.dumps([]), "expected a message array, got array of 0"),
    (cbor2.dumps({"type": 1}), "expected a message array, got dict"),
    (cbor2.dumps(["6", 1]), "expected an int message tag, got str"),
    (cbor2.dumps([True, 1]), "expected an int message tag, got bool"),
    (cbor2.dumps([2, 1, 2]), "HardState: expected 3 fields, got 2"),
    (cbor2.dumps([2, 1, 2, 3, 4]), "HardState: expected 3 fields, got 4"),
    (cbor2.dumps([2, 1, True, 3]), "HardState.vote: expected int, got bool"),
    (cbor2.dumps([2, 1, 2.0, 3]), "HardState.vote: expected int, got float"),
    (cbor2.dumps([1, 1, 1, 0, "text"]), "Entry.data: expected bytes, got str"),
    (cbor2.dumps([1, 1, 1, 9, b""]), "Entry.type: 9 is not a EntryType value"),
    (cbor2.dumps([1, 1, 1, None, b""]), "Entry.type: expected EntryType, got NoneType"),
    (cbor2.dumps([23, 1, b"addr", 0, []]), "Store.address: expected str, got bytes"),
    (cbor2.dumps([23, 1, "a", 0, [["k"]]]), "Store.labels[0]: expected tuple[str, str]"),
    (cbor2.dumps([23, 1, "a", 0, [["k", 1]]]), "Store.labels[0][1]: expected str, got int"),
    (cbor2.dumps([3, [1, True], [], [], [], False]), "ConfState.voters[1]: expected int"),
    (cbor2.dumps([3, 1, [], [], [], False]), "ConfState.voters: expected tuple[int, ...]"),
    (_with(_append_wire(), (7, 1, 2), -0.5), "Message.entries[1].index: expected int"),
    (_with(_append_wire(), (7, 2), [2, 0, 0, 0]), "Message.entries[2]: expected Entry, got"),
    (_with(_append_wire(), (7, 0), [1, 1]), "Message.entries[0]: expected 4 fields, got 1"),
    (_with(_append_wire(), (9,), [5, 1]), "Message.snapshot: expected 2 fields, got 1"),
    (_with(_append_wire(), (10,), 1), "Message.reject: expected bool, got int"),
    (cbor2.dumps([40, 1, [21, 1, 1]]), "NotLeader.leader: expected Peer, got RegionEpoch"),
    (cbor2.dumps([9002, -1]), "NonNegative refused its fields: n must be >= 0"),
    (
        cbor2.dumps([9000, 1.5, None, [1, "a"], [[20, 1, 1, 0]], None, [], [], 1, None]),
        "Exotic.errors[0]: expected NotLeader | EpochNotMatch",
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_messages_are_refused_with_a_clear_reason(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        loads(data)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x82\x02", id="truncated"),
        pytest.param(cbor2.dumps([2, 1, 2, 3]) + b"\x00", id="trailing-byte"),
        pytest.param(cbor2.dumps(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)), id="date"),
        pytest.param(cbor2.dumps([2, 2**70, 0, 0]), id="bignum"),
        pytest.param(cbor2.dumps({1, 2}), id="set-tag"),
        pytest.param(bytes.fromhex("d81c81d81d00"), id="shared-reference-cycle"),
        pytest.param(bytes.fromhex("c5821b7fffffffffffffff01"), id="bigfloat-huge-exponent"),
        pytest.param(bytes.fromhex("d9d9f7820200"), id="self-describe-tag"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(4242, [2, 1, 2, 3])), id="unknown-tag"),
        pytest.param(bytes.fromhex("9f020102 03ff".replace(" ", "")), id="indefinite-array"),
        pytest.param(bytes.fromhex("9b7fffffffffffffff"), id="absurd-array-length"),
        pytest.param(bytes.fromhex("5b7fffffffffffffff"), id="absurd-bytes-length"),
        pytest.param(b"\x81" * 100_000 + b"\x00", id="deep-nesting"),
        pytest.param(bytes.fromhex("a1810001"), id="unhashable-map-key"),
        pytest.param(bytes.fromhex("82026280ff"), id="invalid-utf8"),
        pytest.param(b"\xff", id="lone-break"),
        pytest.param(b"\x1c", id="reserved-additional-info"),
        pytest.param(b"\xf7", id="undefined"),
        pytest.param(b"\xf0", id="simple-value"),
    ],
)
def test_hostile_cbor_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        loads(data)


def test_messages_nested_deeper_than_the_limit_are_refused() -> None:
    tree = Tree(0)
    for i in range(codec.MAX_DEPTH):
        tree = Tree(i, (tree,))
    encoded = dumps(tree)  # encoding trusts the value
    with pytest.raises(DecodeError, match="depth"):
        loads(encoded)


def test_from_wire_refuses_structures_deeper_than_the_stack() -> None:
    deep: list[Any] = [9001, 0, []]
    for _ in range(20_000):
        deep = [9001, 0, [deep]]
    with pytest.raises(DecodeError):
        from_wire(deep)


def test_loads_with_an_expected_type_refuses_another_type() -> None:
    with pytest.raises(DecodeError, match="expected Message, got Entry"):
        loads(dumps(Entry(term=1, index=1)), Message)


# --------------------------------------------------------------------------
# Fuzzing: arbitrary or mutated bytes raise DecodeError or decode to a
# registered message; nothing else ever escapes.


def _loads_or_decode_error(data: bytes) -> None:
    try:
        msg = loads(data)
    except DecodeError:
        return
    assert type(msg) in codec.registered_types().values()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    _loads_or_decode_error(data)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(dumps(draw(any_message())))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "int"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete" and data:
            del data[at]
        elif kind == "truncate":
            del data[at:]
        elif kind == "int":
            # A CBOR head claiming a huge length or value.
            data[at:at] = bytes([draw(st.sampled_from([0x1B, 0x5B, 0x7B, 0x9B, 0xBB, 0xDB]))])
            data[at + 1 : at + 1] = struct.pack(">Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_mutated_valid_encodings_never_raise_anything_but_decode_error(data: bytes) -> None:
    _loads_or_decode_error(data)


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=8)
    | st.text(max_size=4)
    | st.floats(),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(codec.registered_types())), st.lists(_cbor_values, max_size=13))
def test_well_tagged_arrays_of_random_fields_raise_only_decode_error(
    tag: int, fields: list[Any]
) -> None:
    try:
        msg = from_wire([tag, *fields])
    except DecodeError:
        return
    assert type(msg) is codec.registered_types()[tag]

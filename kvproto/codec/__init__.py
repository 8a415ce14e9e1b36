"""Message codec: frozen dataclasses <-> compact CBOR arrays.

A message is encoded as the CBOR array ``[tag, field1, field2, ...]``: a
numeric type tag, then the dataclass fields in declaration order (never a map
of field names). One registry maps tags to classes: ``@wire(tag)`` for our
own classes, ``register(cls, tag)`` for classes defined elsewhere (so that
``raft.types`` stays free of CBOR).

Field types come from the dataclass type hints. Supported: ``int``, ``bool``,
``bytes``, ``str``, ``float``, ``IntEnum`` subclasses, ``NewType`` of those,
``X | None``, ``tuple[X, ...]``, fixed ``tuple[X, Y]``, a registered
dataclass and a union of registered dataclasses. A nested message is always
encoded as its own tagged array (even when the hint names one concrete
class): one byte per value buys a self-describing format in which unions of
messages (``RegionError | None``) need no special case. A field naming one
class holds exactly that class on the wire. Maps are not supported (no
message needs one yet). Arrays are positional with an exact arity, so both
ends must agree on every field list: there is no schema evolution yet.

Contracts:

* ``loads`` / ``from_wire`` / ``decode_cbor`` raise only ``DecodeError`` on
  any input: unknown tag, wrong arity, wrong field type (``bool`` is not an
  ``int``, ``bytes`` is not a ``str``), unknown enum value, CBOR semantic
  tags (datetime, bignum, shared references...), indefinite-length items,
  nesting deeper than ``MAX_DEPTH``, trailing bytes.
* Encoding trusts the value to match its annotations (mypy checks that) and
  does not re-validate, because it is on the hot path. A value that breaks
  them (a ``bool`` in an ``int`` field, an ``int`` outside the 64-bit range
  of CBOR's major types 0 and 1) is encoded anyway and refused by the
  receiver's decoder. ``EncodeError`` is raised for an unregistered message.
* For every value that matches its annotations, ``loads(dumps(v)) == v``.
* ``to_wire`` output is for ``encode_cbor`` (it may hold tuples and IntEnum
  members, which cbor2 encodes as arrays and ints); ``from_wire`` takes what
  ``decode_cbor`` returns (lists and plain ints) and refuses anything else.
* Per-class encoders and decoders are built once, on the first use of the
  codec after a registration; a type hint the codec cannot handle is a
  ``TypeError`` raised then (a bug in the message definition, found by the
  round-trip test that covers every registered type).

The modules, from the bottom up: `errors`; `cbor` (bytes <-> CBOR-ready
structures, the tag-refusing decoder); `registry` (tags <-> classes);
`fields` (per-class encoders and decoders built from type hints, and
`to_wire`); `messages` (`from_wire`, `dumps`, `loads`). Import the names
below from `kvproto.codec`.
"""

from __future__ import annotations

from kvproto.codec.cbor import (
    MAX_DEPTH,
    CborCost,
    CostLimitError,
    cbor_cost,
    decode_cbor,
    encode_cbor,
)
from kvproto.codec.errors import DecodeError, EncodeError

# _field_codec: for the tests of the type hints the codec refuses.
from kvproto.codec.fields import field_codec as _field_codec  # noqa: F401
from kvproto.codec.fields import to_wire
from kvproto.codec.messages import dumps, from_wire, loads
from kvproto.codec.registry import message_type, register, registered_types, tag_of, wire

__all__ = [
    "MAX_DEPTH",
    "CborCost",
    "CostLimitError",
    "DecodeError",
    "EncodeError",
    "cbor_cost",
    "decode_cbor",
    "dumps",
    "encode_cbor",
    "from_wire",
    "loads",
    "message_type",
    "register",
    "registered_types",
    "tag_of",
    "to_wire",
    "wire",
]

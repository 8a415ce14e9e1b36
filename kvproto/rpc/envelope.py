"""The RPC envelope: what travels in each frame of an RPC connection.

Every frame carries the CBOR array ``[kind, request_id, body]`` where `body`
is a registered message (see kvproto.codec):

* REQUEST  client -> server, ``request_id >= 1``, unique per connection;
* RESPONSE server -> client, the handler's answer to that request id;
* ERROR    server -> client, an `RpcError` instead of an answer;
* ONEWAY   client -> server, ``request_id == 0``, no answer;
* BATCH    either way, ``request_id == 0``, `body` a non-empty array of the
  envelopes above (never another BATCH) that one side made ready in one
  scheduler turn (kvproto.rpc.batching); each is handled as if it came in
  its own frame, in array order.

Envelope-level messages (`RpcError`, `Echo`) use tags 60..79, the block of
kvproto.rpc.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from kvproto.codec import DecodeError, decode_cbor, encode_cbor, to_wire, wire
from kvproto.frame import encode_frame

__all__ = [
    "Echo",
    "FrameKind",
    "RpcError",
    "RpcErrorCode",
    "decode_envelopes",
    "encode_envelope",
    "encode_inner",
]

# Request ids and every other int on the wire fit CBOR's native 64 bits.
_MAX_ID: Final = 2**64 - 1


class FrameKind(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    ERROR = 2
    ONEWAY = 3
    BATCH = 4


_KINDS: Final = {int(k): k for k in FrameKind}


class RpcErrorCode(IntEnum):
    # The server has no handler for this request type: nothing ran.
    UNKNOWN_MESSAGE = 1
    # The request's body did not decode as the message it claims to be:
    # nothing ran.
    BAD_REQUEST = 2
    # The handler raised, or its answer could not be encoded: it may have
    # done part of its work.
    INTERNAL = 3
    # The connection's role (`kvproto.rpc.auth`) may not send this message:
    # nothing ran.
    PERMISSION_DENIED = 4


@wire(60)
@dataclass(frozen=True, slots=True)
class RpcError:
    """The body of an ERROR frame."""

    # Named by its package, the owner of the tag block (see kvproto/__init__).
    __module__ = "kvproto.rpc"

    code: RpcErrorCode
    message: str


@wire(61)
@dataclass(frozen=True, slots=True)
class Echo:
    """A request answered with itself by servers that register
    `echo_handler`; used by tests and benchmarks."""

    __module__ = "kvproto.rpc"

    payload: bytes


def encode_inner(kind: FrameKind, request_id: int, msg: object) -> bytes:
    """The CBOR envelope of `msg`, unframed: what a frame's body or a BATCH
    array item is. EncodeError if `msg` is not a registered message."""
    return encode_cbor([kind, request_id, to_wire(msg)])


def encode_envelope(kind: FrameKind, request_id: int, msg: object, max_frame_size: int) -> bytes:
    """The frame (length prefix included) carrying `msg`; EncodeError if
    `msg` is not a registered message or the frame is too large."""
    return encode_frame(encode_inner(kind, request_id, msg), max_frame_size)


def decode_envelopes(frame: bytes) -> list[tuple[FrameKind, int, Any]]:
    """The envelopes a frame carries, in order: one, or those of a BATCH
    (each as kind, request id and undecoded body). DecodeError if any is
    malformed: the frame is then refused whole."""
    obj = decode_cbor(frame)
    if _is_batch(obj):
        items = obj[2]
        if type(items) is not list or not items:
            raise DecodeError("a BATCH envelope's body is not a non-empty array")
        return [_check(item, nested=True) for item in items]
    return [_check(obj, nested=False)]


def _is_batch(obj: Any) -> bool:
    # Exact types: True and 4.0 compare equal to ints but are not kinds.
    return (
        type(obj) is list
        and len(obj) == 3
        and type(obj[0]) is int
        and obj[0] == FrameKind.BATCH
        and type(obj[1]) is int
        and obj[1] == 0
    )


def _check(obj: Any, *, nested: bool) -> tuple[FrameKind, int, Any]:
    if type(obj) is not list or len(obj) != 3:
        raise DecodeError("envelope is not an array of 3")
    raw_kind, request_id, body = obj
    kind = _KINDS.get(raw_kind) if type(raw_kind) is int else None
    if kind is None or (nested and kind == FrameKind.BATCH):
        raise DecodeError(f"unknown frame kind {raw_kind!r}")
    if type(request_id) is not int or not 0 <= request_id <= _MAX_ID:
        raise DecodeError(f"bad request id {request_id!r}")
    if (request_id == 0) != (kind in (FrameKind.ONEWAY, FrameKind.BATCH)):
        raise DecodeError(f"request id {request_id} is not valid for {kind.name}")
    return kind, request_id, body

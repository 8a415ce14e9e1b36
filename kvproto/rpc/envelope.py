"""The RPC envelope: what travels in each frame of an RPC connection.

Every frame carries the CBOR array ``[kind, request_id, body]`` where `body`
is a registered message (see kvproto.codec):

* REQUEST  client -> server, ``request_id >= 1``, unique per connection;
* RESPONSE server -> client, the handler's answer to that request id;
* ERROR    server -> client, an `RpcError` instead of an answer;
* ONEWAY   client -> server, ``request_id == 0``, no answer.

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
    "decode_envelope",
    "encode_envelope",
]

# Request ids and every other int on the wire fit CBOR's native 64 bits.
_MAX_ID: Final = 2**64 - 1


class FrameKind(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    ERROR = 2
    ONEWAY = 3


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


def encode_envelope(kind: FrameKind, request_id: int, msg: object, max_frame_size: int) -> bytes:
    """The frame (length prefix included) carrying `msg`; EncodeError if
    `msg` is not a registered message or the frame is too large."""
    return encode_frame(encode_cbor([kind, request_id, to_wire(msg)]), max_frame_size)


def decode_envelope(frame: bytes) -> tuple[FrameKind, int, Any]:
    """The kind, request id and (undecoded) body of a frame; DecodeError if
    the envelope is malformed."""
    obj = decode_cbor(frame)
    if type(obj) is not list or len(obj) != 3:
        raise DecodeError("envelope is not an array of 3")
    raw_kind, request_id, body = obj
    kind = _KINDS.get(raw_kind) if type(raw_kind) is int else None
    if kind is None:
        raise DecodeError(f"unknown frame kind {raw_kind!r}")
    if type(request_id) is not int or not 0 <= request_id <= _MAX_ID:
        raise DecodeError(f"bad request id {request_id!r}")
    if (request_id == 0) != (kind == FrameKind.ONEWAY):
        raise DecodeError(f"request id {request_id} is not valid for {kind.name}")
    return kind, request_id, body

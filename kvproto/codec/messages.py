"""Messages <-> bytes: `dumps` and `loads`, and `from_wire`, the decoder of
any registered message (its counterpart `to_wire` is in kvproto.codec.fields).
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

from kvproto.codec.cbor import decode_cbor, encode_cbor
from kvproto.codec.errors import DecodeError, describe_value
from kvproto.codec.fields import build_pending, to_wire
from kvproto.codec.registry import decoder_of, pending, tag_class

__all__ = ["dumps", "from_wire", "loads"]

T = TypeVar("T")


@overload
def from_wire(obj: object) -> object: ...
@overload
def from_wire(obj: object, expected: type[T]) -> T: ...
def from_wire(obj: object, expected: type[Any] | None = None) -> object:
    """The message a structure returned by `decode_cbor` encodes; raises
    only DecodeError. With `expected`, another message type is one too.
    """
    if pending:
        build_pending()
    try:
        msg = _decode_message(obj)
    except DecodeError:
        raise
    except Exception as e:
        # Our validation raises DecodeError itself; this is the last line of
        # the "never anything else" contract (e.g. a __post_init__ check of
        # some message, or a bug here).
        raise DecodeError(f"invalid message: {e!r}") from e
    if expected is not None and type(msg) is not expected:
        raise DecodeError(f"expected {expected.__qualname__}, got {type(msg).__qualname__}")
    return msg


def dumps(msg: object) -> bytes:
    """The CBOR bytes of a registered message."""
    return encode_cbor(to_wire(msg))


@overload
def loads(data: bytes | bytearray | memoryview) -> object: ...
@overload
def loads(data: bytes | bytearray | memoryview, expected: type[T]) -> T: ...
def loads(data: bytes | bytearray | memoryview, expected: type[Any] | None = None) -> object:
    """The message encoded in `data` (exactly one CBOR item); raises only
    DecodeError."""
    if expected is None:
        return from_wire(decode_cbor(data))
    return from_wire(decode_cbor(data), expected)


def _decode_message(obj: object) -> object:
    if type(obj) is not list or not obj:
        raise DecodeError(f"expected a message array, got {describe_value(obj)}")
    tag = obj[0]
    if type(tag) is not int:
        raise DecodeError(f"expected an int message tag, got {describe_value(tag)}")
    try:
        decode = decoder_of[tag]
    except KeyError:
        raise DecodeError(f"unknown message tag {tag}") from None
    try:
        return decode(obj)
    except DecodeError as e:
        e.path = f"{tag_class[tag].__qualname__}{e.path}"
        raise

"""The CBOR layer: bytes <-> CBOR-ready structures, nothing of messages.

`decode_cbor` accepts exactly one untagged, definite-length item nested at
most `MAX_DEPTH` deep, and raises only DecodeError: cbor2's built-in tag
decoders never run (every semantic tag is refused), and each thread keeps
one decoder (building one costs about as much as decoding a small frame).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import cbor2

from kvproto.codec.errors import DecodeError, EncodeError

__all__ = ["MAX_DEPTH", "decode_cbor", "encode_cbor"]

# Deepest container nesting accepted from the wire. Our deepest message (an
# RPC envelope around EpochNotMatch -> Region -> peers -> Peer) is under 10;
# the bound keeps hostile input far from Python's recursion limit.
MAX_DEPTH: Final = 64


def encode_cbor(obj: object) -> bytes:
    """CBOR bytes of an already CBOR-ready structure (an RPC envelope)."""
    try:
        data: bytes = cbor2.dumps(obj)
    except Exception as e:
        raise EncodeError(f"cannot encode as CBOR: {e}") from e
    return data


class _RefuseTags(Mapping[int, Callable[..., Any]]):
    """A `semantic_decoders` mapping that claims every tag, so that cbor2's
    built-in tag decoders never run: bigfloats with huge exponents, shared
    references building cyclic lists, regexes, MIME parsing and datetimes
    are all attack surface, and our wire uses no tags at all."""

    def __getitem__(self, tag: int) -> Callable[..., Any]:
        return _refuse_tag

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


class _TagRefused(Exception):
    pass


def _refuse_tag(*args: object) -> Any:
    raise _TagRefused("CBOR semantic tags are not allowed")


_REFUSE_TAGS: Final = _RefuseTags()


_local = threading.local()


def _decoder() -> Any:
    """This thread's decoder (building one costs about as much as decoding a
    small frame, so each thread keeps one; a decoder that failed is dropped)."""
    dec = getattr(_local, "decoder", None)
    if dec is None:
        dec = cbor2.CBORDecoder(
            io.BytesIO(b""),
            tag_hook=_refuse_tag,
            semantic_decoders=_REFUSE_TAGS,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            strict_hashable_types=True,
        )
        _local.decoder = dec
    return dec


def decode_cbor(data: bytes | bytearray | memoryview) -> Any:
    """Decode exactly one untagged, definite-length CBOR item (lists, not
    tuples); raises only DecodeError."""
    fp = io.BytesIO(data)
    dec = _decoder()
    try:
        dec.fp = fp
        obj = dec.decode()
    except Exception as e:
        # cbor2 raises CBORDecodeError for most bad input but also
        # ValueError, OverflowError, MemoryError or RecursionError on hostile
        # input; none of them may escape. The decoder may hold state from
        # the half-decoded item: start the next decode with a fresh one.
        _local.decoder = None
        raise DecodeError(f"bad CBOR: {e}") from e
    # The C decoder does not read ahead on a BytesIO, so its position is
    # exactly the end of the item (the test suite checks this still holds).
    end = fp.tell()
    if fp.read(1):
        raise DecodeError(f"{fp.getbuffer().nbytes - end} trailing bytes after the CBOR item")
    return obj

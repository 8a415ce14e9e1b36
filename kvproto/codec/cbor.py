"""The CBOR layer: bytes <-> CBOR-ready structures, nothing of messages.

`decode_cbor` accepts exactly one untagged, definite-length item nested at
most `MAX_DEPTH` deep, and raises only DecodeError: cbor2's built-in tag
decoders never run (every semantic tag is refused), and each thread keeps
one decoder (building one costs about as much as decoding a small frame).

`cbor_cost` walks an item without building it: its items and the bytes of
the Python objects `decode_cbor` would build, estimated, so that a receiver
can refuse a frame whose decoding would cost far more than its size (an
array of a million empty arrays is 1 MB on the wire and 64 MB decoded)
before spending that memory and time.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, NamedTuple

import cbor2

from kvproto.codec.errors import DecodeError, EncodeError

__all__ = ["MAX_DEPTH", "CborCost", "CostLimitError", "cbor_cost", "decode_cbor", "encode_cbor"]

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


class CostLimitError(DecodeError):
    """`cbor_cost` stopped at its budget: `over_items` tells which, the
    items (else the memory)."""

    def __init__(self, reason: str, *, over_items: bool) -> None:
        super().__init__(reason)
        self.over_items = over_items


class CborCost(NamedTuple):
    """What decoding an item costs: its `items` (every int, string, array,
    simple value, map key and value counts one) and `memory`, the bytes of
    the Python objects `decode_cbor` builds, estimated from above."""

    items: int
    memory: int


_U16: Final = struct.Struct(">H").unpack_from
_U32: Final = struct.Struct(">I").unpack_from
_U64: Final = struct.Struct(">Q").unpack_from
_ARG_BYTES: Final = {24: 1, 25: 2, 26: 4, 27: 8}


def _list_slots(n: int) -> int:
    """The slots of a list grown to `n` items by appends (CPython 3.11's
    list_resize), as cbor2 builds an array."""
    slots = 0
    for size in range(1, n + 1):
        if size > slots:
            slots = (size + (size >> 3) + 6) & ~3
    return slots


# Exact for short arrays (most of a dense frame's); above, a bound.
_EXACT_SLOTS: Final = 256
_SLOTS: Final = tuple(_list_slots(n) for n in range(_EXACT_SLOTS))


def cbor_cost(data: bytes | bytearray | memoryview, *, max_items: int, max_memory: int) -> CborCost:
    """The cost of decoding the one CBOR item in `data`, found without
    building it; DecodeError as soon as it exceeds `max_items` or
    `max_memory` (so the walk itself is bounded by the budget, not by the
    item; CostLimitError), and for what `decode_cbor` would refuse anyway for its shape: a
    tag, an indefinite length, a reserved value, nesting deeper than
    `MAX_DEPTH`, a string or an array longer than the bytes left, trailing
    bytes. (It does not look inside strings: UTF-8 errors are the decoder's.)

    The memory model is CPython 3.11's on 64 bits, as cbor2 builds objects:
    an array of n items 56 bytes plus 8 per slot of a list grown by appends
    (4 slots up to 4 items, about n + n/8 + 6 above), an int outside the
    cached -5..256 32, a float 24, bytes 33 plus their length, a string 74
    plus its length (the largest header of a compact str, and at most one
    byte per UTF-8 byte), a map 232 plus 48 per pair; true, false, null,
    b"", "" and the cached ints 0 (their slot is counted by their
    container). Pure Python, about 0.2 us per item: for a large frame, run
    it in a worker thread.
    """
    view = data if isinstance(data, bytes) else bytes(data)
    end = len(view)
    pos = 0
    items = 0
    memory = 0
    left = 1  # items still to read in the innermost open container
    stack: list[int] = []  # the `left` of the containers around it
    while True:
        while not left:
            if not stack:
                if pos != end:
                    raise DecodeError(f"{end - pos} trailing bytes after the CBOR item")
                return CborCost(items, memory)
            left = stack.pop()
        left -= 1
        if pos >= end:
            raise DecodeError("premature end of the CBOR item")
        head = view[pos]
        pos += 1
        major = head >> 5
        arg = head & 31
        if arg >= 24:
            size = _ARG_BYTES.get(arg)
            if size is None:
                raise DecodeError(
                    f"indefinite length or reserved value (initial byte 0x{head:02x})"
                )
            if pos + size > end:
                raise DecodeError("premature end of the CBOR item")
            if size == 1:
                arg = view[pos]
            elif size == 2:
                (arg,) = _U16(view, pos)
            elif size == 4:
                (arg,) = _U32(view, pos)
            else:
                (arg,) = _U64(view, pos)
            pos += size
        items += 1
        if major == 4:  # array
            if arg > end - pos:
                raise DecodeError(f"an array of {arg} items in {end - pos} bytes")
            memory += 56 + 8 * (_SLOTS[arg] if arg < _EXACT_SLOTS else arg + (arg >> 3) + 6)
            if arg:
                if len(stack) >= MAX_DEPTH:
                    raise DecodeError(f"CBOR nested deeper than {MAX_DEPTH}")
                stack.append(left)
                left = arg
        elif major <= 1:  # unsigned and negative ints
            if arg > 255:
                memory += 32
        elif major <= 3:  # byte and text strings
            if arg > end - pos:
                raise DecodeError(f"a string of {arg} bytes in {end - pos} bytes")
            pos += arg
            if arg:  # b"" and "" are shared
                memory += (33 if major == 2 else 74) + arg
        elif major == 7:  # simple values and floats
            info = head & 31
            if info > 24:
                memory += 24  # a float
            elif info < 20 or info == 24:
                memory += 48  # a CBORSimpleValue (false, true, null, undefined: 0)
        elif major == 5:  # map
            if arg > (end - pos) // 2:
                raise DecodeError(f"a map of {arg} pairs in {end - pos} bytes")
            memory += 232 + 48 * arg if arg else 64
            if arg:
                if len(stack) >= MAX_DEPTH:
                    raise DecodeError(f"CBOR nested deeper than {MAX_DEPTH}")
                stack.append(left)
                left = 2 * arg
        else:
            raise DecodeError("CBOR semantic tags are not allowed")
        if items > max_items:
            raise CostLimitError(
                f"decoding would cost too much: more than {max_items:,} items (the limit)",
                over_items=True,
            )
        if memory > max_memory:
            raise CostLimitError(
                f"decoding would cost too much: {memory:,} bytes of objects or more "
                f"(the limit is {max_memory:,})",
                over_items=False,
            )

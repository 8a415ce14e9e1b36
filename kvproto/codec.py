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
"""

from __future__ import annotations

import dataclasses
import enum
import io
import threading
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from operator import attrgetter, itemgetter
from typing import Any, Final, NewType, TypeVar, overload

import cbor2

__all__ = [
    "MAX_DEPTH",
    "DecodeError",
    "EncodeError",
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

# Deepest container nesting accepted from the wire. Our deepest message (an
# RPC envelope around EpochNotMatch -> Region -> peers -> Peer) is under 10;
# the bound keeps hostile input far from Python's recursion limit.
MAX_DEPTH: Final = 64

T = TypeVar("T")
C = TypeVar("C", bound=type)

_Decoder = Callable[[Any], Any]
_Encoder = Callable[[Any], Any]


class DecodeError(Exception):
    """Bytes or a wire structure that is not a valid message.

    ``reason`` says what is wrong, ``path`` where (``"Message.entries[3].term"``).
    """

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class EncodeError(TypeError):
    """A value that cannot be put on the wire (not a registered message)."""


# --------------------------------------------------------------------------
# Registry. Tags are allocated per module (see kvproto/__init__.py) and are
# part of the wire format: never reused, never renumbered.

_classes: dict[int, type] = {}
_tags: dict[type, int] = {}
_pending: list[type] = []
# Filled by _build_pending. Top-level dispatch reads these dicts; a field
# naming one concrete class calls that class's _Codec directly.
_encoders: dict[type, _Encoder] = {}
_decoders: dict[int, _Decoder] = {}


@dataclasses.dataclass(slots=True)
class _Codec:
    encode: _Encoder
    decode: _Decoder


def _unbuilt(value: Any) -> Any:
    raise AssertionError("codec used before it was built")


_codecs: dict[type, _Codec] = {}


def register(cls: C, tag: int) -> C:
    """Register the frozen dataclass `cls` under `tag` (an int >= 1).

    Raises TypeError if `cls` is not a dataclass, or if the tag or the class
    is already registered. Returns `cls`.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    if type(tag) is not int or tag < 1:
        raise TypeError(f"message tag must be an int >= 1, got {tag!r}")
    if tag in _classes:
        raise TypeError(f"tag {tag} is taken by {_classes[tag].__qualname__}")
    if cls in _tags:
        raise TypeError(f"{cls.__qualname__} is already registered as {_tags[cls]}")
    _classes[tag] = cls
    _tags[cls] = tag
    _codecs[cls] = _Codec(_unbuilt, _unbuilt)
    _pending.append(cls)
    return cls


def wire(tag: int) -> Callable[[C], C]:
    """Class decorator form of `register`: ``@wire(20)`` above the dataclass."""

    def decorate(cls: C) -> C:
        return register(cls, tag)

    return decorate


def registered_types() -> dict[int, type]:
    """A copy of the registry, tag -> class, in tag order."""
    return dict(sorted(_classes.items()))


def tag_of(cls: type) -> int:
    """The tag of a registered class; KeyError if it is not registered."""
    return _tags[cls]


def message_type(obj: object) -> type | None:
    """The registered class a wire structure claims to be by its tag, without
    validating anything else; None if it has no known tag."""
    if type(obj) is list and obj and type(obj[0]) is int:
        return _classes.get(obj[0])
    return None


# --------------------------------------------------------------------------
# Public encode / decode.


def to_wire(msg: object) -> list[Any]:
    """The CBOR-ready structure of a registered message (nested arrays, as
    lists or tuples); EncodeError if it is not a registered message."""
    try:
        encode = _encoders[type(msg)]
    except KeyError:
        _build_pending()
        try:
            encode = _encoders[type(msg)]
        except KeyError:
            raise EncodeError(f"{type(msg).__qualname__} is not a registered message") from None
    result: list[Any] = encode(msg)
    return result


@overload
def from_wire(obj: object) -> object: ...
@overload
def from_wire(obj: object, expected: type[T]) -> T: ...
def from_wire(obj: object, expected: type[Any] | None = None) -> object:
    """The message a structure returned by `decode_cbor` encodes; raises
    only DecodeError. With `expected`, another message type is one too.
    """
    if _pending:
        _build_pending()
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


# --------------------------------------------------------------------------
# Decoding dispatch.


def _decode_message(obj: object) -> object:
    if type(obj) is not list or not obj:
        raise DecodeError(f"expected a message array, got {_describe(obj)}")
    tag = obj[0]
    if type(tag) is not int:
        raise DecodeError(f"expected an int message tag, got {_describe(tag)}")
    try:
        decode = _decoders[tag]
    except KeyError:
        raise DecodeError(f"unknown message tag {tag}") from None
    try:
        return decode(obj)
    except DecodeError as e:
        e.path = f"{_classes[tag].__qualname__}{e.path}"
        raise


def _describe(obj: object) -> str:
    if isinstance(obj, list):
        return f"array of {len(obj)}"
    return type(obj).__name__


# --------------------------------------------------------------------------
# Building per-class codecs from type hints.


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldCodec:
    """How one type hint travels.

    `exact` is the one Python type the decoded CBOR value must have for the
    batched type check of a class decoder; `convert` (if any) then turns it
    into the field value. `decode` is the standalone validating decoder used
    inside containers. `encode` is None when cbor2 takes the value as is.
    """

    describe: str
    exact: type | None
    convert: _Decoder | None
    decode: _Decoder
    encode: _Encoder | None
    # For a field naming one message class: its tag and class decoder, so a
    # tuple of them can dispatch inline (the hot path of raft entries).
    message: tuple[int, _Decoder] | None = None


_building: set[type] = set()


def _build_pending() -> None:
    while _pending:
        _build(_pending[0])


def _build(cls: type) -> None:
    # Classes named by fields are built first, so that their encoder and
    # decoder can be called directly; a cycle falls back to the indirection
    # through _Codec (see _one_message_codec).
    if cls not in _pending or cls in _building:
        return
    _building.add(cls)
    try:
        encode, decode = _build_class(cls)
    finally:
        _building.discard(cls)
    codec = _codecs[cls]
    codec.encode = _encoders[cls] = encode
    codec.decode = _decoders[_tags[cls]] = decode
    _pending.remove(cls)


def _build_class(cls: type) -> tuple[_Encoder, _Decoder]:
    tag = _tags[cls]
    name = cls.__qualname__
    try:
        hints = typing.get_type_hints(cls)
    except Exception as e:
        raise TypeError(f"{name}: cannot resolve type hints: {e}") from e
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = tuple(f.name for f in fields)
    codecs = tuple(_field_codec(hints[n], f"{name}.{n}") for n in names)
    return _class_encoder(tag, names, codecs), _class_decoder(cls, names, codecs)


def _class_encoder(tag: int, names: tuple[str, ...], codecs: tuple[_FieldCodec, ...]) -> _Encoder:
    if not names:
        return lambda v: [tag]
    if len(names) == 1:
        only = names[0]
        enc = codecs[0].encode
        if enc is None:
            return lambda v: [tag, getattr(v, only)]
        return lambda v: [tag, enc(getattr(v, only))]
    get_all = attrgetter(*names)
    # Positions in the output list (the tag is at 0).
    conversions = tuple((i + 1, c.encode) for i, c in enumerate(codecs) if c.encode is not None)
    if not conversions:
        return lambda v: [tag, *get_all(v)]

    def encode(v: Any) -> list[Any]:
        out = [tag, *get_all(v)]
        for i, conv in conversions:
            out[i] = conv(out[i])
        return out

    return encode


def _class_decoder(cls: type, names: tuple[str, ...], codecs: tuple[_FieldCodec, ...]) -> _Decoder:
    """The decoder of one class, for an array whose tag was already matched.

    Most fields have one exact CBOR type (int, bytes, an enum's int...): a
    single C-level comparison of ``tuple(map(type, ...))`` checks them all,
    and only the rest are converted one by one. Errors are found again on a
    slow path to name the field.
    """
    arity = len(names) + 1
    name = cls.__qualname__
    checked = tuple(i for i, c in enumerate(codecs) if c.exact is not None)
    exact = tuple(codecs[i].exact for i in checked)
    # Field index -> converter; enum converters are dict lookups raising
    # KeyError, the others raise DecodeError themselves.
    conversions: tuple[tuple[int, _Decoder], ...] = tuple(
        (i, c.decode if c.convert is None else c.convert)
        for i, c in enumerate(codecs)
        if c.exact is None or c.convert is not None
    )

    def diagnose(obj: list[Any]) -> DecodeError:
        if len(obj) != arity:
            return DecodeError(f"expected {arity - 1} fields, got {len(obj) - 1}")
        for i in checked:
            value = obj[i + 1]
            if type(value) is not codecs[i].exact:
                return DecodeError(
                    f"expected {codecs[i].describe}, got {_describe(value)}", f".{names[i]}"
                )
        raise AssertionError("diagnose called on a valid array")

    all_exact = len(checked) == len(names)
    signature = (int, *exact)  # the tag, then every field (when all_exact)
    pick: Callable[[tuple[type, ...]], tuple[type, ...]]
    if len(checked) > 1:
        pick = itemgetter(*(i + 1 for i in checked))
    elif len(checked) == 1:
        only = checked[0] + 1
        pick = lambda types: (types[only],)  # noqa: E731
    else:
        pick = lambda types: ()  # noqa: E731

    def decode(obj: list[Any]) -> Any:
        types = tuple(map(type, obj))
        if types != signature if all_exact else (len(types) != arity or pick(types) != exact):
            raise diagnose(obj)
        args = obj[1:]
        if conversions:
            i = -1
            try:
                for i, conv in conversions:
                    args[i] = conv(args[i])
            except KeyError:
                raise DecodeError(
                    f"{args[i]} is not a {codecs[i].describe} value", f".{names[i]}"
                ) from None
            except DecodeError as e:
                e.path = f".{names[i]}{e.path}"
                raise
        try:
            return cls(*args)
        except Exception as e:
            # A __post_init__ check refusing the values.
            raise DecodeError(f"{name} refused its fields: {e}") from e

    return decode


_SCALARS: Final[dict[type, str]] = {
    int: "int",
    bool: "bool",
    bytes: "bytes",
    str: "str",
    float: "float",
}


def _field_codec(hint: Any, where: str) -> _FieldCodec:
    if isinstance(hint, NewType):
        return _field_codec(hint.__supertype__, where)
    if isinstance(hint, type):
        if hint in _SCALARS:
            return _scalar_codec(hint)
        if issubclass(hint, enum.IntEnum):
            return _enum_codec(hint)
        if hint in _tags:
            return _one_message_codec(hint)
        raise TypeError(f"{where}: unsupported type {hint!r} (not a registered message?)")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in args if a is not type(None)]
        if len(members) == len(args) - 1:
            inner = _field_codec(members[0] if len(members) == 1 else _union(members), where)
            return _optional_codec(inner)
        if all(isinstance(m, type) and m in _tags for m in members):
            return _message_codec(tuple(members))
        raise TypeError(f"{where}: unsupported union {hint!r} (only X | None or of messages)")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _var_tuple_codec(_field_codec(args[0], f"{where}[]"))
        return _fixed_tuple_codec(tuple(_field_codec(a, f"{where}[]") for a in args))
    raise TypeError(f"{where}: unsupported type hint {hint!r}")


def _union(members: list[Any]) -> Any:
    union: Any = members[0]
    for m in members[1:]:
        union = union | m
    return union


def _scalar_codec(t: type) -> _FieldCodec:
    describe = _SCALARS[t]

    def decode(value: Any) -> Any:
        if type(value) is not t:
            raise DecodeError(f"expected {describe}, got {_describe(value)}")
        return value

    return _FieldCodec(describe, t, None, decode, None)


def _enum_codec(t: type[enum.IntEnum]) -> _FieldCodec:
    members: dict[int, enum.IntEnum] = {int(m): m for m in t}
    describe = t.__name__

    def decode(value: Any) -> enum.IntEnum:
        if type(value) is not int:
            raise DecodeError(f"expected {describe}, got {_describe(value)}")
        try:
            return members[value]
        except KeyError:
            raise DecodeError(f"{value} is not a {describe} value") from None

    # In a class decoder the type is already checked and KeyError handled.
    return _FieldCodec(describe, int, members.__getitem__, decode, None)


def _message_codec(classes: tuple[type, ...]) -> _FieldCodec:
    allowed = frozenset(_tags[c] for c in classes)
    describe = " | ".join(c.__qualname__ for c in classes)

    def decode(value: Any) -> Any:
        if type(value) is list and value and type(value[0]) is int and value[0] in allowed:
            return _decoders[value[0]](value)
        got = message_type(value)
        raise DecodeError(
            f"expected {describe}, got {got.__qualname__ if got else _describe(value)}"
        )

    return _FieldCodec(describe, None, None, decode, to_wire)


def _one_message_codec(cls: type) -> _FieldCodec:
    # A field naming one class holds exactly that class (its encoder is used
    # for the value whatever its runtime type, so a subclass travels as the
    # base class).
    tag = _tags[cls]
    codec = _codecs[cls]
    describe = cls.__qualname__
    _build(cls)
    encode: _Encoder
    decode_one: _Decoder
    if cls in _pending:  # a cycle back to a class being built
        encode = lambda v: codec.encode(v)  # noqa: E731
        decode_one = lambda v: codec.decode(v)  # noqa: E731
    else:
        encode, decode_one = codec.encode, codec.decode

    def decode(value: Any) -> Any:
        if type(value) is list and value and type(value[0]) is int and value[0] == tag:
            return decode_one(value)
        got = message_type(value)
        raise DecodeError(
            f"expected {describe}, got {got.__qualname__ if got else _describe(value)}"
        )

    return _FieldCodec(describe, None, None, decode, encode, (tag, decode_one))


def _optional_codec(inner: _FieldCodec) -> _FieldCodec:
    inner_decode = inner.decode
    inner_encode = inner.encode

    def decode(value: Any) -> Any:
        return None if value is None else inner_decode(value)

    encode: _Encoder | None = None
    if inner_encode is not None:
        encode = lambda v: None if v is None else inner_encode(v)  # noqa: E731
    return _FieldCodec(f"{inner.describe} | None", None, None, decode, encode)


def _var_tuple_codec(item: _FieldCodec) -> _FieldCodec:
    describe = f"tuple[{item.describe}, ...]"
    item_decode = item.decode
    item_encode = item.encode

    def locate(value: list[Any]) -> DecodeError:
        # Slow path: re-run item by item to name the failing index.
        for k, x in enumerate(value):
            try:
                item_decode(x)
            except DecodeError as e:
                e.path = f"[{k}]{e.path}"
                return e
        raise AssertionError("locate called on valid items")

    decode: _Decoder
    if item.exact is not None and item.convert is None:
        exact_set = {item.exact}

        def decode(value: Any) -> Any:
            if type(value) is not list:
                raise DecodeError(f"expected {describe}, got {_describe(value)}")
            if value and set(map(type, value)) != exact_set:
                raise locate(value)
            return tuple(value)

    elif item.message is not None:
        tag, decode_one = item.message

        def decode(value: Any) -> Any:
            if type(value) is not list:
                raise DecodeError(f"expected {describe}, got {_describe(value)}")
            try:
                return tuple(
                    [
                        decode_one(x)
                        if type(x) is list and x and type(x[0]) is int and x[0] == tag
                        else item_decode(x)  # raises the right error
                        for x in value
                    ]
                )
            except DecodeError:
                raise locate(value) from None

    else:

        def decode(value: Any) -> Any:
            if type(value) is not list:
                raise DecodeError(f"expected {describe}, got {_describe(value)}")
            try:
                return tuple([item_decode(x) for x in value])
            except DecodeError:
                raise locate(value) from None

    encode: _Encoder | None = None
    if item_encode is not None:
        encode = lambda v: [item_encode(x) for x in v]  # noqa: E731
    return _FieldCodec(describe, None, None, decode, encode)


def _fixed_tuple_codec(items: tuple[_FieldCodec, ...]) -> _FieldCodec:
    describe = f"tuple[{', '.join(i.describe for i in items)}]"
    n = len(items)

    def decode(value: Any) -> Any:
        if type(value) is not list or len(value) != n:
            raise DecodeError(f"expected {describe}, got {_describe(value)}")
        out = []
        for k, (codec, x) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(codec.decode(x))
            except DecodeError as e:
                e.path = f"[{k}]{e.path}"
                raise
        return tuple(out)

    encode: _Encoder | None = None
    if any(i.encode is not None for i in items):
        encoders = tuple(i.encode for i in items)

        def encode(v: Any) -> Any:
            return [x if e is None else e(x) for e, x in zip(encoders, v, strict=True)]

    return _FieldCodec(describe, None, None, decode, encode)

"""Per-class encoders and decoders, built from the dataclasses' type hints.

They are built once, on the first use of the codec after a registration
(`build_pending`): a type hint the codec cannot handle is a TypeError raised
then. Classes named by fields are built first, so that a class's encoder
and decoder call theirs directly.

`to_wire`, the encoder of any registered message, lives here because a
field holding a union of messages encodes through it.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import Any, Final, NewType

from kvproto.codec.errors import DecodeError, EncodeError, describe_value
from kvproto.codec.registry import (
    Decoder,
    Encoder,
    class_codecs,
    class_tag,
    decoder_of,
    encoder_of,
    message_type,
    pending,
)

__all__ = ["build_pending", "field_codec", "to_wire"]


def to_wire(msg: object) -> list[Any]:
    """The CBOR-ready structure of a registered message (nested arrays, as
    lists or tuples); EncodeError if it is not a registered message."""
    try:
        encode = encoder_of[type(msg)]
    except KeyError:
        build_pending()
        try:
            encode = encoder_of[type(msg)]
        except KeyError:
            raise EncodeError(f"{type(msg).__qualname__} is not a registered message") from None
    result: list[Any] = encode(msg)
    return result


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
    convert: Decoder | None
    decode: Decoder
    encode: Encoder | None
    # For a field naming one message class: its tag and class decoder, so a
    # tuple of them can dispatch inline (the hot path of raft entries).
    message: tuple[int, Decoder] | None = None


_building: set[type] = set()


def build_pending() -> None:
    while pending:
        _build(pending[0])


def _build(cls: type) -> None:
    # Classes named by fields are built first, so that their encoder and
    # decoder can be called directly; a cycle falls back to the indirection
    # through Codec (see _one_message_codec).
    if cls not in pending or cls in _building:
        return
    _building.add(cls)
    try:
        encode, decode = _build_class(cls)
    finally:
        _building.discard(cls)
    codec = class_codecs[cls]
    codec.encode = encoder_of[cls] = encode
    codec.decode = decoder_of[class_tag[cls]] = decode
    pending.remove(cls)


def _build_class(cls: type) -> tuple[Encoder, Decoder]:
    tag = class_tag[cls]
    name = cls.__qualname__
    try:
        hints = typing.get_type_hints(cls)
    except Exception as e:
        raise TypeError(f"{name}: cannot resolve type hints: {e}") from e
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = tuple(f.name for f in fields)
    codecs = tuple(field_codec(hints[n], f"{name}.{n}") for n in names)
    return _class_encoder(tag, names, codecs), _class_decoder(cls, names, codecs)


def _class_encoder(tag: int, names: tuple[str, ...], codecs: tuple[_FieldCodec, ...]) -> Encoder:
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


def _class_decoder(cls: type, names: tuple[str, ...], codecs: tuple[_FieldCodec, ...]) -> Decoder:
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
    conversions: tuple[tuple[int, Decoder], ...] = tuple(
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
                    f"expected {codecs[i].describe}, got {describe_value(value)}", f".{names[i]}"
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


def field_codec(hint: Any, where: str) -> _FieldCodec:
    if isinstance(hint, NewType):
        return field_codec(hint.__supertype__, where)
    if isinstance(hint, type):
        if hint in _SCALARS:
            return _scalar_codec(hint)
        if issubclass(hint, enum.IntEnum):
            return _enum_codec(hint)
        if hint in class_tag:
            return _one_message_codec(hint)
        raise TypeError(f"{where}: unsupported type {hint!r} (not a registered message?)")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in args if a is not type(None)]
        if len(members) == len(args) - 1:
            inner = field_codec(members[0] if len(members) == 1 else _union(members), where)
            return _optional_codec(inner)
        if all(isinstance(m, type) and m in class_tag for m in members):
            return _message_codec(tuple(members))
        raise TypeError(f"{where}: unsupported union {hint!r} (only X | None or of messages)")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _var_tuple_codec(field_codec(args[0], f"{where}[]"))
        return _fixed_tuple_codec(tuple(field_codec(a, f"{where}[]") for a in args))
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
            raise DecodeError(f"expected {describe}, got {describe_value(value)}")
        return value

    return _FieldCodec(describe, t, None, decode, None)


def _enum_codec(t: type[enum.IntEnum]) -> _FieldCodec:
    members: dict[int, enum.IntEnum] = {int(m): m for m in t}
    describe = t.__name__

    def decode(value: Any) -> enum.IntEnum:
        if type(value) is not int:
            raise DecodeError(f"expected {describe}, got {describe_value(value)}")
        try:
            return members[value]
        except KeyError:
            raise DecodeError(f"{value} is not a {describe} value") from None

    # In a class decoder the type is already checked and KeyError handled.
    return _FieldCodec(describe, int, members.__getitem__, decode, None)


def _message_codec(classes: tuple[type, ...]) -> _FieldCodec:
    allowed = frozenset(class_tag[c] for c in classes)
    describe = " | ".join(c.__qualname__ for c in classes)

    def decode(value: Any) -> Any:
        if type(value) is list and value and type(value[0]) is int and value[0] in allowed:
            return decoder_of[value[0]](value)
        got = message_type(value)
        raise DecodeError(
            f"expected {describe}, got {got.__qualname__ if got else describe_value(value)}"
        )

    return _FieldCodec(describe, None, None, decode, to_wire)


def _one_message_codec(cls: type) -> _FieldCodec:
    # A field naming one class holds exactly that class (its encoder is used
    # for the value whatever its runtime type, so a subclass travels as the
    # base class).
    tag = class_tag[cls]
    codec = class_codecs[cls]
    describe = cls.__qualname__
    _build(cls)
    encode: Encoder
    decode_one: Decoder
    if cls in pending:  # a cycle back to a class being built
        # Late binding on purpose: the class's codec is filled in once built.
        encode = lambda v: codec.encode(v)  # noqa: E731, PLW0108
        decode_one = lambda v: codec.decode(v)  # noqa: E731, PLW0108
    else:
        encode, decode_one = codec.encode, codec.decode

    def decode(value: Any) -> Any:
        if type(value) is list and value and type(value[0]) is int and value[0] == tag:
            return decode_one(value)
        got = message_type(value)
        raise DecodeError(
            f"expected {describe}, got {got.__qualname__ if got else describe_value(value)}"
        )

    return _FieldCodec(describe, None, None, decode, encode, (tag, decode_one))


def _optional_codec(inner: _FieldCodec) -> _FieldCodec:
    inner_decode = inner.decode
    inner_encode = inner.encode

    def decode(value: Any) -> Any:
        return None if value is None else inner_decode(value)

    encode: Encoder | None = None
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

    decode: Decoder
    if item.exact is not None and item.convert is None:
        exact_set = {item.exact}

        def decode(value: Any) -> Any:
            if type(value) is not list:
                raise DecodeError(f"expected {describe}, got {describe_value(value)}")
            if value and set(map(type, value)) != exact_set:
                raise locate(value)
            return tuple(value)

    elif item.message is not None:
        tag, decode_one = item.message

        def decode(value: Any) -> Any:
            if type(value) is not list:
                raise DecodeError(f"expected {describe}, got {describe_value(value)}")
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
                raise DecodeError(f"expected {describe}, got {describe_value(value)}")
            try:
                return tuple([item_decode(x) for x in value])
            except DecodeError:
                raise locate(value) from None

    encode: Encoder | None = None
    if item_encode is not None:
        encode = lambda v: [item_encode(x) for x in v]  # noqa: E731
    return _FieldCodec(describe, None, None, decode, encode)


def _fixed_tuple_codec(items: tuple[_FieldCodec, ...]) -> _FieldCodec:
    describe = f"tuple[{', '.join(i.describe for i in items)}]"
    n = len(items)

    def decode(value: Any) -> Any:
        if type(value) is not list or len(value) != n:
            raise DecodeError(f"expected {describe}, got {describe_value(value)}")
        out = []
        for k, (codec, x) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(codec.decode(x))
            except DecodeError as e:
                e.path = f"[{k}]{e.path}"
                raise
        return tuple(out)

    encode: Encoder | None = None
    if any(i.encode is not None for i in items):
        encoders = tuple(i.encode for i in items)

        def encode(v: Any) -> Any:
            return [x if e is None else e(x) for e, x in zip(encoders, v, strict=True)]

    return _FieldCodec(describe, None, None, decode, encode)

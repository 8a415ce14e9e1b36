"""Hypothesis strategies for registered messages, derived from type hints.

`message_strategy(cls)` builds values of any registered class from its
dataclass hints, the same hints the codec reads, so a message type added to
the registry later is covered without touching the tests.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, NewType

from hypothesis import strategies as st

from kvproto import codec

# The ints CBOR encodes natively (major types 0 and 1): the codec's range.
WIRE_INT = st.integers(min_value=-(2**64), max_value=2**64 - 1)

_cache: dict[type, st.SearchStrategy[Any]] = {}


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Values of the registered dataclass `cls` (recursive types allowed)."""
    if cls not in _cache:
        # Deferred so that a class may contain itself.
        _cache[cls] = st.deferred(lambda: _build(cls))
    return _cache[cls]


def any_message() -> st.SearchStrategy[Any]:
    return st.sampled_from(sorted(codec.registered_types().items())).flatmap(
        lambda item: message_strategy(item[1])
    )


def _build(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: hint_strategy(hints[f.name]) for f in dataclasses.fields(cls) if f.init}

    def construct(kwargs: dict[str, Any]) -> Any:
        # A class may refuse some field values in __post_init__; such draws
        # are dropped (hypothesis complains if too many are).
        try:
            return cls(**kwargs)
        except Exception:
            return _REFUSED

    return st.fixed_dictionaries(fields).map(construct).filter(lambda v: v is not _REFUSED)


_REFUSED = object()


def hint_strategy(hint: Any) -> st.SearchStrategy[Any]:
    if isinstance(hint, NewType):
        return hint_strategy(hint.__supertype__)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return WIRE_INT
    if hint is bytes:
        return st.binary(max_size=40)
    if hint is str:
        return st.text(max_size=20)
    if hint is float:
        # NaN never equals itself, so it cannot take part in an == round trip.
        return st.floats(allow_nan=False)
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return st.sampled_from(list(hint))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return message_strategy(hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return st.one_of([st.none() if a is type(None) else hint_strategy(a) for a in args])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(hint_strategy(args[0]), max_size=4).map(tuple)
        return st.tuples(*(hint_strategy(a) for a in args))
    raise TypeError(f"no strategy for {hint!r}")

"""The registry: which class travels under which tag.

One registry maps tags to classes: ``@wire(tag)`` for our own classes,
``register(cls, tag)`` for classes defined elsewhere (so that ``raft.types``
stays free of CBOR). Tags are allocated per module (see kvproto/__init__.py)
and are part of the wire format: never reused, never renumbered.

It also holds, for kvproto.codec.fields and kvproto.codec.messages, each
class's encoder and decoder once built (`class_codecs`, `encoder_of`,
`decoder_of`) and the classes registered since the last build (`pending`).
Outside kvproto.codec use the functions only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "Codec",
    "Decoder",
    "Encoder",
    "class_codecs",
    "class_tag",
    "decoder_of",
    "encoder_of",
    "message_type",
    "pending",
    "register",
    "registered_types",
    "tag_class",
    "tag_of",
    "wire",
]

C = TypeVar("C", bound=type)

Decoder = Callable[[Any], Any]
Encoder = Callable[[Any], Any]

tag_class: dict[int, type] = {}
class_tag: dict[type, int] = {}
pending: list[type] = []
# Filled by build_pending. Top-level dispatch reads these dicts; a field
# naming one concrete class calls that class's Codec directly.
encoder_of: dict[type, Encoder] = {}
decoder_of: dict[int, Decoder] = {}


@dataclasses.dataclass(slots=True)
class Codec:
    encode: Encoder
    decode: Decoder


def _unbuilt(value: Any) -> Any:
    raise AssertionError("codec used before it was built")


class_codecs: dict[type, Codec] = {}


def register(cls: C, tag: int) -> C:
    """Register the frozen dataclass `cls` under `tag` (an int >= 1).

    Raises TypeError if `cls` is not a dataclass, or if the tag or the class
    is already registered. Returns `cls`.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    if type(tag) is not int or tag < 1:
        raise TypeError(f"message tag must be an int >= 1, got {tag!r}")
    if tag in tag_class:
        raise TypeError(f"tag {tag} is taken by {tag_class[tag].__qualname__}")
    if cls in class_tag:
        raise TypeError(f"{cls.__qualname__} is already registered as {class_tag[cls]}")
    tag_class[tag] = cls
    class_tag[cls] = tag
    class_codecs[cls] = Codec(_unbuilt, _unbuilt)
    pending.append(cls)
    return cls


def wire(tag: int) -> Callable[[C], C]:
    """Class decorator form of `register`: ``@wire(20)`` above the dataclass."""

    def decorate(cls: C) -> C:
        return register(cls, tag)

    return decorate


def registered_types() -> dict[int, type]:
    """A copy of the registry, tag -> class, in tag order."""
    return dict(sorted(tag_class.items()))


def tag_of(cls: type) -> int:
    """The tag of a registered class; KeyError if it is not registered."""
    return class_tag[cls]


def message_type(obj: object) -> type | None:
    """The registered class a wire structure claims to be by its tag, without
    validating anything else; None if it has no known tag."""
    if type(obj) is list and obj and type(obj[0]) is int:
        return tag_class.get(obj[0])
    return None

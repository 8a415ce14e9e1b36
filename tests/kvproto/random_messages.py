"""Seeded random messages of any registered type, and mutations of their
wire form, for the port fuzzers: the same walk over the dataclass type
hints as `strategies.py` (which builds hypothesis strategies), driven by a
`random.Random` so that a fuzz run replays from its seed.

Ints avoid the small positive values a test cluster's ids take (regions,
peers, stores count from 1), so that a random request never names a real
region by chance: what a fuzzer checks is that garbage is refused, not
that an unauthenticated client cannot write (it can).
"""

from __future__ import annotations

import dataclasses
import enum
import random
import types
import typing
from typing import Any, NewType

import kvproto.rpc  # noqa: F401  (registers the envelope messages)
from kvproto import codec, debugpb, kvrpcpb, pdpb, raft_cmdpb, raft_serverpb

# Every message module, so that `codec.registered_types()` holds them all.
MESSAGE_MODULES = (debugpb, kvrpcpb, pdpb, raft_cmdpb, raft_serverpb)

__all__ = ["MESSAGE_MODULES", "mutate_wire", "random_message", "random_wire_value"]

_EDGE_INTS = (0, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**64))


def _int(rng: random.Random) -> int:
    if rng.random() < 0.3:
        return rng.choice(_EDGE_INTS)
    return rng.randrange(2**32, 2**64)


def random_message(cls: type, rng: random.Random, depth: int = 0) -> Any:
    """A value of the registered dataclass `cls`, or None if the class
    refuses every draw tried (a __post_init__ check)."""
    hints = typing.get_type_hints(cls)
    for _ in range(5):
        fields = {
            f.name: _value(hints[f.name], rng, depth + 1) for f in dataclasses.fields(cls) if f.init
        }
        try:
            return cls(**fields)
        except Exception:
            continue
    return None


def _value(hint: Any, rng: random.Random, depth: int) -> Any:
    if isinstance(hint, NewType):
        return _value(hint.__supertype__, rng, depth)
    if hint is bool:
        return rng.random() < 0.5
    if hint is int:
        return _int(rng)
    if hint is bytes:
        return rng.randbytes(rng.randrange(0, 40))
    if hint is str:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 12)))
    if hint is float:
        return rng.choice([0.0, -1.0, 1e300, rng.uniform(-1e9, 1e9)])
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return rng.choice(list(hint))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return random_message(hint, rng, depth)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        if type(None) in args and (depth > 3 or rng.random() < 0.3):
            return None
        return _value(rng.choice(options), rng, depth)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            count = 0 if depth > 3 else rng.randrange(0, 4)
            return tuple(_value(args[0], rng, depth + 1) for _ in range(count))
        return tuple(_value(a, rng, depth + 1) for a in args)
    raise TypeError(f"no random value for {hint!r}")


def random_wire_value(rng: random.Random) -> Any:
    """A CBOR-ready value of any shape, for a field to hold instead."""
    return rng.choice(
        [
            lambda: _int(rng),
            lambda: rng.randbytes(rng.randrange(0, 20)),
            lambda: "x" * rng.randrange(0, 20),
            list,
            lambda: [_int(rng)],
            lambda: None,
            lambda: True,
            lambda: 1.5,
        ]
    )()


def mutate_wire(wire: list[Any] | tuple[Any, ...], rng: random.Random) -> list[Any]:
    """`wire` (a message's `to_wire` form, a tagged array) changed one way:
    another registered tag (wrong arity and types), a field dropped or
    added, a field of another type, or a nested message mutated."""
    wire = list(wire)
    how = rng.randrange(5)
    if how == 0:
        wire[0] = rng.choice(list(codec.registered_types()))
    elif how == 1 and len(wire) > 1:
        del wire[rng.randrange(1, len(wire))]
    elif how == 2:
        wire.insert(rng.randrange(1, len(wire) + 1), random_wire_value(rng))
    elif how == 3 and len(wire) > 1:
        wire[rng.randrange(1, len(wire))] = random_wire_value(rng)
    else:
        nested = [i for i, v in enumerate(wire) if isinstance(v, list | tuple) and v]
        if nested:
            i = rng.choice(nested)
            wire[i] = mutate_wire(list(wire[i]), rng)
        else:
            wire[0] = rng.randrange(0, 2**16)
    return wire

"""Argument checks (before anything is sent), and what a call is called in
its errors ("get b'k'", "batch_get of 3 keys b'a'..b'c'").

A wrong type raises TypeError; a value no store would accept raises
InvalidArgument (a value over the size limit: ValueTooLarge). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from client.errors import InvalidArgument, ValueTooLarge, describe_key, describe_range

__all__ = [
    "check_bytes",
    "check_key",
    "check_optional_value",
    "check_positive",
    "check_range",
    "check_value",
    "describe_call",
    "describe_group",
    "describe_keys",
    "describe_range_call",
]

T = TypeVar("T")


def check_bytes(what: str, name: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{what}: {name} must be bytes, not {type(value).__name__}")
    return value


def check_key(what: str, key: object) -> bytes:
    k = check_bytes(what, "key", key)
    if not k:
        raise InvalidArgument(what, "empty key")
    return k


def check_range(what: str, start: object, end: object) -> tuple[bytes, bytes]:
    s = check_bytes(what, "start", start)
    e = check_bytes(what, "end", end)
    if e and e < s:
        raise InvalidArgument(what, "end key is below start key")
    return s, e


def check_value(what: str, value: object, limit: int, name: str = "value") -> bytes:
    """A value (the argument `name`) of at most `limit` bytes (else
    ValueTooLarge)."""
    v = check_bytes(what, name, value)
    if len(v) > limit:
        label = name if name == "value" else f"{name} value"
        raise ValueTooLarge.of(what, label, len(v), limit)
    return v


def check_optional_value(what: str, name: str, value: object, limit: int) -> bytes | None:
    """None, or a value of at most `limit` bytes (else ValueTooLarge)."""
    return None if value is None else check_value(what, value, limit, name)


def check_positive(what: str, name: str, n: float) -> None:
    if not n > 0:  # NaN too
        raise InvalidArgument(what, f"{name} must be positive, got {n}")


def describe_call(op: str, key: object) -> str:
    """A one-key call: "get b'k'" (just the operation for a key of the
    wrong type, which the check then refuses)."""
    return f"{op} {describe_key(key)}" if isinstance(key, bytes) else op


def describe_range_call(op: str, start: object, end: object) -> str:
    if isinstance(start, bytes) and isinstance(end, bytes):
        return f"{op} {describe_range(start, end)}"
    return op


def describe_keys(op: str, keys: Sequence[bytes]) -> str:
    return describe_group(op, keys, _itself)


def describe_group(op: str, items: Sequence[T], key_of: Callable[[T], bytes]) -> str:
    """A call on sorted `items` (or a region's group of them)."""
    first = describe_key(key_of(items[0]))
    if len(items) == 1:
        return f"{op} {first}"
    return f"{op} of {len(items)} keys {first}..{describe_key(key_of(items[-1]))}"


def _itself(k: bytes) -> bytes:
    return k

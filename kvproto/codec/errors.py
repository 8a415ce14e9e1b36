"""The codec's errors, and how they name a value that came from the wire."""

from __future__ import annotations

__all__ = ["DecodeError", "EncodeError", "describe_value"]


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


def describe_value(obj: object) -> str:
    """A wire value as a DecodeError names it: "array of 3", "int", "bytes"."""
    if isinstance(obj, list):
        return f"array of {len(obj)}"
    return type(obj).__name__

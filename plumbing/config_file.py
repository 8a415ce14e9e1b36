"""Typed configuration from a TOML file and command-line flags.

A config is a frozen dataclass whose fields carry their help text and kind in
`field(metadata=...)` (see `setting`). `load` reads the TOML file, applies the
flags on top, converts and validates every value, and raises `ConfigError`
naming the key for anything unknown or malformed: a process refuses to start
rather than guess.

Kinds beyond the Python types: "duration" (seconds as a number, or text
like "100ms", "30s", "5m", "1h") and "size" (bytes as a number, or text like
"64KiB", "96MiB", "1GB"), read and written by `plumbing.units`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from plumbing.units import format_duration, format_size, parse_duration, parse_size

T = TypeVar("T")

# Longer integers in text are refused before int() parses them (no key
# takes one; Python itself refuses over 4,300 digits, with a hint that
# makes no sense to an operator).
_MAX_DIGITS = 40


class ConfigError(ValueError):
    """A config key or value that cannot be used (the message names it)."""


def setting(
    default: Any,
    help: str,
    *,
    kind: str | None = None,
    min: float | None = None,
    max: float | None = None,
    flag: bool = True,
    metavar: str | None = None,
) -> Any:
    """A config field: its default, help text, kind, bounds and (for --help)
    the name of its value."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "kind": kind,
            "min": min,
            "max": max,
            "flag": flag,
            "metavar": metavar,
        },
    )


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "on",
        "1",
        "false",
        "no",
        "off",
        "0",
    ):
        return value.lower() in ("true", "yes", "on", "1")
    raise ValueError(f"expected true or false, got {value!r}")


def _convert(hint: Any, kind: str | None, value: object) -> object:
    if kind == "duration":
        return parse_duration(value)
    if kind == "size":
        return parse_size(value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        if value is None or value == "":
            return None
        return _convert(inner[0], kind, value)
    if hint is bool:
        return _parse_bool(value)
    if hint is int:
        if isinstance(value, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            if len(value.strip()) > _MAX_DIGITS:
                raise ValueError(f"expected an integer, got one of {len(value.strip())} digits")
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected text, got {value!r}")
    if origin is tuple and args and args[-1] is Ellipsis and args[0] is str:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"expected a list of text, got {value!r}")
    if origin is tuple and args and args[-1] is Ellipsis:
        # (key, value) pairs such as labels: a TOML table or "k=v,k=v".
        if isinstance(value, dict):
            return tuple((str(k), str(v)) for k, v in value.items())
        if isinstance(value, str):
            pairs = []
            for part in filter(None, (p.strip() for p in value.split(","))):
                k, sep, v = part.partition("=")
                if not sep or not k:
                    raise ValueError(f"expected key=value pairs, got {value!r}")
                pairs.append((k.strip(), v.strip()))
            return tuple(pairs)
        raise ValueError(f"expected a table of key = value, got {value!r}")
    raise AssertionError(f"config type {hint!r} is not supported")


def read_toml(path: str) -> dict[str, Any]:
    """The top-level table of a TOML file; ConfigError if unreadable."""
    try:
        with open(path, "rb") as fp:
            return tomllib.load(fp)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def load(cls: type[T], path: str | None = None, overrides: Mapping[str, object] | None = None) -> T:
    """Build `cls` from defaults, then the TOML file at `path`, then
    `overrides` (flags). Raises ConfigError for unknown keys or bad values."""
    values: dict[str, object] = {}
    if path is not None:
        values.update(read_toml(path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"unknown config key {unknown[0]!r}{where}; known keys: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, object] = {}
    for name, raw in values.items():
        f = fields[name]
        kind = f.metadata.get("kind")
        try:
            v = _convert(hints[name], kind, raw)
        except (ValueError, OverflowError) as e:
            raise ConfigError(f"bad value for {name}: {_shorten(str(e), 200)}") from None
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            shown = _shorten(repr(raw))
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"bad value for {name}: {shown} is not a finite number")
            if lo is not None and v < lo:
                raise ConfigError(
                    f"bad value for {name}: {shown} is below the minimum {_bound(lo, kind)}"
                )
            if hi is not None and v > hi:
                raise ConfigError(
                    f"bad value for {name}: {shown} is above the maximum {_bound(hi, kind)}"
                )
        kwargs[name] = v
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg


def _shorten(text: str, limit: int = 60) -> str:
    """`text` cut to about `limit` characters: a config error may quote a
    value sent by anyone (a 5,000-digit number), and goes to logs and
    answers."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}...({len(text)} characters)"


def _bound(value: float, kind: str | None) -> str:
    """A min or max as the key's values are written ("1TiB", "10m")."""
    if kind == "size" and float(value).is_integer():
        return format_size(int(value))
    if kind == "duration":
        return format_duration(float(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag-name` per field (underscores become dashes), help and
    default taken from the field. Flags default to None: unset flags leave
    the TOML file or the default in force."""
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag", True):
            continue
        default = f.default
        if isinstance(default, tuple):
            default = ",".join("=".join(x) if isinstance(x, tuple) else str(x) for x in default)
        kind = f.metadata.get("kind")
        help_text = f.metadata.get("help", "")
        if default not in (None, "", dataclasses.MISSING):
            if kind == "size" and isinstance(default, int):
                default = format_size(default)
            elif kind == "duration" and isinstance(default, float):
                default = format_duration(default)
            help_text += f" (default: {default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.metadata.get("metavar") or _metavar(hints[f.name], kind),
            help=help_text,
        )


def _metavar(hint: Any, kind: str | None) -> str:
    if kind == "duration":
        return "DURATION"
    if kind == "size":
        return "SIZE"
    members = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and members:
        hint = members[0]
    names: dict[Any, str] = {bool: "BOOL", int: "N", float: "X", str: "TEXT"}
    return names.get(hint, "LIST")


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, object]:
    assert dataclasses.is_dataclass(cls)
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }


def describe(cfg: object) -> dict[str, object]:
    """The config as plain values, for logs and admin APIs."""
    assert dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def read_token_file(path: str, what: str = "token") -> str:
    """The secret token in the file at `path` (`what` names it in errors):
    its one line, surrounding whitespace such as the final newline dropped.
    ConfigError if the file cannot be read, is empty, or holds anything but
    one word of printable ASCII (a token travels in an HTTP header)."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the {what} file {path}: {e}") from None
    if not token:
        raise ConfigError(f"the {what} file {path} is empty")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise ConfigError(f"the {what} in {path} must be one word of printable ASCII (no spaces)")
    return token

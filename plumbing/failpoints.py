"""Named failpoints: faults a test or a chaos tool injects into a running
process, after TiKV's fail-rs.

Code that may fail declares a failpoint by name (`declare`) and asks for it
where the fault belongs::

    ENGINE_SYNC = failpoints.declare("engine.sync", "...", kinds=ERRORS)
    ...
    if failpoints.registry.active:
        failpoints.fire(ENGINE_SYNC)

`registry.active` is False until some failpoint is set, so a process that
never sets one pays a global and an attribute lookup per site.

Failpoints are set from the environment at process start
(``SHARDKV_FAILPOINTS="engine.sync=eio;disk.free=0"``, `configure_from_env`)
or at run time (`enable`, `disable`; the store's status port serves them
with ``--enable-failpoints``). The actions, as text:

* ``off``: nothing (the same as not set);
* ``error``, ``error(EIO)``, ``error(28)``, or an errno name alone (``eio``,
  ``enospc``): `fire` raises OSError with that errno (EIO by default);
* ``panic``: `fire` raises `FailpointPanic`, which nothing handles;
* ``return(VALUE)``, or a bare value (``0``, ``10MiB``): `value` gives VALUE
  to the code, which uses it instead of what it measured.

Every failpoint says which kinds it takes, and may check its value: a bad
spec is a `FailpointError` naming the failpoint and the reason, never a
half-applied setting. State is process-wide (fail-rs's too): tests reset it.
For testing only.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

__all__ = [
    "ENV_VAR",
    "ERRORS",
    "Action",
    "FailpointError",
    "FailpointPanic",
    "Kind",
    "configure",
    "configure_from_env",
    "current",
    "declare",
    "declared",
    "disable",
    "enable",
    "fire",
    "parse_action",
    "parse_spec",
    "registry",
    "reset",
    "value",
]

log = logging.getLogger(__name__)

ENV_VAR: Final = "SHARDKV_FAILPOINTS"

# Longer specs and actions are refused before they are parsed (they come
# from an environment variable or an HTTP body).
_MAX_SPEC: Final = 4096
_CALL: Final = re.compile(r"^(error|return)\((.*)\)$", re.DOTALL)


class FailpointError(ValueError):
    """A failpoint spec that cannot be used (the message says why)."""


class FailpointPanic(Exception):
    """Raised by a failpoint set to ``panic``: meant to reach the top."""


class Kind(Enum):
    OFF = "off"
    ERROR = "error"
    PANIC = "panic"
    RETURN = "return"


# What a failpoint that stands for a failing system call takes.
ERRORS: Final = frozenset({Kind.ERROR, Kind.PANIC})


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    errno: int = 0  # ERROR
    value: str = ""  # RETURN

    def __str__(self) -> str:
        if self.kind is Kind.ERROR:
            return f"error({errno.errorcode.get(self.errno, self.errno)})"
        if self.kind is Kind.RETURN:
            return f"return({self.value})"
        return str(self.kind.value)


@dataclass(frozen=True, slots=True)
class _Declared:
    help: str
    kinds: frozenset[Kind]
    # Checks a RETURN value, raising ValueError for a bad one.
    check: Callable[[str], object] | None


@dataclass(slots=True)
class _Registry:
    # Whether any failpoint is set (the call sites' guard).
    active: bool = False
    # Replaced whole on every change, never mutated: `fire` and `value` may
    # run in worker threads while the trio thread changes the settings.
    actions: Mapping[str, Action] = field(default_factory=dict)
    declared: dict[str, _Declared] = field(default_factory=dict)


registry: Final = _Registry()


def declare(
    name: str,
    help: str,
    *,
    kinds: Collection[Kind] = ERRORS,
    check: Callable[[str], object] | None = None,
) -> str:
    """Declare failpoint `name` (what it does, the action kinds it takes and
    a check of its RETURN value); returns the name, for the call sites."""
    registry.declared[name] = _Declared(help, frozenset(kinds) | {Kind.OFF}, check)
    return name


def declared() -> dict[str, str]:
    """Every declared failpoint and what it does."""
    return {name: d.help for name, d in sorted(registry.declared.items())}


def parse_action(text: str) -> Action:
    """An action from its text (see the module docstring)."""
    text = text.strip()
    if not text:
        raise FailpointError("an action is needed (off, error(EIO), panic, return(VALUE))")
    if len(text) > _MAX_SPEC:
        raise FailpointError(f"an action of {len(text)} characters is too long")
    lower = text.lower()
    if lower in ("off", "panic"):
        return Action(Kind(lower))
    if lower == "error":
        return Action(Kind.ERROR, errno.EIO)
    if hasattr(errno, text.upper()) and text.upper().startswith("E"):
        return Action(Kind.ERROR, _errno(text))
    m = _CALL.match(text)
    if m is None:
        return Action(Kind.RETURN, value=text)  # a bare value
    if m.group(1) == "error":
        return Action(Kind.ERROR, _errno(m.group(2).strip() or "EIO"))
    return Action(Kind.RETURN, value=m.group(2).strip())


def _errno(text: str) -> int:
    if text.isdigit() and len(text) <= 4 and int(text) > 0:
        return int(text)
    code = getattr(errno, text.upper(), None)
    if not isinstance(code, int) or not text.upper().startswith("E"):
        raise FailpointError(f"{text!r} is not an errno (EIO, ENOSPC, 5, ...)")
    return code


def _unknown(name: str) -> FailpointError:
    known = ", ".join(sorted(registry.declared)) or "none"
    return FailpointError(f"unknown failpoint {name[:64]!r} (known: {known})")


def _checked(name: str, action: Action) -> Action:
    d = registry.declared.get(name)
    if d is None:
        raise _unknown(name)
    if action.kind not in d.kinds:
        takes = ", ".join(sorted(k.value for k in d.kinds))
        raise FailpointError(f"failpoint {name} takes {takes}, not {action}")
    if action.kind is Kind.RETURN and d.check is not None:
        try:
            d.check(action.value)
        except ValueError as e:
            raise FailpointError(f"failpoint {name}: bad value {action.value!r}: {e}") from None
    return action


def parse_spec(spec: str) -> dict[str, Action]:
    """``name=action;name=action`` (the environment variable's form), every
    name declared and every action one its failpoint takes."""
    if len(spec) > _MAX_SPEC:
        raise FailpointError(f"a spec of {len(spec)} characters is too long")
    out: dict[str, Action] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, text = part.partition("=")
        if not sep:
            raise FailpointError(f"expected name=action, got {part!r}")
        name = name.strip()
        out[name] = _checked(name, parse_action(text))
    return out


def _install(actions: Mapping[str, Action]) -> None:
    registry.actions = {n: a for n, a in actions.items() if a.kind is not Kind.OFF}
    registry.active = bool(registry.actions)


def configure(spec: str) -> dict[str, Action]:
    """Replace every setting by those of `spec` (all or nothing)."""
    actions = parse_spec(spec)
    _install(actions)
    return actions


def configure_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Action]:
    """Apply ``SHARDKV_FAILPOINTS`` if set (FailpointError if it is bad)."""
    spec = environ.get(ENV_VAR, "")
    if not spec.strip():
        return {}
    try:
        actions = configure(spec)
    except FailpointError as e:
        raise FailpointError(f"{ENV_VAR}: {e}") from None
    for name, action in actions.items():
        log.warning("failpoint %s set to %s (from %s; for testing only)", name, action, ENV_VAR)
    return actions


def enable(name: str, text: str) -> Action:
    """Set failpoint `name` to the action `text` (``off`` clears it)."""
    action = _checked(name, parse_action(text))
    _install({**registry.actions, name: action})
    return action


def disable(name: str) -> bool:
    """Clear failpoint `name`; whether it was set."""
    if name not in registry.declared:
        raise _unknown(name)
    if name not in registry.actions:
        return False
    _install({n: a for n, a in registry.actions.items() if n != name})
    return True


def reset() -> None:
    """Clear every failpoint (declarations stay)."""
    _install({})


def current() -> dict[str, Action]:
    return dict(registry.actions)


def fire(name: str) -> None:
    """Raise what failpoint `name` is set to raise (nothing if it is not)."""
    action = registry.actions.get(name)
    if action is None:
        return
    if action.kind is Kind.ERROR:
        raise OSError(action.errno, f"{os.strerror(action.errno)} (failpoint {name})")
    if action.kind is Kind.PANIC:
        raise FailpointPanic(f"failpoint {name}")


def value(name: str) -> str | None:
    """The value failpoint `name` returns, or None if it is not set so."""
    action = registry.actions.get(name)
    return action.value if action is not None and action.kind is Kind.RETURN else None

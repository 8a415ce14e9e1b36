"""Durations and sizes as text: the forms config files, flags and admin APIs use.

* A duration is seconds as a number, or text: a number and a unit, ``ms``,
  ``s``, ``m`` or ``h`` ("500ms", "1.5s", "30m", "1h"; no unit is seconds).
* A size is bytes as an integer, or text: an integer and a unit, ``B``,
  decimal ``KB`` ``MB`` ``GB`` ``TB`` (1000**n) or binary ``KiB`` ``MiB``
  ``GiB`` ``TiB`` (1024**n), any case ("64KiB", "96MiB", "1GB").

`format_duration` and `format_size` write a value so that the matching
parser reads it back exactly; they are what `--help`, the PD's stored config
and its admin API show.
"""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = ["MIN_DURATION", "format_duration", "format_size", "parse_duration", "parse_size"]

# The shortest duration (seconds) `format_duration` writes, but 0.
MIN_DURATION: Final = 0.0001

# Longer numbers in text are refused before they are parsed.
_MAX_DIGITS: Final = 40
_DURATION: Final = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE: Final = re.compile(r"^\s*([0-9]+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_duration(value: object) -> float:
    """Seconds from a number or text ("500ms", "20s", "30m", "1h");
    ValueError for anything else (a boolean, a negative or malformed text)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 500ms, 30s, 5m or 1h, got {value!r}")


def parse_size(value: object) -> int:
    """Bytes from an integer or text ("65536", "64KiB", "96MiB", "1GB");
    ValueError for anything else (a boolean, a float, malformed text)."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            if len(m.group(1)) > _MAX_DIGITS:
                raise ValueError(f"expected a size, got a number of {len(m.group(1))} digits")
            unit = (m.group(2) or "b").lower()
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError(f"expected a size like 65536, 64KiB or 96MiB, got {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest text that `parse_duration` reads back as exactly
    `seconds`: a whole number of hours, minutes, seconds or milliseconds
    ("2h", "30m", "90s", "250ms"), else a decimal number of seconds ("1.5s";
    below a second also of milliseconds, "2.5ms"); on a tie the larger unit.
    Zero is "0s".

    ValueError for a negative, infinite or NaN value, and for one below
    MIN_DURATION but 0 (its decimal forms need an exponent, which the
    parser does not read).
    """
    if seconds == 0:
        return "0s"
    if not MIN_DURATION <= seconds < math.inf:
        raise ValueError(f"cannot write {seconds!r} s as a duration")
    candidates = []
    for unit in ("h", "m", "s", "ms"):
        n = seconds / _DURATION_UNITS[unit]
        if n >= 1 and n.is_integer():
            candidates.append(f"{int(n)}{unit}")
    # repr() is the shortest decimal that reads back as the same float, and
    # has no exponent from MIN_DURATION up to 1e16 (above, every float is a
    # whole number of seconds): one candidate at least is exact.
    candidates.append(f"{seconds!r}s")
    if seconds < 1:
        candidates.append(f"{seconds * 1000!r}ms")
    exact = [text for text in candidates if _reads_back(text, seconds)]
    assert exact, f"no exact text for {seconds!r} s"
    return min(exact, key=len)  # the first of the shortest


def _reads_back(text: str, seconds: float) -> bool:
    try:
        return parse_duration(text) == seconds
    except ValueError:
        return False


def format_size(n: int) -> str:
    """Bytes in the largest binary unit that divides them exactly ("64KiB",
    "96MiB", "1TiB"), else plain bytes ("1000", "0"), which `parse_size`
    reads back as exactly `n` (no size is negative: a negative `n` is written
    as plain bytes, which only a number, not text, can hold)."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n > 0 and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)

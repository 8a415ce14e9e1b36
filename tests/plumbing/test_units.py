"""Durations and sizes as text: what is read, what is written, and that
every written value reads back exactly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plumbing.units import (
    MIN_DURATION,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("20s", 20.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5h", 1800.0),
        ("7", 7.0),
        (" 250 ms ", 0.25),
    ],
)
def test_duration_text_is_read(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_numbers_are_seconds() -> None:
    assert parse_duration(3) == 3.0 and type(parse_duration(3)) is float
    assert parse_duration(0.25) == 0.25


@pytest.mark.parametrize("value", [True, "soon", "-1s", "1e3s", "5 min", "", None, [1]])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("65536", 65536),
        ("64KiB", 64 << 10),
        ("96MiB", 96 << 20),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("3gb", 3 * 1000**3),
        ("1tb", 1000**4),
        ("10B", 10),
        (" 8 kib ", 8 << 10),
    ],
)
def test_size_text_is_read(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("value", [True, 1.5, "lots", "1.5MiB", "-1KiB", "1PiB", "", None])
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


# The PD's own cases (30m, 1.5s, 250ms...) are in tests/placement_driver/test_config.py.
@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (86400.0, "24h"),
        (5400.0, "90m"),
        (60.0, "1m"),
        (61.0, "61s"),
        (0.1, "0.1s"),
        (0.001, "1ms"),
        (0.0015, "1.5ms"),
        (MIN_DURATION, "0.1ms"),
        (86400.5, "86400.5s"),
        (1e16, "10000000000000000s"),
    ],
)
def test_durations_are_written_shortest_whole_units_first(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds", [-1.0, -0.5, math.inf, -math.inf, math.nan, 1e-5, 5e-324])
def test_durations_no_text_holds_are_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="cannot write"):
        format_duration(seconds)


@given(st.floats(min_value=MIN_DURATION, allow_infinity=False, allow_nan=False))
def test_every_duration_from_the_minimum_up_reads_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**12))
def test_whole_seconds_read_back_exactly(n: int) -> None:
    assert parse_duration(format_duration(n)) == n


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (1, "1"),
        (1000, "1000"),
        (1023, "1023"),
        (1024, "1KiB"),
        (1536, "1536"),
        (96 << 20, "96MiB"),
        ((1 << 30) + (1 << 20), "1025MiB"),
        (1 << 40, "1TiB"),
        (1 << 50, "1024TiB"),
        (-1024, "-1024"),
    ],
)
def test_sizes_are_written_in_the_largest_exact_binary_unit(n: int, text: str) -> None:
    assert format_size(n) == text


@given(st.integers(min_value=0, max_value=1 << 70))
def test_sizes_beyond_tib_read_back_exactly(n: int) -> None:
    assert parse_size(format_size(n)) == n

"""pytest options of the Raft tests."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="regenerate the expected outputs of tests/raft/testdata/*.txt in place",
    )
    # The deterministic simulator (tests/raft/raftsim): replay one seed.
    parser.addoption(
        "--seed",
        type=int,
        default=None,
        help="run the simulator tests with this seed only (replays a reported failure)",
    )
    parser.addoption(
        "--steps",
        type=int,
        default=None,
        help="steps (processed events) per simulator run, instead of each test's default",
    )

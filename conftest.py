"""Session-wide pytest hooks: an empty or all-skipped run is a failure; the
options of the deterministic simulations (tests/raft/raftsim, tests/sim) and
of the Raft scenario files (here, so that they are known whatever the
command line names)."""

from __future__ import annotations

import pytest

_passed = 0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _passed  # noqa: PLW0603 (a session-wide count, in pytest's own hooks)
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Only the full run (not a -k / file selection of skipped tests) is judged.
    if exitstatus == 0 and _passed == 0 and not session.config.option.collectonly:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_addoption(parser: pytest.Parser) -> None:
    # The deterministic simulator (tests/raft/raftsim, tests/sim): replay one seed.
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
    # The Raft scenario files (tests/raft/test_scenarios.py).
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="regenerate the expected outputs of tests/raft/testdata/*.txt in place",
    )

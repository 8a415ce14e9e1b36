"""plumbing.cli: --log-level, logging to stderr, stopping on SIGINT and
SIGTERM, one-line error reports.

Rules: a signal is sent to this process only while `serve_until_signal` has
taken it over; every trio test runs under `trio.fail_after`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from plumbing.cli import (
    LOG_LEVELS,
    add_log_level_flag,
    configure_logging,
    print_errors,
    serve_until_signal,
)

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 10


def test_the_log_level_flag_has_a_default_and_four_choices() -> None:
    parser = argparse.ArgumentParser()
    add_log_level_flag(parser, default="warning")
    assert parser.parse_args([]).log_level == "warning"
    assert parser.parse_args(["--log-level", "debug"]).log_level == "debug"
    assert "(default: warning)" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["--log-level", "loud"])
    assert LOG_LEVELS == ("debug", "info", "warning", "error")


def test_a_default_that_is_not_a_level_is_a_bug() -> None:
    with pytest.raises(ValueError, match="loud"):
        add_log_level_flag(argparse.ArgumentParser(), default="loud")


def test_logging_goes_to_stderr_in_one_format_from_the_level_up() -> None:
    # In a process of its own: the test runner owns this one's root logger.
    script = (
        "import logging\n"
        "from plumbing.cli import configure_logging\n"
        "configure_logging('info')\n"
        "logging.getLogger('x.y').debug('hidden')\n"
        "logging.getLogger('x.y').info('shown %d', 1)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    assert line.endswith(" INFO x.y: shown 1")


def test_configure_logging_leaves_an_existing_handler_alone() -> None:
    # pytest's log capture handler is installed on the root logger.
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    configure_logging("debug")
    assert (root.handlers, root.level) == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_the_server_and_returns(sig: signal.Signals) -> None:
    events: list[str] = []

    async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started("ready")
        try:
            await trio.sleep_forever()
        finally:
            events.append("server cancelled")

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(serve_until_signal, serve) == "ready"
            os.kill(os.getpid(), sig)
    assert events == ["server cancelled"]


async def test_a_server_that_fails_to_start_raises_its_error() -> None:
    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("address in use")

    with trio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
        await serve_until_signal(serve)
    assert info.group_contains(OSError, match="address in use")


def test_errors_are_printed_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    print_errors("prog", ValueError("bad value"))
    nested = ExceptionGroup("outer", [OSError("a"), ExceptionGroup("inner", [KeyError("b")])])
    print_errors("prog", nested)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "prog: bad value\nprog: a\nprog: 'b'\n"

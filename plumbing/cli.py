"""What every `shardkv` sub-command sets up the same way.

* `add_log_level_flag` and `configure_logging`: ``--log-level``, and log
  records written to stderr in one format.
* `serve_until_signal`: run a server until SIGINT or SIGTERM, then cancel it
  and return, so that the command ends cleanly (exit code 0) rather than
  with a KeyboardInterrupt traceback.
* `print_errors`: one ``prog: message`` line on stderr per error, also for
  the errors inside an ExceptionGroup.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import trio

from plumbing.logs import PROCESS_FIELDS, JsonFormatter, ProcessFields, TextFormatter

__all__ = [
    "LOG_FORMAT",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "STOP_SIGNALS",
    "add_log_level_flag",
    "configure_logging",
    "error_leaves",
    "print_errors",
    "serve_until_signal",
]

log = logging.getLogger(__name__)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def add_log_level_flag(parser: argparse.ArgumentParser, *, default: str = "info") -> None:
    """``--log-level {debug,info,warning,error}`` (into ``args.log_level``)
    and ``--log-format {text,json}`` (into ``args.log_format``)."""
    if default not in LOG_LEVELS:
        raise ValueError(f"default log level {default!r} is not one of {LOG_LEVELS}")
    parser.add_argument(
        "--log-level",
        default=default,
        choices=LOG_LEVELS,
        help=f"log level of the messages written to stderr (default: {default})",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text lines for people, or one JSON object per line for log collectors "
        "(fields: time, level, logger, message, store, region, peer; default: text)",
    )


def configure_logging(
    level: str, *, fmt: str = LOG_FORMAT, log_format: str = "text"
) -> ProcessFields:
    """Write log records of `level` (a name of LOG_LEVELS) and above to
    stderr, one line each: text in the `logging` format `fmt` (with the
    record's store / region / peer fields before the message), or JSON.
    Returns the filter holding fields for every record of the process.
    Like `logging.basicConfig`, it adds no handler if the root logger
    already has one (a test runner's, or an earlier call)."""
    root = logging.getLogger()
    if root.handlers:
        return PROCESS_FIELDS
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(fmt))
    handler.addFilter(PROCESS_FIELDS)
    root.addHandler(handler)
    return PROCESS_FIELDS


async def serve_until_signal(
    serve: Callable[..., Awaitable[object]],
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``serve`` until SIGINT or SIGTERM arrives, then cancel it and
    return.

    ``serve`` is started as with ``nursery.start(serve)`` (it reports that it
    is ready through its `task_status`, which is passed on). An error of
    ``serve`` leaves as trio's ExceptionGroup (see `print_errors`). The signals
    are taken over from the start, so that one that comes while ``serve`` is
    starting stops it too rather than raising KeyboardInterrupt.
    """
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for sig in signals:
                    log.info("received %s, stopping", signal.Signals(sig).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            task_status.started(await nursery.start(serve))


# What the PD and the stores need beyond a client install (the `server` extra).
SERVER_MODULES = ("lmdb", "hypercorn", "prometheus_client")


def missing_server_modules(prog: str) -> str | None:
    """A message for the user if the `server` extra is not installed, else
    None: a client-only install (`pip install shardkv`) runs `shardkv kv`
    but not the servers."""
    missing = []
    for module in SERVER_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if not missing:
        return None
    return (
        f"{prog}: needs {', '.join(missing)}, which a client-only install leaves out; "
        "install the server extra: python3 -m pip install 'shardkv[server]'"
    )


def print_errors(prog: str, error: BaseException) -> None:
    """Print ``prog: message`` on stderr for `error`, or for each error in
    it if it is an ExceptionGroup (nested groups included)."""
    for e in error_leaves(error):
        print(f"{prog}: {e}", file=sys.stderr)


def error_leaves(error: BaseException) -> Iterator[BaseException]:
    """`error` itself, or every error inside it if it is an ExceptionGroup
    (nested groups included)."""
    if isinstance(error, BaseExceptionGroup):
        for e in error.exceptions:
            yield from error_leaves(e)
    else:
        yield error

"""Log records for people and for log collectors.

Records may carry the store, region and peer they are about as fields
(``extra=log_fields(...)`` at the call, or `ProcessFields` for what holds
for a whole process, such as the store id). Text output shows them before
the message (``store=1 region=5 peer=6``); JSON output (``--log-format
json``) writes one object per line with every field, for collectors.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

__all__ = [
    "FIELDS",
    "PROCESS_FIELDS",
    "JsonFormatter",
    "ProcessFields",
    "TextFormatter",
    "log_fields",
]

# The fields a record may carry (attributes of the LogRecord), in this order.
FIELDS: Final = ("store", "region", "peer")


def log_fields(
    *, store: int | None = None, region: int | None = None, peer: int | None = None
) -> dict[str, int]:
    """`extra=` for a log call about a store, a region, a peer."""
    fields = {"store": store, "region": region, "peer": peer}
    return {k: v for k, v in fields.items() if v is not None}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {f: getattr(record, f) for f in FIELDS if getattr(record, f, None) is not None}


class ProcessFields(logging.Filter):
    """Adds fields that hold for every record of the process (the store's
    id once it is known) unless the record has its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in self.fields.items():
            if getattr(record, k, None) is None:
                setattr(record, k, v)
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: [store=.. region=.. peer=..] message``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        prefix = " ".join(f"{k}={v}" for k, v in fields.items())
        head, sep, rest = line.partition(": ")
        return f"{head}: [{prefix}] {rest}" if sep else f"[{prefix}] {line}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger,
    message, the fields, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        obj.update(_fields(record))
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


# The fields of this process's records (configure_logging installs it on its
# handler): a store sets its id here once it knows it.
PROCESS_FIELDS: Final = ProcessFields()

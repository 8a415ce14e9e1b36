"""Log records for people (text) and collectors (JSON), with the store /
region / peer fields they carry."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from plumbing.logs import JsonFormatter, ProcessFields, TextFormatter, log_fields

ROOT = Path(__file__).resolve().parents[2]


def _record(msg: str = "peer %d started", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "store_node.core", logging.INFO, __file__, 1, msg, args or (6,), None
    )
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_log_fields_keeps_only_what_is_known() -> None:
    assert log_fields(region=5) == {"region": 5}
    assert log_fields(store=1, region=5, peer=6) == {"store": 1, "region": 5, "peer": 6}


def test_text_shows_the_fields_before_the_message() -> None:
    fmt = TextFormatter("%(levelname)s %(name)s: %(message)s")
    assert fmt.format(_record(region=5, peer=6)) == (
        "INFO store_node.core: [region=5 peer=6] peer 6 started"
    )
    assert fmt.format(_record()) == "INFO store_node.core: peer 6 started"


def test_json_is_one_object_with_every_field() -> None:
    line = JsonFormatter().format(_record(store=1, region=5, peer=6))
    obj = json.loads(line)
    assert obj["level"] == "info" and obj["logger"] == "store_node.core"
    assert obj["message"] == "peer 6 started"
    assert (obj["store"], obj["region"], obj["peer"]) == (1, 5, 6)
    assert obj["time"].endswith("Z") and "\n" not in line


def test_process_fields_fill_in_what_a_record_lacks() -> None:
    f = ProcessFields()
    f.fields["store"] = 3
    own, bare = _record(store=9), _record()
    assert f.filter(own) and f.filter(bare)
    assert (own.store, bare.store) == (9, 3)  # type: ignore[attr-defined]


def test_configured_json_logging_writes_one_object_per_record() -> None:
    code = (
        "import logging; from plumbing.cli import configure_logging; "
        "from plumbing.logs import log_fields; "
        "fields = configure_logging('info', log_format='json'); fields.fields['store'] = 2; "
        "log = logging.getLogger('store_node.core'); "
        "log.info('peer %d started', 6, extra=log_fields(region=5, peer=6)); "
        "log.debug('not shown')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    (line,) = r.stderr.splitlines()
    obj = json.loads(line)
    assert obj["message"] == "peer 6 started"
    assert (obj["store"], obj["region"], obj["peer"]) == (2, 5, 6)


def test_every_command_takes_the_log_format_flag() -> None:
    import argparse

    from plumbing.cli import add_log_level_flag

    p = argparse.ArgumentParser()
    add_log_level_flag(p)
    assert p.parse_args(["--log-format", "json"]).log_format == "json"
    assert p.parse_args([]).log_format == "text"

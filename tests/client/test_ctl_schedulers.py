"""`shardkv ctl scheduler ...` against a small fake of the PD's scheduler
API (stdlib HTTP server on an ephemeral 127.0.0.1 port, in a thread), to
the contract the PD's scheduler endpoints are built to:

    GET    /pd/api/v1/schedulers          {"schedulers": [{"name", "paused_until",
                                            "store_id", "operators_created"}]}
    POST   /pd/api/v1/schedulers          {"name": "balance-leader"} or
                                          {"name": "evict-leader", "store_id": 4}
                                          (named evict-leader-4)
    DELETE /pd/api/v1/schedulers/{name}
    POST   /pd/api/v1/schedulers/{name}   {"delay": seconds} (0 resumes)

Every order answers the scheduler; `paused_until` is the seconds until it
resumes. The fake starts with no scheduler (the PD with balance-leader and
balance-region); it checks the contract from the ctl's side, with errors
the ctl must pass on. The same commands against a real PD are in
tests/client/test_ctl.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shardkv.__main__ import main

PREFIX = "/pd/api/v1/schedulers"
KNOWN = ("balance-leader", "balance-region", "evict-leader")


class FakeSchedulerApi(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.schedulers: dict[str, dict[str, Any]] = {}
        self.authorizations: list[str | None] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeSchedulerApi

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, doc: object) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def do_GET(self) -> None:
        if self.path != PREFIX:
            self._answer(404, {"error": f"no such endpoint: {self.path}"})
            return
        self._answer(200, {"schedulers": list(self.server.schedulers.values())})

    def do_POST(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization"))
        body = self._body()
        known = self.server.schedulers
        if self.path == PREFIX:
            kind, store_id = body.get("name"), body.get("store_id")
            name = f"{kind}-{store_id}" if kind == "evict-leader" else kind
            if kind not in KNOWN:
                self._answer(400, {"error": f"unknown scheduler {kind!r}"})
            elif name in known:
                self._answer(409, {"error": f"scheduler {name} already exists"})
            else:
                known[name] = {
                    "name": name,
                    "paused_until": None,
                    "store_id": store_id,
                    "operators_created": 0,
                }
                self._answer(200, known[name])
            return
        name = self.path.removeprefix(PREFIX + "/")
        if name not in known:
            self._answer(404, {"error": f"scheduler {name} not found"})
            return
        delay = body["delay"]
        known[name]["paused_until"] = delay or None
        self._answer(200, known[name])

    def do_DELETE(self) -> None:
        name = self.path.removeprefix(PREFIX + "/")
        removed = self.server.schedulers.pop(name, None)
        if removed is None:
            self._answer(404, {"error": f"scheduler {name} not found"})
            return
        self._answer(200, removed)


@pytest.fixture
def api() -> Iterator[FakeSchedulerApi]:
    server = FakeSchedulerApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def ctl(
    api: FakeSchedulerApi, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[str], str]:
    code = main(["ctl", "--pd-http", api.url, "--timeout", "10", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_schedulers_are_added_listed_paused_resumed_and_removed(
    api: FakeSchedulerApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl(api, capsys, "scheduler", "list") == (
        0,
        ["NAME  STORE  RESUMES IN  OPERATORS", "(none)"],
        "",
    )
    assert ctl(api, capsys, "scheduler", "add", "balance-leader") == (
        0,
        ["added scheduler balance-leader"],
        "",
    )
    assert ctl(api, capsys, "scheduler", "add", "evict-leader", "--store", "4")[1] == [
        "added scheduler evict-leader-4"  # the name the PD gave it
    ]
    assert api.schedulers["evict-leader-4"]["store_id"] == 4
    assert ctl(api, capsys, "scheduler", "pause", "balance-leader", "60") == (
        0,
        ["paused scheduler balance-leader for 60 s"],
        "",
    )
    code, lines, _ = ctl(api, capsys, "scheduler", "list")
    assert (code, lines) == (
        0,
        [
            "NAME            STORE  RESUMES IN  OPERATORS",
            "balance-leader  -      60.0s       0",
            "evict-leader-4  4      -           0",
        ],
    )
    assert ctl(api, capsys, "scheduler", "resume", "balance-leader")[1] == [
        "resumed scheduler balance-leader"
    ]
    assert api.schedulers["balance-leader"]["paused_until"] is None
    assert ctl(api, capsys, "scheduler", "remove", "evict-leader-4")[1] == [
        "removed scheduler evict-leader-4"
    ]
    code, lines, _ = ctl(api, capsys, "--json", "scheduler", "list")
    assert json.loads("\n".join(lines)) == {"schedulers": [api.schedulers["balance-leader"]]}


def test_scheduler_failures_print_the_servers_reason(
    api: FakeSchedulerApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl(api, capsys, "scheduler", "add", "balance-hot") == (
        1,
        [],
        "error: unknown scheduler 'balance-hot'\n",
    )
    ctl(api, capsys, "scheduler", "add", "balance-region")
    assert ctl(api, capsys, "scheduler", "add", "balance-region")[2] == (
        "error: scheduler balance-region already exists\n"
    )
    assert ctl(api, capsys, "scheduler", "remove", "nope") == (
        1,
        [],
        "error: scheduler nope not found\n",
    )
    assert ctl(api, capsys, "scheduler", "pause", "nope", "5")[2] == (
        "error: scheduler nope not found\n"
    )


def test_the_token_travels_with_scheduler_orders(
    api: FakeSchedulerApi, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    assert (
        ctl(api, capsys, "--token-file", str(token), "scheduler", "add", "balance-leader")[0] == 0
    )
    assert api.authorizations == ["Bearer abc"]


def test_a_reader_that_leaves_early_gets_no_traceback(api: FakeSchedulerApi) -> None:
    # `shardkv ctl ... | head -1`: the pipe's reader is gone before the write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "shardkv", "ctl", "--pd-http", api.url, "scheduler", "list"],
            cwd=Path(__file__).resolve().parents[2],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (1, "")

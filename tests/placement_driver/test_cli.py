"""`shardkv pd` as a process: help, refusals at start, clean stops, and ids
that stay unique across a SIGKILL.

Rules: loopback only, port 0; every test runs under `trio.fail_after`; a
started process is always killed in `finally`.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from kvproto import pdpb
from kvproto.rpc import connect
from placement_driver.config import (
    CLUSTER_KEYS,
    ClusterConfig,
    cluster_config_from,
    load_startup_config,
)
from plumbing.nursery import open_background_nursery
from tests.placement_driver.helpers import PdCaller, bootstrap_cluster, http_request

ROOT = Path(__file__).resolve().parents[2]
PD = [sys.executable, "-m", "shardkv", "pd"]
TIMEOUT = 30


def run_pd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PD, *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_pd_help_explains_its_flags() -> None:
    r = run_pd("--help")
    assert r.returncode == 0, r.stderr
    for flag in (
        "--data-dir",
        "--listen",
        "--http",
        "--config",
        "--log-level",
        "--max-replicas",
        "--admin-token-file",
    ):
        assert flag in r.stdout
    for words in ("Durations are seconds", "96MiB", "30m", "SIGTERM", "exit code 2"):
        assert words in r.stdout


def test_shardkv_help_lists_the_sub_commands() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "shardkv", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert r.returncode == 0 and re.search(r"^\s+pd\s", r.stdout, re.MULTILINE)


def test_the_console_script_runs() -> None:
    script = Path(sys.executable).parent / "shardkv"
    if not script.exists():
        pytest.skip("the shardkv console script is not installed next to this python")
    r = subprocess.run(
        [str(script), "pd", "--help"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert r.returncode == 0 and "--data-dir" in r.stdout


@pytest.mark.parametrize(
    ("toml", "flags", "message"),
    [
        ("max_replica = 3\n", [], "unknown config key 'max_replica' in"),
        ("max_replica = 3\n", [], "did you mean 'max_replicas'?"),
        ('max_store_down_time = "soon"\n', [], "bad value for max_store_down_time"),
        ("", ["--max-replicas", "zero"], "bad value for max_replicas"),
        ("", ["--store-disconnect-time", "2h"], "store_disconnect_time must be shorter"),
        ("", ["--listen", "localhost"], "bad value for listen"),
        ('admin_token_file = "/nonexistent/token"\n', [], "cannot read the admin token file"),
        ("", ["--admin-token-file", "/dev/null"], "the admin token file /dev/null is empty"),
    ],
)
def test_a_bad_config_is_refused_at_start_with_a_clear_message(
    tmp_path: Path, toml: str, flags: list[str], message: str
) -> None:
    config = tmp_path / "pd.toml"
    config.write_text(f'data_dir = "{tmp_path / "pd"}"\n' + toml)
    r = run_pd("--config", str(config), *flags)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert r.stderr.startswith("shardkv pd: ")
    if "must be shorter" not in message:  # rules between keys need the stored config
        assert not (tmp_path / "pd").exists()  # refused before touching anything


def test_a_missing_data_dir_is_refused() -> None:
    r = run_pd("--listen", "127.0.0.1:0")
    assert r.returncode == 2 and "data_dir is required" in r.stderr


@dataclass(slots=True)
class Running:
    process: trio.Process
    rpc: str
    http_url: str
    stderr: list[str]


@asynccontextmanager
async def pd_process(data_dir: Path, *flags: str) -> AsyncIterator[Running]:
    """`shardkv pd` on ephemeral ports, ready (its addresses read from the
    "PD serving" log line); killed on exit if still running."""
    process = await trio.lowlevel.open_process(
        [
            *PD,
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            *flags,
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        reader = _Lines(process.stderr)
        while True:
            line = await reader.next()
            if line is None:
                raise AssertionError(f"shardkv pd exited: {''.join(lines)}")
            lines.append(line)
            m = re.search(r"PD serving: RPC on (\S+), HTTP on (\S+),", line)
            if m:
                break
        async with open_background_nursery() as nursery:
            nursery.start_soon(reader.drain_into, lines)
            yield Running(process, m[1], m[2], lines)
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


class _Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str | None:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace") + "\n"

    async def drain_into(self, lines: list[str]) -> None:
        while (line := await self.next()) is not None:
            lines.append(line)


async def stop(running: Running, sig: signal.Signals) -> int:
    running.process.send_signal(sig)
    return await running.process.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_the_pd_serves_and_stops_cleanly_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with trio.fail_after(TIMEOUT):
        async with pd_process(tmp_path / "pd") as running:
            r = await http_request(running.http_url + "/pd/api/v1/health")
            assert r.status == 200 and r.json()["health"] is True
            async with connect(running.rpc) as conn:
                await bootstrap_cluster(PdCaller(conn))
            assert await stop(running, sig) == 0
        assert "PD stopped" in "".join(running.stderr)
        assert "Traceback" not in "".join(running.stderr)


async def test_ids_stay_unique_after_a_sigkill(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with pd_process(tmp_path / "pd") as running:
            async with connect(running.rpc) as conn:
                caller = PdCaller(conn)
                await bootstrap_cluster(caller)
                before = [await caller.alloc_id() for _ in range(20)]
            running.process.kill()  # no shutdown code runs
            assert await running.process.wait() == -signal.SIGKILL
        async with pd_process(tmp_path / "pd") as running:
            async with connect(running.rpc) as conn:
                caller = PdCaller(conn)
                after = [await caller.alloc_id() for _ in range(5)]
                stores = await caller.ok(
                    pdpb.GetAllStoresRequest(caller.header()), pdpb.GetAllStoresResponse
                )
                assert len(stores.stores) == 1  # written through before the answer
            assert min(after) > max(before)
            assert await stop(running, signal.SIGTERM) == 0


async def test_a_second_pd_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with pd_process(tmp_path / "pd") as running:
            second = await trio.run_process(
                [
                    *PD,
                    "--data-dir",
                    str(tmp_path / "pd"),
                    "--listen",
                    "127.0.0.1:0",
                    "--http",
                    "127.0.0.1:0",
                ],
                cwd=ROOT,
                capture_stderr=True,
                check=False,
            )
            assert second.returncode == 1
            assert b"in use by another PD process" in second.stderr
            assert await stop(running, signal.SIGTERM) == 0


def test_the_readme_example_is_a_valid_pd_toml_with_the_defaults(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Placement driver") :]
    example = section[
        section.index("```toml") + len("```toml") : section.index(
            "```\n", section.index("```toml") + 7
        )
    ]
    toml = tmp_path / "pd.toml"
    toml.write_text(example)
    startup = load_startup_config(str(toml), {})
    assert startup.server.data_dir == "/var/lib/shardkv/pd"
    assert cluster_config_from(startup.cluster_overrides) == ClusterConfig()
    assert set(startup.cluster_overrides) == set(CLUSTER_KEYS)  # every key is shown

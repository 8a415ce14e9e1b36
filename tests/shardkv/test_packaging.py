"""What a user of the package gets: a version, and a client-only install
(no `server` extra: no lmdb, no hypercorn) that runs the client and
`shardkv kv`, while the servers say what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import shardkv

ROOT = Path(__file__).resolve().parents[2]

# Run in a child process where lmdb and hypercorn cannot be imported.
WITHOUT_SERVER_EXTRA = """
import sys
for name in ("lmdb", "hypercorn"):
    sys.modules[name] = None  # import raises ImportError
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVER_EXTRA + code],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_the_version_is_the_installed_distributions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shardkv", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == f"shardkv {shardkv.__version__}"
    assert shardkv.__version__ != "0+unknown"


def test_a_client_only_install_runs_the_client_and_the_kv_command() -> None:
    r = _run(
        "import client, client.sync\n"
        "from shardkv.__main__ import main\n"
        "sys.exit(main(['kv', '--help']))\n"
    )
    assert r.returncode == 0, r.stderr
    assert "usage: shardkv kv" in r.stdout


def test_without_the_server_extra_the_servers_say_what_to_install(tmp_path: Path) -> None:
    for command in (["store", "--data-dir", str(tmp_path)], ["pd", "--data-dir", str(tmp_path)]):
        r = _run(f"from shardkv.__main__ import main\nsys.exit(main({command!r}))\n")
        assert r.returncode == 2, r.stderr
        assert "pip install 'shardkv[server]'" in r.stderr
        assert "Traceback" not in r.stderr


def test_every_package_is_marked_typed() -> None:
    for package in ("raft", "kvproto", "store_node", "placement_driver", "client", "plumbing"):
        assert (ROOT / package / "py.typed").exists(), package

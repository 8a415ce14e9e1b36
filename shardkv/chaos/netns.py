"""Network partitions for `shardkv chaos`: a network namespace of its own,
and nftables rules in it.

A partition must tell the cluster's processes apart, and on one machine
they are told apart by address: the PD and every store get a 127.0.0.x of
their own (on Linux all of 127.0.0.0/8 is loopback) and dial from it
(`--source-host`). The clients, in the chaos process, dial from 127.0.0.1
and are never cut: a leader cut off from its peers and the PD stays
reachable by clients, the case a lease read must get right.

The rules must never touch the host's firewall, so the tool re-runs itself
in a new network namespace (`unshare --net`; with `--map-root-user` when
not root, where a user namespace grants the privilege inside). The
namespace has only a loopback interface, brought up here, and ends with
the process. Its firewall is one nftables table with one output chain; a
partition is a set of (from host, to host) pairs whose packets are dropped
(dropped, not refused: a cut peer sees timeouts, as across a real
network), and healing flushes the chain. In-flight TCP data is
retransmitted after healing, as after a real partition.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Final

import trio

__all__ = [
    "ENV",
    "Firewall",
    "bring_up_loopback",
    "cut_both_ways",
    "in_namespace",
    "run_in_namespace",
    "unavailable",
]

log = logging.getLogger(__name__)

# Set in the re-run tool's environment: it is inside its own namespace.
ENV: Final = "SHARDKV_CHAOS_NETNS"
_TABLE: Final = "shardkv_chaos"
_SIOCGIFFLAGS: Final = 0x8913
_SIOCSIFFLAGS: Final = 0x8914
_IFF_UP: Final = 0x1


def _unshare_argv() -> list[str]:
    argv = ["unshare", "--net"]
    if os.geteuid() != 0:
        argv.append("--map-root-user")
    return [*argv, "--"]


def unavailable() -> str | None:
    """Why partitions cannot be made on this machine (None: they can): a
    trial namespace must come up and nft must work in it."""
    if sys.platform != "linux":
        return "partitions need Linux network namespaces"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if shutil.which("nft") is None:
        return "nft is not installed (Debian: apt-get install nftables)"
    try:
        r = subprocess.run(
            [*_unshare_argv(), "nft", "list", "tables"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot make a network namespace: {e}"
    if r.returncode != 0:
        return f"cannot make a network namespace: {r.stderr.strip() or r.returncode}"
    return None


def in_namespace() -> bool:
    return os.environ.get(ENV) == "1"


def run_in_namespace(argv: Sequence[str]) -> int:
    """`python -m shardkv ARGV` in a new network namespace; its exit code.
    Standard streams are shared."""
    cmd = [*_unshare_argv(), sys.executable, "-m", "shardkv", *argv]
    return subprocess.run(cmd, env={**os.environ, ENV: "1"}, check=False).returncode


def bring_up_loopback() -> None:
    """A new namespace's loopback is down; `ip link set lo up`, without
    needing iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


class Firewall:
    """The namespace's rules: `cut` replaces them, `heal` removes them."""

    def __init__(self) -> None:
        self.cut_pairs: frozenset[tuple[str, str]] = frozenset()

    async def start(self) -> None:
        await self._nft(
            f"add table inet {_TABLE}\n"
            f"add chain inet {_TABLE} out "
            "{ type filter hook output priority 0; policy accept; }\n"
        )

    async def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drop every packet from host a to host b, for each (a, b)."""
        pairs = frozenset(pairs)
        rules = "".join(
            f"add rule inet {_TABLE} out ip saddr {a} ip daddr {b} drop\n" for a, b in sorted(pairs)
        )
        await self._nft(f"flush chain inet {_TABLE} out\n{rules}")
        self.cut_pairs = pairs
        log.info("cut %s", ", ".join(f"{a}->{b}" for a, b in sorted(pairs)))

    async def heal(self) -> None:
        await self._nft(f"flush chain inet {_TABLE} out\n")
        self.cut_pairs = frozenset()

    @staticmethod
    async def _nft(script: str) -> None:
        r = await trio.run_process(
            ["nft", "-f", "-"], stdin=script.encode(), capture_stderr=True, check=False
        )
        if r.returncode != 0:
            raise RuntimeError(f"nft failed: {r.stderr.decode(errors='replace').strip()}")


def cut_both_ways(side_a: Iterable[str], side_b: Iterable[str]) -> set[tuple[str, str]]:
    """The pairs that part `side_a` from `side_b` in both directions."""
    a, b = list(side_a), list(side_b)
    return {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}

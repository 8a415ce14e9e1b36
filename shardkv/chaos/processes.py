"""The processes a nemesis may signal: those of a cluster `shardkv chaos`
started itself, or, with `--pd --allow-kill`, those of a cluster started
elsewhere on this machine, found by their listening ports."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kvproto.rpc import parse_address
from shardkv.local_cluster import LocalCluster

__all__ = ["ForeignProcesses", "LocalProcesses", "Processes", "listening_pid"]

log = logging.getLogger(__name__)


class Processes(Protocol):
    """Stores by address (the address the PD lists them under)."""

    def running(self, address: str) -> bool: ...

    def signal(self, address: str, sig: signal.Signals) -> None: ...

    async def kill(self, address: str) -> None: ...

    async def restart(self, address: str) -> None:
        """Bring a killed store back (or leave it to its supervisor)."""
        ...


@dataclass(slots=True)
class LocalProcesses:
    cluster: LocalCluster

    def _index(self, address: str) -> int:
        for spec in self.cluster.store_specs:
            if spec.address == address:
                return spec.index
        raise KeyError(f"no store of this cluster at {address}")

    def running(self, address: str) -> bool:
        return self.cluster.store_specs[self._index(address) - 1].child.running

    def signal(self, address: str, sig: signal.Signals) -> None:
        self.cluster.signal_store(self._index(address), sig)

    async def kill(self, address: str) -> None:
        await self.cluster.kill_store(self._index(address))

    async def restart(self, address: str) -> None:
        await self.cluster.start_store(self._index(address))


@dataclass(slots=True)
class ForeignProcesses:
    """Stores started elsewhere: signalled through the pid that listens on
    their address (so only stores on this machine, run by this user or
    root). A killed store is restarted by its supervisor (systemd's
    `Restart=`), not by us."""

    pids: dict[str, int] = field(default_factory=dict)

    def _pid(self, address: str) -> int | None:
        pid = listening_pid(address)
        if pid is not None:
            self.pids[address] = pid
        return pid

    def running(self, address: str) -> bool:
        return self._pid(address) is not None

    def signal(self, address: str, sig: signal.Signals) -> None:
        pid = self._pid(address) if sig != signal.SIGCONT else self.pids.get(address)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def kill(self, address: str) -> None:
        self.signal(address, signal.SIGKILL)

    async def restart(self, address: str) -> None:
        log.info("store %s was killed: its supervisor restarts it", address)


def listening_pid(address: str) -> int | None:
    """The pid of the process listening on TCP `address` ("host:port"), from
    /proc (Linux); None if none is found."""
    host, port = parse_address(address)
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                local_ip, local_port = local.split(":")
                if state != "0A" or int(local_port, 16) != port:  # 0A: LISTEN
                    continue
                if len(local_ip) == 8:  # IPv4, little-endian hex
                    bound = socket.inet_ntoa(bytes.fromhex(local_ip)[::-1])
                    if bound not in (ip, "0.0.0.0"):
                        continue
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None

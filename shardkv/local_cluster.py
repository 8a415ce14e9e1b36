"""A PD and N stores as child processes on loopback: the playground's engine
and the cluster tests' fixture.

Each child is `python -m shardkv pd|store ...` with its own data directory
and log file under the cluster's directory, on free 127.0.0.1 ports (a
store's status port, `--status`, included: `StoreSpec.status_url`). With
`hosts`, each store gets a loopback address of its own instead (127.0.0.2,
127.0.0.3, ...: on Linux all of 127.0.0.0/8 is loopback) and listens,
advertises and serves its status there, as if on a machine of its own. On
Linux every child gets PR_SET_PDEATHSIG, so it dies with its parent even if
the parent is SIGKILLed: no orphans. `aclose` stops children with SIGTERM
(SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from kvproto import kvrpcpb as kv
from kvproto.metapb import PeerRole, Region, StoreState
from kvproto.pd_client import PdClient
from kvproto.rpc import RpcCallError, StreamOpener, connect, open_tcp
from kvproto.rpc.tls import client_context, tls_opener
from shardkv.tls_files import TlsFiles

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


async def leader_context(pd: PdClient, key: bytes = b"") -> tuple[kv.Context, str]:
    """The KV context of the region holding `key` and its leader's address,
    once the PD knows both (cancel from outside to bound the wait)."""
    while True:
        region, leader = await pd.get_region(key)
        if region is not None and leader is not None:
            store = await pd.get_store(leader.store_id)
            if store is not None:
                return kv.Context(region.id, region.epoch, leader), store.address
        await trio.sleep(0.05)


async def under_replicated(pd: PdClient, count: int) -> list[tuple[Region, int]]:
    """Every region with fewer than `count` voters, and how many it has."""
    short: list[tuple[Region, int]] = []
    start = b""
    while True:
        infos = await pd.scan_regions(start, limit=256)
        for info in infos:
            voters = sum(p.role == PeerRole.VOTER for p in info.region.peers)
            if voters < count:
                short.append((info.region, voters))
        if not infos or not infos[-1].region.end_key:
            return short
        start = infos[-1].region.end_key


async def wait_replicated(
    pd: PdClient, count: int, progress: Callable[[str], None] | None = None
) -> None:
    """Wait until every region has `count` voters; `progress` is told what
    is still missing whenever that changes (cancel from outside to bound)."""
    said = ""
    while True:
        short = await under_replicated(pd, count)
        if not short:
            return
        first, voters = short[0]
        what = f"region {first.id} has {voters} of {count} voters"
        if len(short) > 1:
            what += f" ({len(short)} regions short)"
        if progress is not None and what != said:
            progress(what)
            said = what
        await trio.sleep(0.2)


async def wait_for_voters(pd: PdClient, count: int, key: bytes = b"") -> Region:
    """The region holding `key` once the PD reports `count` voters for it."""
    while True:
        region, _ = await pd.get_region(key)
        voters = 0 if region is None else sum(p.role == PeerRole.VOTER for p in region.peers)
        if region is not None and voters >= count:
            return region
        await trio.sleep(0.1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the OS does not hand it out again at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded here, in the parent: the child between fork and exec then makes one
# system call and takes no lock another thread could have held at the fork.
_LIBC = _load_libc() if sys.platform == "linux" else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcess:
    """A child started from the calling thread (trio's own processes are
    forked from a worker thread, and PR_SET_PDEATHSIG fires when the forking
    *thread* exits, so it could not be used with them)."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        with open(log_path, "ab") as logf:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                # One prctl between fork and exec (see _LIBC): safe with threads.
                preexec_fn=_die_with_parent if _LIBC is not None else None,  # noqa: PLW1509
            )
        self.pid = self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        code = self.popen.poll()
        if code is not None:
            return code
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # No pidfd (not Linux 5.3+): waitpid in a thread.
            return await trio.to_thread.run_sync(self.popen.wait, abandon_on_cancel=True)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        return self.popen.wait()


@dataclass(slots=True)
class Child:
    name: str
    args: list[str]
    log_path: Path
    process: ChildProcess | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass(slots=True)
class StoreSpec:
    index: int
    address: str
    data_dir: Path
    child: Child
    status_address: str = ""
    tls: bool = False  # the status port is HTTPS

    @property
    def status_url(self) -> str:
        """Where the store serves /metrics and /status."""
        return f"{'https' if self.tls else 'http'}://{self.status_address}"

    def set_address(self, flag: str, address: str) -> None:
        """Change the address given to `flag` (--listen, --status); a
        store that advertises its listen address advertises the new one."""
        i = self.child.args.index(flag)
        self.child.args[i + 1] = address
        if flag == "--listen":
            self.address = address
            if "--advertise" in self.child.args:
                self.set_address("--advertise", address)
        elif flag == "--status":
            self.status_address = address


@dataclass(slots=True)
class LocalCluster:
    """`root` holds pd/, store-N/ and logs/. Ports are chosen when the cluster
    is created and kept across restarts of a child."""

    root: Path
    stores: int = 3
    pd_port: int | None = None
    http_port: int | None = None
    # Extra flags (flag -> value) for every store and for the PD.
    store_flags: dict[str, str] = field(default_factory=dict)
    pd_flags: dict[str, str] = field(default_factory=dict)
    # Store i listens, advertises, serves its status and dials from
    # hosts[i - 1] (stand-ins for machines); empty: every store on 127.0.0.1,
    # without --advertise.
    hosts: tuple[str, ...] = ()
    pd_host: str = "127.0.0.1"
    # TLS on every port, with these files (shardkv.tls_files); None: plain.
    tls: TlsFiles | None = None
    python: str = sys.executable
    pd_address: str = ""
    http_address: str = ""
    pd: Child | None = None
    store_specs: list[StoreSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.hosts and len(self.hosts) < self.stores:
            raise ValueError(f"{self.stores} stores need as many hosts, got {list(self.hosts)}")
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.pd_address = f"{self.pd_host}:{self.pd_port or free_port(self.pd_host)}"
        self.http_address = f"{self.pd_host}:{self.http_port or free_port(self.pd_host)}"
        pd_args = [
            "pd",
            "--data-dir",
            str(self.root / "pd"),
            "--listen",
            self.pd_address,
            "--http",
            self.http_address,
        ]
        for k, v in {**self.tls_flags(), **self.pd_flags}.items():
            pd_args += [k, v]
        self.pd = Child("pd", pd_args, self.root / "logs" / "pd.log")
        for i in range(1, self.stores + 1):
            self.store_specs.append(self._store_spec(i))

    def _store_spec(self, i: int, host: str | None = None) -> StoreSpec:
        if host is None and self.hosts:
            if i > len(self.hosts):
                raise ValueError(f"no host for store {i}: hosts are {list(self.hosts)}")
            host = self.hosts[i - 1]
        bind = host or "127.0.0.1"
        address = f"{bind}:{free_port(bind)}"
        status = f"{bind}:{free_port(bind)}"
        data_dir = self.root / f"store-{i}"
        args = ["store", "--data-dir", str(data_dir), "--listen", address, "--pd", self.pd_address]
        if host is not None:
            # What a store on a machine of its own is given: the address
            # every other store and client dials (here the same as --listen).
            args += ["--advertise", address, "--source-host", host]
        args += ["--status", status]
        for k, v in {**self.tls_flags(), **self.store_flags}.items():
            args += [k, v]
        log_path = self.root / "logs" / f"store-{i}.log"
        child = Child(f"store-{i}", args, log_path)
        return StoreSpec(i, address, data_dir, child, status, tls=self.tls is not None)

    def add_store(self, host: str | None = None) -> StoreSpec:
        """One more store, on `host` (default: its entry in `hosts`, else
        127.0.0.1); started by `start_store`."""
        spec = self._store_spec(len(self.store_specs) + 1, host)
        self.store_specs.append(spec)
        return spec

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.http_address}"

    def tls_flags(self) -> dict[str, str]:
        return {} if self.tls is None else self.tls.member_flags()

    def opener(self) -> StreamOpener:
        """How this process connects to the cluster (TLS, with the member
        certificate, when the cluster runs it)."""
        if self.tls is None:
            return open_tcp
        return tls_opener(open_tcp, client_context(str(self.tls.ca)))

    # -- processes -----------------------------------------------------------

    async def _start(self, child: Child) -> None:
        if child.running:
            return
        child.process = ChildProcess([self.python, "-m", "shardkv", *child.args], child.log_path)
        log.debug("started %s (pid %d)", child.name, child.process.pid)
        await trio.lowlevel.checkpoint()

    async def start(self) -> None:
        """Start the PD, then every store."""
        assert self.pd is not None
        await self._start(self.pd)
        for spec in self.store_specs:
            await self._start(spec.child)

    async def start_pd(self) -> None:
        assert self.pd is not None
        await self._start(self.pd)

    async def start_store(self, index: int) -> None:
        await self._start(self.store_specs[index - 1].child)

    def signal_store(self, index: int, sig: signal.Signals) -> None:
        p = self.store_specs[index - 1].child.process
        if p is not None and p.returncode is None:
            p.send_signal(sig)

    async def kill_store(self, index: int) -> None:
        """SIGKILL: no clean shutdown, as in a crash."""
        await self.kill_child(self.store_specs[index - 1].child)

    async def kill_child(self, child: Child) -> None:
        """SIGKILL `child` (the PD or a store) and reap it."""
        if child.process is not None and child.process.returncode is None:
            child.process.kill()
            await child.process.wait()

    async def stop_child(self, child: Child, grace: float = 10.0) -> int | None:
        p = child.process
        if p is None:
            return None
        if p.returncode is None:
            p.terminate()
            with trio.move_on_after(grace):
                await p.wait()
            if p.returncode is None:
                log.warning("%s did not stop in %.0f s; killing it", child.name, grace)
                p.kill()
                await p.wait()
        return p.returncode

    async def stop_store(self, index: int) -> int | None:
        return await self.stop_child(self.store_specs[index - 1].child)

    async def aclose(self) -> None:
        """Stop every child: stores first, then the PD."""
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as n:
                for spec in self.store_specs:
                    n.start_soon(self.stop_child, spec.child)
            if self.pd is not None:
                await self.stop_child(self.pd)

    def children(self) -> list[Child]:
        return ([self.pd] if self.pd else []) + [s.child for s in self.store_specs]

    def dead_children(self) -> list[Child]:
        """Children that exited on their own (crashed)."""
        return [
            c for c in self.children() if c.process is not None and c.process.returncode is not None
        ]

    # -- readiness -------------------------------------------------------------

    async def wait_ready(self, pd: PdClient, *, min_stores: int | None = None) -> None:
        """Wait until the cluster is bootstrapped, every store is up and a
        write and a read succeed. Cancel (or time out) from outside."""
        want = self.stores if min_stores is None else min_stores
        while True:
            dead = self.dead_children()
            if dead:
                names = ", ".join(
                    f"{c.name} (exit {c.process.returncode})" for c in dead if c.process
                )
                raise RuntimeError(f"{names} exited; see the logs in {self.root / 'logs'}")
            with contextlib.suppress(Exception):
                if await pd.is_bootstrapped():
                    stores = await pd.get_all_stores()
                    up = [s for s in stores if s.state == StoreState.UP]
                    if len(up) >= want and await self.write_and_read(pd):
                        return
            await trio.sleep(0.1)

    async def write_and_read(self, pd: PdClient, key: bytes = b"__playground_probe") -> bool:
        """One write and one linearizable read through the region's leader."""
        region, leader = await pd.get_region(key)
        if region is None or leader is None:
            return False
        store = await pd.get_store(leader.store_id)
        if store is None:
            return False
        ctx = kv.Context(region.id, region.epoch, leader)
        try:
            async with connect(store.address, connect_timeout=2, open_stream=self.opener()) as conn:
                w = await conn.call(kv.RawPutRequest(ctx, key, b"ok"), timeout=5)
                if not isinstance(w, kv.RawWriteResponse) or w.region_error or w.error:
                    return False
                r = await conn.call(kv.RawGetRequest(ctx, key), timeout=5)
                return isinstance(r, kv.RawGetResponse) and r.value == b"ok"
        except RpcCallError:
            return False

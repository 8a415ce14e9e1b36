"""PySyncObj for the comparison benchmarks: N processes on loopback, each a
`SyncObj` holding one `ReplDict`, each with a tiny TCP server in front.

PySyncObj is a library, not a server: it has no client protocol. So each
node process (this file run as a script with --node) also listens on a
second 127.0.0.1 port and serves, one thread per connection (PySyncObj's
`sync=True` calls block the calling thread), length-prefixed requests:

    request:  op (1 byte) + payload length (4 bytes, big-endian) + payload
    reply:    status (1 byte: 0 ok, 1 no value, 2 error) + length (4 bytes) + payload

    P  payload = key length (2 bytes) + key + value   ReplDict.set(key, value, sync=True)
    G  payload = key                                  ReplDict.get(key)
    L  is this node the Raft leader? (payload b"1" or b"0")

What that measures: a put is one replicated command, acknowledged once the
leader applied it after a majority appended it to its journal. PySyncObj's
journal (journalFile, on here, with fullDumpFile) is an mmap'd file that it
never fsyncs, so puts are not durable against a machine crash, unlike
shardkv's and etcd's. A get reads the leader's local dict: no ReadIndex, no
lease, not linearizable (a deposed leader answers stale values) -- cheaper
than shardkv's and etcd's reads. The driver keeps one connection per task.
appendEntriesUseBatch is off unless asked for (peers.py --pysyncobj-batch):
on, the library's default, a new entry waits for the next append round
(every 0.1 s), which caps one task at ~10 puts/s.
"""

from __future__ import annotations

import argparse
import socketserver
import struct
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from shardkv.local_cluster import ChildProcess

# This file, run with --node in each node process.
NODE_SCRIPT = str(Path(__file__).resolve())
HEADER = struct.Struct(">cI")
REPLY = struct.Struct(">BI")


# -- the node process (no imports of this repository's packages) -----------------


def serve(raft_address: str, partners: list[str], listen: str, data_dir: Path, batch: bool) -> None:
    import socket

    from pysyncobj import SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplDict

    data_dir.mkdir(parents=True, exist_ok=True)
    store = ReplDict()
    conf = SyncObjConf(
        journalFile=str(data_dir / "journal"),
        fullDumpFile=str(data_dir / "dump"),
        # True (the library's default) sends new entries with the next
        # append round, every appendEntriesPeriod (0.1 s): ~100 ms per put.
        # False sends them at once ("improve single request speed").
        appendEntriesUseBatch=batch,
        dynamicMembershipChange=False,
    )
    node = SyncObj(raft_address, partners, conf=conf, consumers=[store])

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                head = self.rfile.read(HEADER.size)
                if len(head) < HEADER.size:
                    return
                op, size = HEADER.unpack(head)
                payload = self.rfile.read(size)
                status, body = self.dispatch(op, payload)
                self.wfile.write(REPLY.pack(status, len(body)) + body)

        def dispatch(self, op: bytes, payload: bytes) -> tuple[int, bytes]:
            try:
                if op == b"P":
                    (klen,) = struct.unpack_from(">H", payload)
                    key, value = payload[2 : 2 + klen], payload[2 + klen :]
                    store.set(key, value, sync=True, timeout=30)
                    return 0, b""
                if op == b"G":
                    value = store.get(payload)
                    return (1, b"") if value is None else (0, value)
                if op == b"L":
                    return 0, b"1" if node._isLeader() else b"0"
                return 2, b"unknown op " + op
            except Exception as e:  # answered, not fatal to the node
                return 2, repr(e).encode()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 1024

    host, port = listen.rsplit(":", 1)
    with Server((host, int(port)), Handler) as server:
        server.serve_forever()


# -- the driver's side -------------------------------------------------------------


class PySyncObjKv:
    name = "pysyncobj"

    def __init__(self, address: tuple[str, int], leader: str, nodes: int, batch: bool) -> None:
        self.address = address
        self.free: list[trio.SocketStream] = []
        self.opened: list[trio.SocketStream] = []
        self.note = (
            f"pysyncobj {_version()}, {nodes} nodes, appendEntriesUseBatch={batch}, journal + "
            "full dump files on but never fsynced (PySyncObj has no fsync); "
            f"put = ReplDict.set(sync=True) on the leader "
            f"({leader}); get = the leader's local dict (not linearizable); via a "
            "length-prefixed TCP server per node, one thread per connection"
        )

    async def call(self, op: bytes, payload: bytes) -> tuple[int, bytes]:
        stream = self.free.pop() if self.free else await self._open()
        # A call cut short leaves its stream out of step: not reused.
        with trio.fail_after(60):  # the node gives up on a put after 30 s
            await stream.send_all(HEADER.pack(op, len(payload)) + payload)
            head = await _receive_exactly(stream, REPLY.size)
            status, size = REPLY.unpack(head)
            body = await _receive_exactly(stream, size) if size else b""
        self.free.append(stream)
        if status == 2:
            raise RuntimeError(f"pysyncobj node: {body.decode(errors='replace')}")
        return status, body

    async def _open(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(*self.address)
        self.opened.append(stream)
        return stream

    async def put(self, key: bytes, value: bytes) -> None:
        await self.call(b"P", struct.pack(">H", len(key)) + key + value)

    async def get(self, key: bytes) -> bytes | None:
        status, body = await self.call(b"G", key)
        return None if status == 1 else body

    async def scan(self, start: bytes, limit: int) -> int:
        raise NotImplementedError("ReplDict has no ordered scan")

    async def load(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        todo = iter(pairs)

        async def worker() -> None:
            for k, v in todo:
                await self.put(k, v)

        async with trio.open_nursery() as n:
            for _ in range(64):
                n.start_soon(worker)

    async def aclose(self) -> None:
        for s in self.opened:
            await s.aclose()


async def _receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise RuntimeError("pysyncobj node closed the connection")
        buf += chunk
    return buf


def _version() -> str:
    from importlib.metadata import version

    return version("pysyncobj")


@asynccontextmanager
async def open_pysyncobj(
    root: Path, *, nodes: int = 3, batch: bool = False
) -> AsyncIterator[PySyncObjKv]:
    """`nodes` fresh node processes under `root`, as a `PySyncObjKv` talking
    to the leader's server."""
    from benchmarks.systems import stop_processes
    from shardkv.local_cluster import ChildProcess, free_port

    (root / "logs").mkdir(parents=True, exist_ok=True)
    raft = [f"127.0.0.1:{free_port()}" for _ in range(nodes)]
    serve_ports = [free_port() for _ in range(nodes)]
    procs: list[ChildProcess] = []
    kv: PySyncObjKv | None = None
    try:
        for i in range(nodes):
            argv = [
                sys.executable, NODE_SCRIPT, "--node",
                "--raft", raft[i], "--partners", ",".join(a for a in raft if a != raft[i]),
                "--listen", f"127.0.0.1:{serve_ports[i]}", "--data-dir", str(root / f"n{i + 1}"),
                *(["--batch"] if batch else []),
            ]  # fmt: skip
            procs.append(ChildProcess(argv, root / "logs" / f"pysyncobj-n{i + 1}.log"))
        with trio.fail_after(60):
            leader = await _wait_for_leader(serve_ports, procs, root / "logs")
        kv = PySyncObjKv(("127.0.0.1", serve_ports[leader]), f"node n{leader + 1}", nodes, batch)
        with trio.fail_after(60):
            await kv.put(b"__probe", b"ok")  # a first command commits
        yield kv
    finally:
        if kv is not None:
            with trio.CancelScope(shield=True):
                await kv.aclose()
        await stop_processes(procs)


async def _wait_for_leader(ports: list[int], procs: list[ChildProcess], log_dir: Path) -> int:
    """The index of the node that says it leads (asking each server in turn)."""
    while True:
        for i, p in enumerate(procs):
            if p.returncode is not None:
                raise RuntimeError(f"pysyncobj node n{i + 1} exited; see {log_dir}")
        for i, port in enumerate(ports):
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                continue  # not listening yet
            async with stream:
                await stream.send_all(HEADER.pack(b"L", 0))
                _, size = REPLY.unpack(await _receive_exactly(stream, REPLY.size))
                if await _receive_exactly(stream, size) == b"1":
                    return i
        await trio.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", action="store_true", help="run one node (the driver does)")
    parser.add_argument("--raft", required=True, help="this node's Raft address host:port")
    parser.add_argument("--partners", required=True, help="the other nodes' Raft addresses")
    parser.add_argument("--listen", required=True, help="the get/put server's host:port")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--batch", action="store_true", help="appendEntriesUseBatch=True")
    args = parser.parse_args()
    serve(args.raft, args.partners.split(","), args.listen, args.data_dir, args.batch)


if __name__ == "__main__":
    main()

"""etcd for the comparison benchmarks: a cluster of N members on loopback,
driven through its HTTP/JSON gRPC gateway from trio.

Each member is the `etcd` binary (Debian's etcd-server package) with its own
data directory and free 127.0.0.1 ports; fsync is on (etcd's default; etcd
3.4 cannot turn it off). Requests go to the leader's client URL (found with
/maintenance/status) over keep-alive connections, one per concurrent
request at most. Puts are /kv/put; gets are /kv/range with etcd's default
linearizable read (serializable=false); scans are /kv/range from a key with
a limit. Keys and values travel base64 in JSON, as the gateway wants. The
path prefix (/v3, /v3beta or /v3alpha) is the first the cluster serves.

The HTTP client: by default `RawHttp` below, a minimal HTTP/1.1 keep-alive
client on trio streams (~90 us of driver CPU per request here); `httpx`
(AsyncClient on trio through anyio, a pool of as many connections as tasks)
costs ~0.7-1 ms of CPU per request here, so with it a 2-core machine
measures the Python client more than etcd. `http="httpx"` picks it anyway.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import trio

from benchmarks.systems import stop_processes
from shardkv.local_cluster import ChildProcess, free_port

# Path prefixes of the gateway by etcd version: 3.4 serves v3 and v3beta,
# 3.3 v3beta (and v3alpha), 3.2 and older v3alpha.
PREFIXES = ("/v3", "/v3beta", "/v3alpha")
TXN_OPS = 128  # etcd's default --max-txn-ops
REQUEST_TIMEOUT = 30.0  # seconds; a request that takes longer fails the run


class Http(Protocol):
    async def post(self, path: str, body: bytes) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class _Connection:
    """One keep-alive HTTP/1.1 connection: one request at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(1 << 16)
        if not chunk:
            raise ConnectionError("etcd closed the connection")
        self.buf += chunk

    async def _until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            await self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def post(self, host: bytes, path: bytes, body: bytes) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection may be reused)."""
        await self.stream.send_all(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, host, len(body), body)
        )
        lines = (await self._until(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"content-length" in headers:
            data = await self._exactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while size := int((await self._until(b"\r\n")).split(b";")[0], 16):
                parts.append(await self._exactly(size))
                await self._until(b"\r\n")
            while await self._until(b"\r\n"):  # trailers, then an empty line
                pass
            data = b"".join(parts)
        else:
            raise ConnectionError("etcd answered without a length")
        return status, data, headers.get(b"connection") != b"close"


class RawHttp:
    """POSTs to one host over keep-alive connections: a free list that grows
    to the number of concurrent callers."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))
        self.host = f"{host}:{port}".encode()
        self.free: list[_Connection] = []

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        conn = self.free.pop() if self.free else None
        if conn is None:
            conn = _Connection(await trio.open_tcp_stream(*self.address))
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                status, data, reuse = await conn.post(self.host, path.encode(), body)
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        if reuse:
            self.free.append(conn)
        else:
            await conn.stream.aclose()
        return status, data

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            while self.free:
                await self.free.pop().stream.aclose()


class HttpxHttp:
    """The same through httpx.AsyncClient (a keep-alive pool of `pool`)."""

    def __init__(self, url: str, pool: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        self.client = httpx.AsyncClient(
            base_url=url,
            limits=limits,
            timeout=httpx.Timeout(REQUEST_TIMEOUT, pool=None),
            headers={"content-type": "application/json"},
        )

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        r = await self.client.post(path, content=body)
        return r.status_code, r.content

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.client.aclose()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def etcd_version(binary: str = "etcd") -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else "etcd ?"
    return first.replace("etcd Version: ", "etcd ")


class EtcdKv:
    name = "etcd"

    def __init__(self, http: Http, prefix: str, leader: str, members: int, client: str) -> None:
        self.http = http
        self.prefix = prefix
        self.note = (
            f"{etcd_version()}, {members} members, fsync on (default); HTTP/JSON gateway "
            f"{prefix}/kv/put and {prefix}/kv/range (linearizable: serializable=false), "
            f"every request to the leader ({leader}), keep-alive connections ({client})"
        )

    async def _post(self, path: str, body: bytes) -> dict[str, Any]:
        status, data = await self.http.post(self.prefix + path, body)
        if status != 200:
            raise RuntimeError(f"etcd {path}: HTTP {status}: {data[:200]!r}")
        doc: dict[str, Any] = json.loads(data)
        return doc

    async def put(self, key: bytes, value: bytes) -> None:
        await self._post("/kv/put", b'{"key":"%s","value":"%s"}' % (_enc(key), _enc(value)))

    async def get(self, key: bytes) -> bytes | None:
        doc = await self._post("/kv/range", b'{"key":"%s"}' % _enc(key))
        kvs = doc.get("kvs")
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    async def scan(self, start: bytes, limit: int) -> int:
        # range_end "\0" (AA==): every key from `start` on.
        body = b'{"key":"%s","range_end":"AA==","limit":%d}' % (_enc(start), limit)
        doc = await self._post("/kv/range", body)
        return len(doc.get("kvs", ()))

    async def load(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        limiter = trio.CapacityLimiter(8)

        async def txn(chunk: Sequence[tuple[bytes, bytes]]) -> None:
            ops = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in chunk]
            async with limiter:
                await self._post("/kv/txn", json.dumps({"success": ops}).encode())

        async with trio.open_nursery() as n:
            for i in range(0, len(pairs), TXN_OPS):
                n.start_soon(txn, pairs[i : i + TXN_OPS])


def _enc(data: bytes) -> bytes:
    return base64.b64encode(data)


async def _status(url: str, prefix: str) -> dict[str, Any] | None:
    http = RawHttp(url)
    try:
        with trio.move_on_after(2):
            status, data = await http.post(prefix + "/maintenance/status", b"{}")
            if status == 200:
                doc: dict[str, Any] = json.loads(data)
                return doc
    except OSError:
        pass  # not listening yet
    finally:
        await http.aclose()
    return None


async def _find_prefix_and_leader(
    urls: list[str], procs: list[ChildProcess], log_dir: Path
) -> tuple[str, int]:
    """The first gateway prefix this etcd serves and the index of the leader
    in `urls`, once every member answers and they agree on a leader."""
    prefix = None
    while True:
        for i, p in enumerate(procs):
            if p.returncode is not None:
                raise RuntimeError(f"etcd member m{i + 1} exited ({p.returncode}); see {log_dir}")
        if prefix is None:
            for candidate in PREFIXES:
                if await _status(urls[0], candidate) is not None:
                    prefix = candidate
                    break
        if prefix is not None:
            statuses = [await _status(url, prefix) for url in urls]
            ids = [s["header"]["member_id"] for s in statuses if s]
            leaders = {s.get("leader") for s in statuses if s}
            if len(ids) == len(urls) and len(leaders) == 1 and (leader := leaders.pop()) in ids:
                return prefix, ids.index(leader)
        await trio.sleep(0.1)


@asynccontextmanager
async def open_etcd(
    root: Path, *, members: int = 3, pool: int = 256, http: str = "raw"
) -> AsyncIterator[EtcdKv]:
    """A fresh `members`-member etcd cluster under `root`, as an `EtcdKv`;
    `http` is "raw" (RawHttp) or "httpx"."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    client_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(members)]
    peer_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(members)]
    initial = ",".join(f"m{i + 1}={u}" for i, u in enumerate(peer_urls))
    procs: list[ChildProcess] = []
    conn: Http | None = None
    try:
        for i in range(members):
            argv = [
                "etcd",
                "--name", f"m{i + 1}",
                "--data-dir", str(root / f"m{i + 1}"),
                "--listen-client-urls", client_urls[i],
                "--advertise-client-urls", client_urls[i],
                "--listen-peer-urls", peer_urls[i],
                "--initial-advertise-peer-urls", peer_urls[i],
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"bench-{root.name}",
                "--logger", "zap",
            ]  # fmt: skip
            procs.append(ChildProcess(argv, root / "logs" / f"etcd-m{i + 1}.log"))
        with trio.fail_after(60):
            prefix, leader = await _find_prefix_and_leader(client_urls, procs, root / "logs")
        if http == "httpx":
            conn, client = HttpxHttp(client_urls[leader], pool), f"httpx, pool {pool}"
        else:
            conn, client = RawHttp(client_urls[leader]), "minimal HTTP/1.1 client on trio"
        yield EtcdKv(conn, prefix, f"member m{leader + 1}", members, client)
    finally:
        if conn is not None:
            await conn.aclose()
        await stop_processes(procs)

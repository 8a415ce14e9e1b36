"""Moving snapshot files between stores, off the Raft connections.

Sender: one dedicated RPC connection per transfer; the file goes in chunks,
one chunk in flight at a time (bounded memory on both sides, and a slow
receiver slows the sender rather than filling buffers), then a "done"
request carrying the Raft SNAPSHOT message. Receiver: chunks land in a temp
file under `snap/`; on "done" the file is verified (size and CRC-32)
before the Raft message is stepped, so a peer never sees a snapshot whose
data is not all there. A broken transfer leaves nothing behind but a temp
file that is swept; the sender reports failure and Raft retries later.
Both directions are capped in concurrency (per store).

Incremental catch-up (store_node.snapshot_delta): with a `DeltaPolicy`, the
sender first compares hashes with the receiver on the same connection
(`DigestService` answers there, from a worker thread) and, if a delta is
worth it, streams the delta file instead; any failure or refusal before the
delta is installed falls back to the full file on that connection.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from kvproto import codec, rpc
from kvproto.raft_serverpb import (
    RaftMessage,
    SnapshotChunkRequest,
    SnapshotDigestRequest,
    SnapshotDigestResponse,
    SnapshotDoneRequest,
    SnapshotKey,
    SnapshotResponse,
)
from kvproto.rpc import RequestContext
from store_node.engine import Engine
from store_node.snapshot import SnapDir, SnapshotFileError, descriptor_of, verify
from store_node.snapshot_delta import (
    DeltaPolicy,
    Differing,
    NoDelta,
    build_delta,
    check_worth,
    compare,
    exchange,
    step,
    with_descriptor,
)
from store_node.snapshot_digest import SnapshotTree, TreeError, load_tree, tree_path

log = logging.getLogger(__name__)


class SnapshotSendError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a transfer sent: file bytes plus the digest exchange (requests
    and answers), whether a delta went, and the full file's size."""

    sent: int
    full_size: int
    delta: bool = False
    # Why the full file went although a delta was tried ("" otherwise).
    why_full: str = ""

    def count(self, stats: Counter[str]) -> None:
        """Add this transfer to a store's counters (exported as metrics)."""
        stats["delta_snapshots_sent" if self.delta else "full_snapshots_sent"] += 1
        stats["snapshot_bytes_sent"] += self.sent
        stats["snapshot_bytes_whole"] += self.full_size


async def send_snapshot(
    address: str,
    key: SnapshotKey,
    msg: RaftMessage,
    path: Path,
    *,
    chunk_size: int,
    chunk_timeout: float = 30.0,
    open_stream: rpc.StreamOpener = rpc.open_tcp,
    delta: DeltaPolicy | None = None,
) -> SendResult:
    """Send the snapshot of `msg` (its file `path`) to the store at
    `address`, as a delta if `delta` and the receiver's copy allow.
    Raises SnapshotSendError (or an RPC error) if the transfer fails."""
    snap = msg.message.snapshot
    assert snap is not None
    full_size = descriptor_of(snap).size
    async with rpc.connect(address, connect_timeout=chunk_timeout, open_stream=open_stream) as conn:
        why = ""
        digest_bytes = 0
        if delta is not None:
            try:
                plan = await _compare(conn, key, msg, path, delta, chunk_timeout)
                digest_bytes = plan.digest_bytes
                sent = await _send_delta(conn, key, msg, path, plan, chunk_size, chunk_timeout)
                return SendResult(digest_bytes + sent, full_size, delta=True)
            except (NoDelta, TreeError, SnapshotSendError, rpc.RpcCallError) as e:
                why = str(e) or type(e).__name__
                log.info("region %d: no delta snapshot (%s); sending it whole", key.region_id, why)
        sent = await _stream(conn, key, msg, path, chunk_size, chunk_timeout)
    return SendResult(digest_bytes + sent, full_size, why_full=why)


@dataclass(frozen=True, slots=True)
class _Plan:
    tree: SnapshotTree
    found: Differing
    digest_bytes: int


async def _compare(
    conn: rpc.RpcConnection,
    key: SnapshotKey,
    msg: RaftMessage,
    path: Path,
    policy: DeltaPolicy,
    call_timeout: float,
) -> _Plan:
    """The digest exchange; raises NoDelta if no delta is worth sending."""
    snap = msg.message.snapshot
    assert snap is not None
    desc = descriptor_of(snap)
    tree = await trio.to_thread.run_sync(load_tree, tree_path(path))
    steps = exchange(key, desc.region, path, tree, policy)
    nbytes = 0
    # Each step reads the file or builds requests of thousands of ranges:
    # in a thread, off the loop.
    got = await trio.to_thread.run_sync(step, steps, None)
    while not isinstance(got, Differing):
        resp = await conn.call(got, timeout=call_timeout)
        # Encoded again only to count them: small next to the data.
        nbytes += len(codec.dumps(got)) + len(codec.dumps(resp))
        got = await trio.to_thread.run_sync(step, steps, resp)
    found = got
    check_worth(tree, found, desc.size, policy)
    return _Plan(tree, found, nbytes)


async def _send_delta(
    conn: rpc.RpcConnection,
    key: SnapshotKey,
    msg: RaftMessage,
    path: Path,
    plan: _Plan,
    chunk_size: int,
    call_timeout: float,
) -> int:
    """Build the delta file, stream it, delete it."""
    snap = msg.message.snapshot
    assert snap is not None
    out = path.with_name(f"{path.stem}_to_{msg.to_peer.id}.delta")
    try:
        desc = await trio.to_thread.run_sync(
            build_delta, path, descriptor_of(snap), plan.tree, plan.found, out
        )
        return await _stream(conn, key, with_descriptor(msg, desc), out, chunk_size, call_timeout)
    finally:
        out.unlink(missing_ok=True)


async def _stream(
    conn: rpc.RpcConnection,
    key: SnapshotKey,
    msg: RaftMessage,
    path: Path,
    chunk_size: int,
    call_timeout: float,
) -> int:
    """Stream `path` in chunks, then the Raft message; the bytes sent."""
    sent = 0
    async with await trio.open_file(path, "rb") as f:
        while True:
            chunk = await f.read(chunk_size)
            if not chunk:
                break
            resp = await conn.call(SnapshotChunkRequest(key, sent, chunk), timeout=call_timeout)
            _check(resp)
            sent += len(chunk)
    resp = await conn.call(SnapshotDoneRequest(key, msg), timeout=call_timeout * 4)
    _check(resp)
    return sent


def _check(resp: object) -> None:
    if not isinstance(resp, SnapshotResponse):
        raise SnapshotSendError(f"unexpected answer {type(resp).__name__}")
    if resp.error:
        raise SnapshotSendError(resp.error)


@dataclass(slots=True)
class _Incoming:
    tmp: Path
    file: trio.abc.AsyncResource
    next_offset: int
    last_seen: float


# Steps a verified snapshot into the store loop; False if the store refused it.
Deliver = Callable[[RaftMessage, Path], Awaitable[bool]]


class SnapshotReceiver:
    """RPC handlers for incoming snapshot chunks; `max_receives` transfers at
    once, each idle for at most `idle_timeout` seconds before it is dropped."""

    def __init__(
        self,
        snap_dir: SnapDir,
        deliver: Deliver,
        *,
        max_receives: int,
        idle_timeout: float = 60.0,
    ) -> None:
        self.snap_dir = snap_dir
        self._deliver = deliver
        self.max_receives = max_receives
        self.idle_timeout = idle_timeout
        self._active: dict[SnapshotKey, _Incoming] = {}
        self.received = 0
        self.refused = 0

    def handlers(self) -> dict[type, rpc.Handler]:
        return {SnapshotChunkRequest: self.on_chunk, SnapshotDoneRequest: self.on_done}

    async def on_chunk(self, req: SnapshotChunkRequest, _: RequestContext) -> SnapshotResponse:
        t = self._active.get(req.key)
        if req.offset == 0 and t is not None:
            # The sender started over: drop the partial file.
            await self._drop(req.key)
            t = None
        if t is None:
            if req.offset != 0:
                return SnapshotResponse(error="unknown transfer (start at offset 0)")
            if len(self._active) >= self.max_receives:
                self.refused += 1
                return SnapshotResponse(error="too many snapshots being received; retry later")
            tmp = self.snap_dir.received(req.key).with_suffix(".tmp")
            t = _Incoming(tmp, await trio.open_file(tmp, "wb"), 0, trio.current_time())
            self._active[req.key] = t
        if req.offset != t.next_offset:
            await self._drop(req.key)
            return SnapshotResponse(error=f"chunk at {req.offset}, expected {t.next_offset}")
        await t.file.write(req.data)  # type: ignore[attr-defined]
        t.next_offset += len(req.data)
        t.last_seen = trio.current_time()
        return SnapshotResponse()

    async def on_done(self, req: SnapshotDoneRequest, _: RequestContext) -> SnapshotResponse:
        t = self._active.pop(req.key, None)
        if t is None:
            return SnapshotResponse(error="unknown transfer")
        await t.file.aclose()
        snap = req.message.message.snapshot
        try:
            if snap is None:
                raise SnapshotFileError("done without a snapshot message")
            desc = descriptor_of(snap)
            await trio.to_thread.run_sync(verify, t.tmp, desc)
        except Exception as e:
            t.tmp.unlink(missing_ok=True)
            log.warning("snapshot %s refused: %s", req.key, e)
            return SnapshotResponse(error=f"bad snapshot: {e}")
        # A delta's name of its own: a full file of the same key may follow.
        final = self.snap_dir.received(req.key, delta=desc.delta is not None)
        t.tmp.replace(final)
        if not await self._deliver(req.message, final):
            final.unlink(missing_ok=True)
            return SnapshotResponse(error="refused by the store (stale or overlapping)")
        self.received += 1
        return SnapshotResponse()

    async def _drop(self, key: SnapshotKey) -> None:
        t = self._active.pop(key, None)
        if t is not None:
            with trio.CancelScope(shield=True):
                await t.file.aclose()
            t.tmp.unlink(missing_ok=True)

    async def run_sweeper(self) -> None:
        """Drop transfers whose sender went quiet (it failed or died)."""
        while True:
            await trio.sleep(self.idle_timeout / 2)
            now = trio.current_time()
            for key, t in list(self._active.items()):
                if now - t.last_seen > self.idle_timeout:
                    log.info("snapshot %s: sender idle, transfer dropped", key)
                    await self._drop(key)


class DigestService:
    """Answers digest requests (store_node.snapshot_delta.compare) from a
    worker thread, `limiter` bounding how many run at once."""

    def __init__(self, engine: Engine, limiter: trio.CapacityLimiter) -> None:
        self.engine = engine
        self.limiter = limiter

    def handlers(self) -> dict[type, rpc.Handler]:
        return {SnapshotDigestRequest: self.on_digest}

    async def on_digest(
        self, req: SnapshotDigestRequest, _: RequestContext
    ) -> SnapshotDigestResponse:
        return await trio.to_thread.run_sync(compare, self.engine, req, limiter=self.limiter)

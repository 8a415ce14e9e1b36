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
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from kvproto import rpc
from kvproto.raft_serverpb import (
    RaftMessage,
    SnapshotChunkRequest,
    SnapshotDoneRequest,
    SnapshotKey,
    SnapshotResponse,
)
from kvproto.rpc import RequestContext
from store_node.snapshot import SnapDir, SnapshotFileError, descriptor_of, verify

log = logging.getLogger(__name__)


class SnapshotSendError(Exception):
    pass


async def send_snapshot(
    address: str,
    key: SnapshotKey,
    msg: RaftMessage,
    path: Path,
    *,
    chunk_size: int,
    chunk_timeout: float = 30.0,
    open_stream: rpc.StreamOpener = rpc.open_tcp,
) -> int:
    """Stream `path` to the store at `address`; returns the bytes sent.
    Raises SnapshotSendError (or an RPC error) if the transfer fails."""
    sent = 0
    async with rpc.connect(address, connect_timeout=chunk_timeout, open_stream=open_stream) as conn:
        async with await trio.open_file(path, "rb") as f:
            while True:
                chunk = await f.read(chunk_size)
                if not chunk:
                    break
                req = SnapshotChunkRequest(key, sent, chunk)
                resp = await conn.call(req, timeout=chunk_timeout)
                _check(resp)
                sent += len(chunk)
        resp = await conn.call(SnapshotDoneRequest(key, msg), timeout=chunk_timeout * 4)
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
        final = self.snap_dir.received(req.key)
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

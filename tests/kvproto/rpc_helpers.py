"""Test-only messages (tags 9100+), a service with controllable handlers,
and helpers to reach an RpcServer over loopback TCP or in-memory streams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from kvproto.codec import encode_cbor, to_wire, wire
from kvproto.frame import FrameReader, encode_frame
from kvproto.rpc import Echo, RequestContext, RpcServer, StreamOpener, echo_handler
from kvproto.rpc.envelope import decode_envelopes


@wire(9100)
@dataclass(frozen=True, slots=True)
class Hold:
    """Answered once the test releases `key` (or never)."""

    key: int


@wire(9101)
@dataclass(frozen=True, slots=True)
class Boom:
    """Its handler raises."""

    message: str


@wire(9102)
@dataclass(frozen=True, slots=True)
class Note:
    """A one-way message; `seq` < 0 makes its handler raise."""

    seq: int


@wire(9103)
@dataclass(frozen=True, slots=True)
class Unhandled:
    """Registered, but no server handles it."""

    x: int


@wire(9104)
@dataclass(frozen=True, slots=True)
class Payload:
    """A `Hold` carrying `data`: a large frame, answered once `key` is
    released."""

    key: int
    data: bytes


@wire(9105)
@dataclass(frozen=True, slots=True)
class Memo:
    """A one-way message carrying `data`, handled once `key` is released."""

    key: int
    data: bytes


class Service:
    """Handlers whose progress tests can observe and control."""

    def __init__(self) -> None:
        self.gates: dict[int, trio.Event] = {}
        self.running = 0
        self.max_running = 0
        self.finished: list[int] = []
        self.notes: list[int] = []
        self.memos: list[int] = []
        self._memos_changed = trio.Event()
        self._notes_wanted = 0
        self._notes_arrived = trio.Event()
        self._running_changed = trio.Event()

    def gate(self, key: int) -> trio.Event:
        return self.gates.setdefault(key, trio.Event())

    async def hold(self, request: Hold, ctx: RequestContext) -> Echo:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self._running_changed.set()
        self._running_changed = trio.Event()
        try:
            await self.gate(request.key).wait()
        finally:
            self.running -= 1
        self.finished.append(request.key)
        return Echo(str(request.key).encode())

    async def payload(self, request: Payload, ctx: RequestContext) -> Echo:
        return await self.hold(Hold(request.key), ctx)

    async def memo(self, msg: Memo, ctx: RequestContext) -> None:
        await self.gate(msg.key).wait()
        self.memos.append(msg.key)
        self._memos_changed.set()
        self._memos_changed = trio.Event()

    async def wait_memos(self, count: int) -> None:
        while len(self.memos) < count:
            await self._memos_changed.wait()

    async def wait_running(self, count: int) -> None:
        """Wait until `count` Hold handlers are running at once."""
        while self.running < count:
            await self._running_changed.wait()

    async def boom(self, request: Boom, ctx: RequestContext) -> Echo:
        raise RuntimeError(request.message)

    async def note(self, msg: Note, ctx: RequestContext) -> None:
        if msg.seq < 0:
            raise ValueError(f"bad note {msg.seq}")
        self.notes.append(msg.seq)
        if len(self.notes) >= self._notes_wanted:
            self._notes_arrived.set()

    async def wait_notes(self, count: int) -> None:
        self._notes_wanted = count
        if len(self.notes) < count:
            self._notes_arrived = trio.Event()
            await self._notes_arrived.wait()

    def server(self, **kwargs: Any) -> RpcServer:
        return RpcServer(
            {Echo: echo_handler, Hold: self.hold, Boom: self.boom, Payload: self.payload},
            {Note: self.note, Memo: self.memo},
            **kwargs,
        )


async def start_tcp_server(nursery: trio.Nursery, server: RpcServer) -> str:
    host, port = await nursery.start(server.serve, "127.0.0.1", 0)
    return f"{host}:{port}"


class MemoryNetwork:
    """A StreamOpener connecting to `server` through in-memory streams, so
    tests can run under the autojump clock. Keeps the server-side streams
    so a test can cut a connection from the server's end."""

    def __init__(self, server: RpcServer, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery
        self.server_streams: list[trio.abc.Stream] = []
        self.attempts = 0

    async def open_stream(self, address: str) -> trio.abc.Stream:
        self.attempts += 1
        client, server_side = trio.testing.memory_stream_pair()
        self.server_streams.append(server_side)
        self.nursery.start_soon(self.server.handle_connection, server_side, "memory")
        return client

    @property
    def opener(self) -> StreamOpener:
        return self.open_stream


def envelope(kind: int, request_id: int, body: Any) -> bytes:
    """A raw frame, for speaking the protocol badly on purpose."""
    return encode_frame(encode_cbor([kind, request_id, body]))


def request_frame(request_id: int, msg: object) -> bytes:
    return envelope(0, request_id, to_wire(msg))


def oneway_frame(msg: object) -> bytes:
    return envelope(3, 0, to_wire(msg))


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closed)."""
    data = bytearray()
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except trio.BrokenResourceError:
        pass
    return bytes(data)


async def read_envelopes(stream: trio.abc.ReceiveStream, count: int) -> list[list[Any]]:
    """The next `count` envelopes a server sends, as [kind, id, body] lists,
    whether each came in its own frame or several shared a BATCH."""
    reader = FrameReader(stream)
    envelopes: list[list[Any]] = []
    while len(envelopes) < count:
        frame = await reader.receive_frame()
        assert frame is not None
        envelopes += [list(e) for e in decode_envelopes(frame)]
    assert len(envelopes) == count
    return envelopes

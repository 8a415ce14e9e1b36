"""A client connection to one address that comes back after failures.

Stores use it to talk to each other and clients to talk to stores. It
connects lazily (on the first call), and after a connection fails or is
lost it connects again on the next call. Failed attempts back off
exponentially with jitter: while backing off, calls fail at once with
RpcUnavailableError instead of waiting, so a Raft transport can drop its
message and a client's retry loop (which owns the retry policy) decides
what to do. It never retries a call itself.

Timing uses the trio clock only and randomness an injected random.Random,
so tests run under trio's MockClock.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from kvproto.frame import DEFAULT_MAX_FRAME_SIZE
from kvproto.rpc.client import RpcConnection, StreamOpener, open_connection_stream, open_tcp
from kvproto.rpc.errors import RpcUnavailableError
from plumbing.nursery import open_background_nursery

__all__ = ["Backoff", "ReconnectingConnection", "open_reconnecting"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """An exponential backoff with jitter: the n-th wait in a row is
    ``d = initial * multiplier ** (n - 1)``, capped at `max_delay`, of which
    a random fraction up to `jitter` is taken off, so that many clients that
    lost the same store do not come back in lockstep. The default jitter of
    1/2 draws the wait from ``[d / 2, d]`` ("equal jitter").

    The schedule of a connection's attempts (here), and of a client's retry
    waits, one per reason (`client.retry`).
    """

    initial: float = 0.05
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.5

    def delay(self, n: int, rng: random.Random) -> float:
        """Seconds of the n-th (>= 1) wait in a row; the result lies in
        ``[(1 - jitter) * d, d]``."""
        exponent = min(n - 1, 64)  # far past any cap, short of overflow
        d = min(self.max_delay, self.initial * self.multiplier**exponent)
        return d * (1.0 - self.jitter) + d * self.jitter * rng.random()


class ReconnectingConnection:
    """Calls to one address over a connection made, and remade, on demand.

    The connection's tasks run in `nursery`, which must outlive this object
    (`open_reconnecting` provides one). Errors are those of RpcConnection;
    additionally RpcUnavailableError while backing off, after `aclose`, or
    when the caller's timeout expires before the connection is up (the
    request was not sent).
    """

    def __init__(
        self,
        address: str,
        nursery: trio.Nursery,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        connect_timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        open_stream: StreamOpener = open_tcp,
    ) -> None:
        self.address = address
        self._nursery = nursery
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._connect_timeout = connect_timeout
        self._max_frame_size = max_frame_size
        self._open_stream = open_stream
        self._conn: RpcConnection | None = None
        self._connecting: trio.Event | None = None
        self._closed = False
        # Consecutive failed attempts, and when the next one may start (trio
        # clock); both reset by a successful connect.
        self.failures = 0
        self._retry_at = float("-inf")
        self._last_error = ""

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed

    @property
    def current(self) -> RpcConnection | None:
        """The open connection, if there is one (no connecting)."""
        conn = self._conn
        return conn if conn is not None and not conn.is_closed else None

    @property
    def retry_at(self) -> float:
        """Trio time before which no connection attempt is made."""
        return self._retry_at

    async def call(self, request: object, *, timeout: float | None = None) -> object:  # noqa: ASYNC109
        """Like RpcConnection.call, connecting first if needed; `timeout`
        covers connecting too."""
        deadline = float("inf") if timeout is None else trio.current_time() + timeout
        conn = await self._connection(deadline)
        if timeout is None:
            return await conn.call(request)
        return await conn.call(request, timeout=max(0.0, deadline - trio.current_time()))

    async def send_oneway(self, msg: object) -> None:
        """Like RpcConnection.send_oneway, connecting first if needed."""
        conn = await self._connection(trio.current_time() + self._connect_timeout)
        await conn.send_oneway(msg)

    def close(self) -> None:
        """Close the current connection; later calls raise RpcUnavailableError."""
        self._closed = True
        if self._conn is not None:
            self._conn.close()

    async def aclose(self) -> None:
        self.close()
        if self._conn is not None:
            await self._conn.aclose()

    async def _connection(self, deadline: float) -> RpcConnection:
        while True:
            if self._closed:
                raise RpcUnavailableError(f"{self.address}: connection closed")
            if self._conn is not None and not self._conn.is_closed:
                return self._conn
            if self._connecting is not None:
                # Another task is connecting: share its attempt.
                with trio.move_on_at(deadline):
                    await self._connecting.wait()
                    continue
                raise RpcUnavailableError(f"{self.address}: not connected within the timeout")
            now = trio.current_time()
            if now < self._retry_at:
                raise RpcUnavailableError(
                    f"{self.address}: backing off for {self._retry_at - now:.3f} s after "
                    f"{self.failures} failed attempts ({self._last_error})"
                )
            return await self._connect(deadline)

    async def _connect(self, deadline: float) -> RpcConnection:
        self._connecting = connecting = trio.Event()
        try:
            stream: trio.abc.Stream | None = None
            with trio.move_on_at(deadline):
                try:
                    stream = await open_connection_stream(
                        self.address, self._open_stream, self._connect_timeout
                    )
                except RpcUnavailableError as e:
                    self._failed(str(e))
                    raise
            if stream is None:
                # The caller's deadline, not the connection, ran out: this
                # attempt says nothing about the address, so no backoff.
                raise RpcUnavailableError(f"{self.address}: not connected within the timeout")
        finally:
            self._connecting = None
            connecting.set()
        conn = RpcConnection(stream, peer=self.address, max_frame_size=self._max_frame_size)
        self._conn = conn
        self.failures = 0
        self._retry_at = float("-inf")
        self._nursery.start_soon(conn.run)
        logger.debug("%s: connected", self.address)
        return conn

    def _failed(self, error: str) -> None:
        self.failures += 1
        delay = self._backoff.delay(self.failures, self._rng)
        self._retry_at = trio.current_time() + delay
        self._last_error = error
        logger.info("%s (attempt %d); next attempt in %.3f s", error, self.failures, delay)


@asynccontextmanager
async def open_reconnecting(
    address: str,
    *,
    backoff: Backoff | None = None,
    rng: random.Random | None = None,
    connect_timeout: float = 5.0,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    open_stream: StreamOpener = open_tcp,
) -> AsyncIterator[ReconnectingConnection]:
    """``async with open_reconnecting("host:port") as conn``: a
    ReconnectingConnection with its own nursery, closed on exit."""
    async with open_background_nursery() as nursery:
        conn = ReconnectingConnection(
            address,
            nursery,
            backoff=backoff,
            rng=rng,
            connect_timeout=connect_timeout,
            max_frame_size=max_frame_size,
            open_stream=open_stream,
        )
        try:
            yield conn
        finally:
            conn.close()

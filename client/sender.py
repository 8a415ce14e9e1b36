"""Sending one request to one region, attempt after attempt.

`RequestSender` (one per client) makes a call's retry state
(`client.retry.Attempts`, with its deadline), numbers write calls in the
client's session (exactly-once writes: `client.session`), sends each
attempt to the peer the region cache names (`client.locate`), has
`client.retry.judge` decide what the answer means, and carries out that
decision: the routing is updated and the backoff slept before the caller
locates again and retries.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

from client import retry
from client.attempts import Attempts, Decision, GiveUp, OpKind, Retry
from client.cache import CachedRegion
from client.checks import check_positive
from client.config import ClientConfig
from client.errors import ClientClosed, InvalidArgument
from client.locate import RegionLocator
from client.reads import STRONG_READ, ReadMode
from client.retry import Answer
from client.session import Session
from kvproto import kvrpcpb as kv
from kvproto.codec import EncodeError
from kvproto.rpc import RpcCallError

__all__ = ["RequestSender"]

A = TypeVar("A", bound=Answer)


class RequestSender:
    """Attempts of the client's calls, routed by `regions`."""

    def __init__(self, regions: RegionLocator, config: ClientConfig, rng: random.Random) -> None:
        self.regions = regions
        self.config = config
        self._rng = rng
        self._closed = False
        # Opened at the first write (exactly-once writes).
        self._session: Session | None = None

    def close(self) -> None:
        """Refuse calls from now on (ClientClosed) and close the connections."""
        self._closed = True
        self.regions.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def attempts(
        self, what: str, kind: OpKind, timeout: float | None, mode: ReadMode = STRONG_READ
    ) -> Attempts:
        """The retry state of a new call; its deadline is `timeout` from now
        (None: the config's). A read in `mode` may go to any replica."""
        if self._closed:
            raise ClientClosed(what)
        t = self.config.timeout if timeout is None else timeout
        check_positive(what, "timeout", t)
        return Attempts(
            what,
            kind,
            trio.current_time() + t,
            t,
            self._rng,
            backoffs=self.config.backoffs,
            attempt_timeout=self.config.attempt_timeout,
            any_replica=mode.any_replica,
        )

    # -- sessions -----------------------------------------------------------

    @contextmanager
    def request(self, att: Attempts) -> Iterator[None]:
        """A write call's lifetime as a numbered request of the client's
        session (no session unless `ClientConfig.exactly_once`)."""
        att.begin_request(self._current_session())
        try:
            yield
        finally:
            att.end_request()

    def _current_session(self) -> Session | None:
        if not self.config.exactly_once:
            return None
        if self._session is None:
            # Wall time: the regions compare it with the log's clock.
            self._session = Session.open(self._rng, int(time.time() * 1000))
        return self._session

    def _renew_session(self, att: Attempts) -> None:
        """The region forgot our session: this request (never applied) and
        the ones after it go on in a new one."""
        att.end_request()
        self._session = None
        att.begin_request(self._current_session())

    # -- attempts -----------------------------------------------------------

    async def single(
        self, att: Attempts, key: bytes, request_for: Callable[[kv.Context], object], ans: type[A]
    ) -> A:
        """Send a one-key request until it is answered (or raise)."""
        while True:
            entry = await self.regions.locate(att, key)
            resp = await self.call(att, entry, request_for, ans)
            if resp is not None:
                return resp

    async def single_write(
        self, att: Attempts, key: bytes, request_for: Callable[[kv.Context], object], ans: type[A]
    ) -> A:
        """`single` for a write: one numbered request of the session."""
        with self.request(att):
            return await self.single(att, key, request_for, ans)

    async def call(
        self,
        att: Attempts,
        entry: CachedRegion,
        request_for: Callable[[kv.Context], object],
        ans: type[A],
    ) -> A | None:
        """One attempt at `entry`'s region. Returns the answer, or None once
        the routing was updated and the backoff slept (the caller locates
        again and retries). Raises ClientError when giving up."""
        att.check(trio.current_time())
        if self._closed:
            raise ClientClosed(att.what)
        cache = self.regions.cache
        peer = retry.choose_peer(att, entry, self.regions.suspects())
        if peer is None:
            await self.wait(att, retry.on_no_peer(cache, entry, att))
            return None
        conn = await self.regions.connection(att, entry, peer.store_id)
        if conn is None:
            return None
        ctx = kv.Context(entry.region.id, entry.region.epoch, peer)
        att.attempts += 1
        try:
            resp: object = await conn.call(
                request_for(ctx), timeout=att.attempt_budget(trio.current_time())
            )
        except EncodeError as e:
            raise InvalidArgument(att.what, f"request cannot be sent: {e}") from None
        except RpcCallError as e:
            resp = e
        verdict = retry.judge(cache, entry, peer, resp, ans, att)
        if isinstance(verdict, Retry | GiveUp):
            await self.wait(att, verdict)
            return None
        self.regions.answered(peer.store_id)
        return verdict

    async def wait(self, att: Attempts, decision: Decision) -> None:
        """Carry out a retry decision (a new session if it says so; the rest
        is `RegionLocator.wait`)."""
        if isinstance(decision, Retry) and decision.renew_session:
            self._renew_session(att)
        await self.regions.wait(att, decision)

"""Client requests entering the store core, answered by callback.

Writes and reads call the core directly rather than through the store
loop's event channel: admission only queues work on the peer (the next
round takes it), which is safe whenever the loop awaits, and saves a
channel hop per request. The caller (the store's shell, or the simulation)
then wakes its loop. Replies come back through a `Callback` token when the
round that decides them ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kvproto.errorpb import RegionError, ServerIsBusy
from kvproto.kvrpcpb import Consistency, Context, SessionRef
from kvproto.raft_cmdpb import WriteOp
from store_node.core import StoreCore
from store_node.peer import Peer, ReadPermit, Reply, ReplyValue, WriteDone

log = logging.getLogger(__name__)

STARTING = ServerIsBusy("the store is starting", backoff_ms=100)


class Callback:
    """A core token that hands the reply to a function (deferred RPC
    handlers). The function runs inside the store loop: it must not block,
    and its failure is logged, never raised into the loop."""

    __slots__ = ("_done", "_fn")

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self._fn = fn
        self._done = False

    def set(self, value: ReplyValue) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._fn(value)
        except Exception:
            log.exception("a request's reply callback failed")


def admit_write(
    core: StoreCore | None,
    ctx: Context,
    ops: tuple[WriteOp, ...],
    nbytes: int,
    session: SessionRef | None,
    done: Callable[[WriteDone | RegionError], None],
    refusal: RegionError | None = None,
) -> None:
    """Queue a client write; `done` gets its reply (at once if refused).
    With `refusal` (the store's disk is full: `store_node.disk`) every write
    that reaches a leader here gets it instead of being proposed."""
    if core is None:
        done(STARTING)
        return
    if refusal is not None:
        # Routing errors first: they send the client to the leader, which
        # may be on a store with room.
        routed = core.check_context(ctx)
        done(refusal if isinstance(routed, Peer) else routed)
        return
    token = Callback(done)
    err = core.propose_write(token, ctx, ops, nbytes, session)
    if err is not None:
        token.set(err)


def admit_read(
    core: StoreCore | None,
    ctx: Context,
    bounds: Sequence[bytes],
    done: Callable[[ReadPermit | RegionError], None],
    consistency: Consistency = Consistency.STRONG,
    max_staleness: float = 0.0,
    now: float | None = None,
) -> None:
    """Queue a read of `consistency` (a stale one accepting `max_staleness`
    seconds); `done` gets its permit (or why not): at once for a strong read
    the leader's lease covers at `now`."""
    if core is None:
        done(STARTING)
        return
    token = Callback(done)
    if consistency == Consistency.STRONG:
        err = core.read(token, ctx, bounds, now)
        if isinstance(err, ReadPermit):
            done(err)
            return
    else:
        err = core.replica_read(token, ctx, bounds, consistency, max_staleness)
    if err is not None:
        token.set(err)


def answer(replies: Iterable[Reply]) -> None:
    """Hand a round's replies to their callbacks (other tokens are orders
    nobody waits for)."""
    for reply in replies:
        if isinstance(reply.token, Callback):
            reply.token.set(reply.value)

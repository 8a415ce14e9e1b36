"""What an `RpcServer` grants peers it does not trust, beyond framing's
limits (kvproto.frame): a connection slot (`Admission`), and the cost of
decoding a large frame (`DecodeGate`). The values, and why, are in
kvproto.rpc.server's module doc; this module is the mechanism.

Both run on the server's trio thread only (not thread-safe).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Final, Protocol

import trio

from kvproto.codec import CborCost, CostLimitError, cbor_cost
from kvproto.frame import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, FrameBudget, FrameLimitError

__all__ = [
    "DECODE_CHECK_SIZE",
    "DEFAULT_EVICT_IDLE_AFTER",
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_DECODE_RATIO",
    "DEFAULT_MAX_FRAME_ITEMS",
    "Activity",
    "Admission",
    "DecodeGate",
    "FrameHold",
    "Slot",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_FRAME_TIMEOUT: Final = 30.0
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_EVICT_IDLE_AFTER: Final = 5.0
# Room for two frames of the largest size.
DEFAULT_MAX_BUFFERED_BYTES: Final = 2 * (HEADER_SIZE + DEFAULT_MAX_FRAME_SIZE)
DEFAULT_MAX_FRAME_ITEMS: Final = 1 << 20
DEFAULT_MAX_DECODE_RATIO: Final = 32.0
# Any frame the per-frame limits let through fits: 2^20 items are at most
# ~100 MB of objects besides the frame's own string bytes (64 MiB at most).
DEFAULT_MAX_DECODED_BYTES: Final = 256 * 1024 * 1024
# Frames up to this size are decoded without a cost check: at most 64 Ki
# items, about 5 MB of objects.
DECODE_CHECK_SIZE: Final = 64 * 1024
# Worker threads checking the cost of large frames at once, per server.
_COST_CHECKERS: Final = 2
# Items a frame's cost check may walk on the loop before it moves to a
# thread: about 3 ms (0.2 us an item); the thread hop costs ~0.1-0.3 ms.
_INLINE_ITEMS: Final = 16384


# -- connection slots -----------------------------------------------------------------


class Activity(Protocol):
    """What admission asks of a served connection it may evict."""

    @property
    def busy(self) -> bool:
        """Work in progress: requests not answered, one-way messages queued
        or running, a frame waiting for decode budget."""
        ...

    @property
    def last_frame(self) -> float | None:
        """When its latest frame was complete (trio time); None before the
        first."""
        ...


class Slot:
    """One connection's place under `max_connections`, from accept to
    close. Cancelling `scope` (which the server runs the connection in)
    evicts it."""

    __slots__ = ("activity", "evicted", "opened", "peer", "scope")

    def __init__(self, peer: str, opened: float) -> None:
        self.peer = peer
        self.opened = opened
        self.scope = trio.CancelScope()
        # Set once its handshakes are done and it is served.
        self.activity: Activity | None = None
        self.evicted = False

    @property
    def proven(self) -> bool:
        """Whether it has completed a frame (after any handshake)."""
        return self.activity is not None and self.activity.last_frame is not None

    def idle_since(self) -> float | None:
        """Since when it has done nothing; None while it is busy."""
        activity = self.activity
        if activity is None:
            return self.opened
        if activity.busy:
            return None
        last = activity.last_frame
        return self.opened if last is None else last


class Admission:
    """Who holds the server's `max_connections` slots. At the limit, a
    newcomer takes the place of the oldest connection that has not completed
    a frame yet, else of the one idle longest if idle `evict_idle_after` or
    more, else it is refused (closed at once). Refusals and evictions are
    counted, and logged once when a stretch at the limit starts and once
    when it ends."""

    def __init__(self, max_connections: int, evict_idle_after: float) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        self.evict_idle_after = evict_idle_after
        # In order of arrival, so the first unproven one met is the oldest.
        self._slots: dict[Slot, None] = {}
        self.refused = 0
        self.evicted = 0
        # (refused, evicted) when the current stretch at the limit began.
        self._stretch: tuple[int, int] | None = None

    @property
    def open(self) -> int:
        return len(self._slots)

    def admit(self, peer: str) -> Slot | None:
        """A slot for a new connection, or None: refused."""
        now = trio.current_time()
        if len(self._slots) >= self.max_connections:
            if self._stretch is None:
                self._stretch = (self.refused, self.evicted)
                logger.warning(
                    "%s: %d connections open, the limit (max_connections): newcomers now take "
                    "the place of the oldest connection that has sent no frame yet, else of "
                    "one idle %g s or more, else are refused; counted, and logged when "
                    "connections are below the limit again",
                    peer,
                    len(self._slots),
                    self.evict_idle_after,
                )
            victim = self._victim(now)
            if victim is None:
                self.refused += 1
                return None
            self._evict(victim, now)
        elif self._stretch is not None:
            refused, evicted = self._stretch
            logger.warning(
                "below max_connections again, after refusing %d connections and evicting %d",
                self.refused - refused,
                self.evicted - evicted,
            )
            self._stretch = None
        slot = Slot(peer, now)
        self._slots[slot] = None
        return slot

    def leave(self, slot: Slot) -> None:
        self._slots.pop(slot, None)

    def _victim(self, now: float) -> Slot | None:
        # A scan only at the limit: 1,024 slots take ~0.1 ms, against an
        # ordered index that every frame of every connection would update.
        idlest: Slot | None = None
        since = math.inf
        for slot in self._slots:
            if not slot.proven:
                return slot
            t = slot.idle_since()
            if t is not None and t < since:
                idlest, since = slot, t
        if idlest is not None and now - since >= self.evict_idle_after:
            return idlest
        return None

    def _evict(self, slot: Slot, now: float) -> None:
        del self._slots[slot]
        self.evicted += 1
        slot.evicted = True
        slot.scope.cancel()
        idle = slot.idle_since()
        logger.debug(
            "%s: evicted for a newcomer (max_connections): %s",
            slot.peer,
            "no frame yet" if not slot.proven else f"idle {now - (idle or now):.1f} s",
        )


# -- decoding -------------------------------------------------------------------------


class FrameHold:
    """A large frame's reservation of decoded bytes, shared by the
    messages it carried: the dispatcher holds one reference, each message
    handed on (a request to its handler task, a queued one-way) one more;
    the last `done` gives the bytes back."""

    __slots__ = ("_budget", "_refs", "size")

    def __init__(self, budget: FrameBudget, size: int) -> None:
        self._budget = budget
        self.size = size
        self._refs = 1

    def add(self) -> None:
        self._refs += 1

    def done(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            self._budget.release(self.size)


class DecodeGate:
    """The decoding of frames over `DECODE_CHECK_SIZE`: a cost check
    before (items, ratio of decoded to wire size), then a reservation of
    the estimated decoded size from `budget` (`max_decoded_bytes`), shared
    by every connection of the server, held while the frame's messages are
    decoded, dispatched and handled (`FrameHold`)."""

    def __init__(
        self, *, max_frame_items: int, max_decode_ratio: float, max_decoded_bytes: int
    ) -> None:
        self.max_frame_items = max_frame_items
        self.max_decode_ratio = max_decode_ratio
        self.budget = FrameBudget(max_decoded_bytes)
        self._checkers: trio.CapacityLimiter | None = None

    async def check_cost(self, frame: bytes) -> CborCost:
        """The cost of decoding `frame`; DecodeError if it would cost more
        than the limits allow: the items, the ratio, or more than the whole
        budget (it could never be reserved). The walk starts on the loop,
        where it may take `_INLINE_ITEMS` items (a few ms; a frame of large
        values or a snapshot chunk has a handful), and goes on in a worker
        thread for a frame of more."""
        max_memory = min(int(self.max_decode_ratio * len(frame)), self.budget.limit)
        try:
            return cbor_cost(
                frame, max_items=min(_INLINE_ITEMS, self.max_frame_items), max_memory=max_memory
            )
        except CostLimitError as e:
            if not e.over_items or self.max_frame_items <= _INLINE_ITEMS:
                raise
        if self._checkers is None:
            self._checkers = trio.CapacityLimiter(_COST_CHECKERS)
        check = functools.partial(
            cbor_cost, frame, max_items=self.max_frame_items, max_memory=max_memory
        )
        return await trio.to_thread.run_sync(check, limiter=self._checkers)

    async def reserve(self, frame: bytes, max_wait: float | None) -> FrameHold:
        """Check `frame`'s cost and reserve its decoded size, waiting (first
        come first served) up to `max_wait` seconds for budget to free:
        FrameLimitError after that, DecodeError if it costs too much."""
        cost = await self.check_cost(frame)
        if max_wait is None:
            await self.budget.acquire(cost.memory)
            return FrameHold(self.budget, cost.memory)
        with trio.move_on_after(max_wait):
            await self.budget.acquire(cost.memory)
            return FrameHold(self.budget, cost.memory)
        raise FrameLimitError(
            f"no decode budget freed within {max_wait:g} s for a frame of {len(frame):,} bytes "
            f"({cost.memory:,} decoded; large frames of other connections hold it)"
        )

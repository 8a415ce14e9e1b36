"""A client's session: the numbering of its writes for exactly-once
application (see `store_node.sessions` for the regions' side).

Pure: no I/O, no clock (the opening time comes in), randomness from the
caller's `random.Random`.

Every write call takes the next number (`begin`) and gives it back when it
returns or raises (`end`); every attempt of the call carries the same
number in a `SessionRef` (`ref`). A region that applied the number answers a
retry from its record instead of applying it again. `acked_below` tells the
regions which answers the client no longer needs: every number below the
oldest call still running.

Many tasks share one session (numbers are handed out in order, calls end in
any order).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sortedcontainers import SortedSet

from kvproto.kvrpcpb import SessionRef

__all__ = ["SESSION_ID_SIZE", "Session"]

SESSION_ID_SIZE = 16


@dataclass(slots=True)
class Session:
    session_id: bytes
    # The client's wall clock when the session opened (ms since the epoch).
    opened_at_ms: int
    next_seq: int = 1
    _running: SortedSet[int] = field(default_factory=SortedSet)

    @classmethod
    def open(cls, rng: random.Random, now_ms: int) -> Session:
        return cls(rng.randbytes(SESSION_ID_SIZE), now_ms)

    def begin(self) -> int:
        """The number of a new write call."""
        seq = self.next_seq
        self.next_seq += 1
        self._running.add(seq)
        return seq

    def end(self, seq: int) -> None:
        """The call numbered `seq` returned or raised: its answer is no longer
        needed (a copy of it applied later is not applied: it stays unknown)."""
        self._running.discard(seq)

    def acked_below(self) -> int:
        return self._running[0] if self._running else self.next_seq

    def ref(self, seq: int, retry: bool) -> SessionRef:
        """What an attempt of call `seq` carries; `retry`: an earlier attempt
        may have been applied."""
        return SessionRef(self.session_id, seq, self.acked_below(), retry, self.opened_at_ms)

    @property
    def running(self) -> int:
        return len(self._running)

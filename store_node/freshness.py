"""How stale a peer's applied state may be, for stale reads.

A ReadIndex round started at `started_at` (by this store's monotonic clock)
comes back with a read index: the leader's commit index at a time after
the round started, confirmed by a quorum. Every write acknowledged before
`started_at` was committed by then, so it is at or below that index; once
the peer has applied up to the index, its state holds every such write.
`fresh_at` is the start of the latest round of this peer (as leader, or
forwarded as a follower) whose index it has applied (a lease read counts
as a round started at its `now`): a stale read answered from the applied
state is at most `now - fresh_at` old. Both instants are read on this
store's clock, so no clocks are compared; only its rate can make the
figure off (by its drift).

The rounds come from reads (strong or follower) and, while stale reads are
being asked, from background renewals: once the staleness passes half of
the tightest bound asked lately, a round with no reads waiting is started
(spaced by a quarter of that bound: a round may be lost), for as long as
`RENEW_FOR` bounds after the last stale read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

# Background renewals go on for this many times the bound asked after the
# last stale read, so that reads coming at a steady pace find the peer fresh.
RENEW_FOR: Final = 2.0


@dataclass(slots=True)
class Freshness:
    # Monotonic time before which every acknowledged write is applied here.
    fresh_at: float = -math.inf
    # The tightest `max_staleness` (seconds) of the stale reads asked lately,
    # and when the latest one was asked.
    want: float = 0.0
    asked_at: float = -math.inf
    # When the latest ReadIndex round of the peer was started.
    last_round_at: float = -math.inf

    def staleness(self, now: float) -> float:
        return max(0.0, now - self.fresh_at)

    def confirmed(self, started_at: float) -> None:
        """The peer applied the read index of a round started at `started_at`."""
        self.fresh_at = max(self.fresh_at, started_at)

    def asked(self, now: float, max_staleness: float) -> None:
        """A stale read accepting `max_staleness` seconds was asked at `now`."""
        if now - self.asked_at > RENEW_FOR * self.want:
            self.want = max_staleness  # the earlier demand has lapsed
        else:
            self.want = min(self.want, max_staleness)
        self.asked_at = now

    def wants_renewal(self, now: float) -> bool:
        """Stale reads were asked lately and half of their bound is gone:
        start a round now, so that the next ones are still fresh enough."""
        return (
            now - self.asked_at <= RENEW_FOR * self.want
            and now - self.fresh_at > self.want / 2
            and now - self.last_round_at >= self.want / 4
            and now > self.last_round_at
        )

"""The leader lease: reads answered from the leader's applied state, without
a heartbeat round, while no other leader can exist (Raft thesis 6.4.1).

Why it is safe. A follower that acknowledges a heartbeat reset its election
timer on receipt and then refuses votes (`raft` CheckQuorum, and
`quiet_after_start` across a restart) until it has counted
`election_ticks` more ticks. Its ticks are submitted at least one tick
interval apart, in order with the messages (store_node.node), so no other
leader can be elected before `(election_ticks - 1) * tick_interval` after
the heartbeat left. A round of heartbeats started at `sent_at` (by this
store's monotonic clock, before the messages leave) and acknowledged by a
quorum therefore proves that nobody else leads until
`sent_at + (election_ticks - 1) * tick_interval`; the lease ends a margin
earlier for clock drift between the stores.

What breaks it before it ends: a leader transfer (the transferee campaigns
at once, and voters grant a transfer's vote even while they hear from us),
a conf change (a new majority may never have acknowledged the round) and a
split. Each suspends the lease: rounds started before it no longer renew
it, only a round started after it does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Lease:
    # Seconds a quorum-acknowledged round keeps the lease from its start;
    # 0 turns lease reads off.
    duration: float
    # Monotonic time at which the lease ends, and the term it is valid in.
    until: float = -math.inf
    term: int = 0
    # Bumped by `suspend`: a round started under an older generation proves
    # nothing about the time after the suspension.
    generation: int = 0
    # When the latest ReadIndex round was started (renewals are spaced).
    last_round_at: float = -math.inf

    def valid(self, now: float, term: int) -> bool:
        return term == self.term and now < self.until

    def renew(self, sent_at: float, term: int, generation: int) -> None:
        """A round started at `sent_at` in `term` under `generation` was
        acknowledged by a quorum."""
        if generation != self.generation or self.duration <= 0:
            return
        until = sent_at + self.duration
        if term != self.term:
            self.term, self.until = term, until
        else:
            self.until = max(self.until, until)

    def suspend(self) -> None:
        self.generation += 1
        self.until = -math.inf

    def wants_renewal(self, now: float, term: int) -> bool:
        """Reads are being served from the lease and half of it is gone:
        start a round now, so that the next reads still find it valid (one
        per quarter of a lease at most: a round may be lost)."""
        return (
            self.valid(now, term)
            and self.until - now < self.duration / 2
            and now - self.last_round_at >= self.duration / 4
        )


def lease_duration(election_ticks: int, tick_interval: float, margin: float) -> float:
    """The lease for a store's timing settings (0: no lease reads)."""
    return max(0.0, (election_ticks - 1) * tick_interval - margin)

"""The shape of a simulated Raft group: `Options` says what a test fixes
(`None`: draw it from the seed), `Params` holds what a run got, drawn in one
fixed order from the simulation's `random.Random`, and the Raft `Config` of
its nodes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from raft import Config

from .network import Faults


@dataclass(slots=True)
class Options:
    """Shape of a simulated cluster. `None` fields are drawn from the seed."""

    voters: int | None = None  # founding voters (3 or 5)
    election_ticks: int = 10
    heartbeat_ticks: int | None = None
    pre_vote: bool | None = None
    check_quorum: bool | None = None
    max_inflight: int | None = None
    max_inflight_bytes: int | None = None
    max_size_per_msg: int | None = None
    # Small: committed entries are handed out over several Readys.
    max_committed_size_per_ready: int | None = None
    step_down_on_removal: bool | None = None
    tick_interval: int = 10  # time units per tick (each node drifts +-10%)
    persist_delay_max: int | None = None
    # Probability that a Ready without must_sync is written lazily.
    lazy_sync: float | None = None
    # Probability of a crash at each point inside the handling of a Ready:
    # in the middle of its write (torn), after it, after persisted messages.
    crash_in_persist: float | None = None
    # Take a snapshot every this many applied entries (0: never).
    snapshot_every: int | None = None
    # Entries kept in the log below a snapshot when compacting.
    compact_keep: int | None = None
    # Probability that a leader asked for a stale snapshot builds a new one.
    fresh_snapshot: float = 0.7
    # Probability that a node defers ready() a little after an input, so
    # that several inputs go into one Ready (a store's round).
    batch_ready: float | None = None


T = TypeVar("T")


def _draw(value: T | None, draw: Callable[[], T]) -> T:
    return draw() if value is None else value


@dataclass(slots=True)
class Params:
    """The shape a run got (see `Options` for what each field means).
    `crash_in_persist` drops to 0 when the simulation heals."""

    voters: int
    election_ticks: int
    heartbeat_ticks: int
    pre_vote: bool
    check_quorum: bool
    max_inflight: int
    max_size_per_msg: int
    max_inflight_bytes: int
    max_committed_size_per_ready: int
    step_down_on_removal: bool
    tick_interval: int
    persist_delay_max: int
    lazy_sync: float
    crash_in_persist: float
    snapshot_every: int
    compact_keep: int
    fresh_snapshot: float
    batch_ready: float

    @classmethod
    def draw(cls, o: Options, rng: random.Random) -> Params:
        """The fields `o` leaves None drawn from `rng`, always in this order."""
        voters = _draw(o.voters, lambda: rng.choice((3, 3, 5)))
        heartbeat_ticks = _draw(o.heartbeat_ticks, lambda: rng.choice((1, 2, 3)))
        pre_vote = _draw(o.pre_vote, lambda: rng.random() < 0.8)
        check_quorum = _draw(o.check_quorum, lambda: rng.random() < 0.8)
        max_inflight = _draw(o.max_inflight, lambda: rng.choice((1, 4, 64)))
        max_size_per_msg = _draw(o.max_size_per_msg, lambda: rng.choice((1, 64, 1 << 20)))
        max_inflight_bytes = _draw(o.max_inflight_bytes, lambda: rng.choice((0, 0, 100)))
        max_committed_size_per_ready = _draw(
            o.max_committed_size_per_ready, lambda: rng.choice((1, 100, 64 << 20))
        )
        step_down_on_removal = _draw(o.step_down_on_removal, lambda: rng.random() < 0.8)
        persist_delay_max = _draw(o.persist_delay_max, lambda: rng.choice((0, 5, 20)))
        lazy_sync = _draw(o.lazy_sync, lambda: rng.choice((0.0, 0.5)))
        crash_in_persist = _draw(o.crash_in_persist, lambda: rng.choice((0.0, 0.003)))
        snapshot_every = _draw(o.snapshot_every, lambda: rng.choice((0, 8, 30)))
        compact_keep = _draw(o.compact_keep, lambda: rng.choice((0, 3, 20)))
        batch_ready = _draw(o.batch_ready, lambda: rng.choice((0.0, 0.5)))
        return cls(
            voters=voters,
            election_ticks=o.election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            max_inflight=max_inflight,
            max_size_per_msg=max_size_per_msg,
            max_inflight_bytes=max_inflight_bytes,
            max_committed_size_per_ready=max_committed_size_per_ready,
            step_down_on_removal=step_down_on_removal,
            tick_interval=o.tick_interval,
            persist_delay_max=persist_delay_max,
            lazy_sync=lazy_sync,
            crash_in_persist=crash_in_persist,
            snapshot_every=snapshot_every,
            compact_keep=compact_keep,
            fresh_snapshot=o.fresh_snapshot,
            batch_ready=batch_ready,
        )

    def describe(self) -> str:
        return (
            f"voters={self.voters} election={self.election_ticks} "
            f"heartbeat={self.heartbeat_ticks} prevote={self.pre_vote} "
            f"checkquorum={self.check_quorum} inflight={self.max_inflight} "
            f"inflight_bytes={self.max_inflight_bytes} msgsize={self.max_size_per_msg} "
            f"ready_apply_bytes={self.max_committed_size_per_ready} "
            f"stepdown={self.step_down_on_removal} persist_delay<={self.persist_delay_max} "
            f"lazy_sync={self.lazy_sync} crash_in_persist={self.crash_in_persist} "
            f"snapshot_every={self.snapshot_every} keep={self.compact_keep} "
            f"batch_ready={self.batch_ready}"
        )

    def raft_config(self, nid: int, applied: int) -> Config:
        return Config(
            id=nid,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_size_per_msg=self.max_size_per_msg,
            max_inflight_msgs=self.max_inflight,
            max_inflight_bytes=self.max_inflight_bytes,
            max_committed_size_per_ready=self.max_committed_size_per_ready,
            step_down_on_removal=self.step_down_on_removal,
            applied=applied,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
        )

    def ticks_per_entry(self) -> int:
        """Worst ticks to replicate and apply one more entry when throughput
        is the limit: at least `max_inflight` entries per round trip (two
        network delays, a follower's write, the leader's write), and at
        least one entry per Ready (a deferred ready(), a write)."""
        rtt = 2 * Faults().delay_max + 2 * self.persist_delay_max
        replicate = -(-rtt // (self.tick_interval * self.max_inflight))
        apply = -(-(self.persist_delay_max + 6) // self.tick_interval)
        return replicate + apply + 1

    def max_tick_time(self, ticks: int) -> int:
        """The most time units `ticks` ticks can take on a node that drifts."""
        return ticks * (self.tick_interval + max(1, self.tick_interval // 10))

"""The retry state of a call: its kind, its deadline, its backoffs, its
place in the client's session, and what a retry decision is.

Pure: no I/O, no trio, no clock, no global random. Time comes in as `now`
(the shell's trio clock), randomness from the `random.Random` of the call.
`client.retry` (the policy) makes the decisions; `Attempts.plan` turns
one into the seconds to sleep, or raises.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Final, TypeAlias

from client.errors import (
    ClientError,
    DeadlineExceeded,
    PdUnavailable,
    StoreDiskFull,
    UndeterminedError,
)
from client.session import Session
from kvproto.kvrpcpb import SessionRef
from kvproto.metapb import StoreId
from kvproto.rpc.reconnect import Backoff

__all__ = [
    "DEFAULT_BACKOFFS",
    "Attempts",
    "BackoffKind",
    "CallState",
    "Decision",
    "GiveUp",
    "OpKind",
    "Retry",
]


class OpKind(Enum):
    READ = "read"
    # put, delete, batch_put, batch_delete, delete_range: applying one twice
    # leaves the same state as applying it once.
    WRITE = "write"
    # compare_and_set, put_if_absent, get_and_put: the answer depends on the
    # state before, so a second application answers differently.
    CONDITIONAL_WRITE = "conditional write"


class BackoffKind(Enum):
    """Why a retry waits; each kind has its own exponential schedule (a
    `kvproto.rpc.reconnect.Backoff`: equal jitter, doubling up to a cap)."""

    REGION_MISS = "region miss"  # the cache was wrong: reload and retry
    LEADER = "leader"  # no leader known (election), or a stale proposal
    STORE = "store"  # a store could not be reached
    BUSY = "busy"  # a store sheds load
    DISK_FULL = "disk full"  # a store refuses writes until space is freed
    PD = "pd"  # the PD could not be reached or erred


DEFAULT_BACKOFFS: Final[Mapping[BackoffKind, Backoff]] = MappingProxyType(
    {
        BackoffKind.REGION_MISS: Backoff(initial=0.002, max_delay=0.5),
        BackoffKind.LEADER: Backoff(initial=0.01, max_delay=0.5),
        BackoffKind.STORE: Backoff(initial=0.05, max_delay=1.0),
        BackoffKind.BUSY: Backoff(initial=0.05, max_delay=2.0),
        # Space comes back when an operator frees it, or the region's
        # leader moves: no point asking often.
        BackoffKind.DISK_FULL: Backoff(initial=0.2, max_delay=2.0),
        BackoffKind.PD: Backoff(initial=0.1, max_delay=2.0),
    }
)


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again: at once (`backoff` None) or after a wait of that kind, and
    in any case not before `floor` seconds (a store's own backoff hint).
    The shell forgets the address of `forget_store` first (it may have
    moved)."""

    backoff: BackoffKind | None
    floor: float = 0.0
    forget_store: StoreId | None = None
    # Retry as a new request in a new client session (the old one expired).
    renew_session: bool = False


@dataclass(frozen=True, slots=True)
class GiveUp:
    error: ClientError


Decision: TypeAlias = Retry | GiveUp


@dataclass(slots=True)
class CallState:
    """What the parts of one call share (a batch's region groups)."""

    part_applied: bool = False


@dataclass(slots=True)
class Attempts:
    """The retry state of one call, or of one region group of a batch call.

    Mutated by the decision functions and by the shell; never shared
    between concurrent tasks (a batch gives each group its own `child`).
    """

    what: str
    kind: OpKind
    deadline: float  # trio time
    timeout: float  # the whole budget, for messages
    rng: random.Random
    backoffs: Mapping[BackoffKind, Backoff] = field(default_factory=lambda: DEFAULT_BACKOFFS)
    # Immediate retries in a row before they back off too: bounds a loop of
    # stores pointing at each other.
    max_free_retries: int = 3
    attempts: int = 0
    last_cause: str = ""
    # Whether the last cause was the PD (a deadline then says PdUnavailable).
    pd_cause: bool = False
    # The store whose full disk was the last cause (a deadline then says
    # StoreDiskFull).
    full_store: StoreId | None = None
    # A write attempt may have been applied (a deadline then says
    # UndeterminedError).
    maybe_executed: bool = False
    # Stores that failed this call: pick other peers until the PD is asked again.
    avoid: set[StoreId] = field(default_factory=set)
    # Exactly-once writes: the client's session and this request's number in
    # it (None: no session).
    session: Session | None = None
    seq: int = 0
    # The longest one attempt may wait for its answer before the call tries
    # another peer (a store that is stopped or cut off never answers).
    attempt_timeout: float = math.inf
    # Whether the last attempt's timeout was `attempt_timeout` rather than
    # what was left of the deadline.
    capped: bool = False
    # Shared by a call and all its parts: whether some part of a write was
    # applied (a multi-region write that then fails wrote part of itself).
    call: CallState = field(default_factory=CallState)
    # A follower or stale read: any replica may serve it. Its attempts go
    # to a replica chosen to spread the load (`replica_attempt`: one that is
    # not the leader hint) until one fails; then to the leader
    # (`leader_only`).
    any_replica: bool = False
    replica_attempt: bool = False
    leader_only: bool = False
    _tries: dict[BackoffKind, int] = field(default_factory=dict)
    _free: int = 0

    @property
    def is_write(self) -> bool:
        return self.kind is not OpKind.READ

    @property
    def exactly_once(self) -> bool:
        return self.session is not None

    def begin_request(self, session: Session | None) -> None:
        """The write this state retries is a new request (numbered in
        `session`): nothing of it has been sent yet."""
        self.session = session
        self.seq = session.begin() if session is not None else 0
        self.maybe_executed = False

    def end_request(self) -> None:
        if self.session is not None:
            self.session.end(self.seq)

    def session_ref(self) -> SessionRef | None:
        """What the next attempt carries (None: no session)."""
        if self.session is None:
            return None
        return self.session.ref(self.seq, retry=self.maybe_executed)

    def child(self, what: str) -> Attempts:
        """The state for a part of this call (a region group after a
        re-split): same deadline and rng, fresh counters; an unknown outcome
        so far stays unknown."""
        return Attempts(
            what,
            self.kind,
            self.deadline,
            self.timeout,
            self.rng,
            self.backoffs,
            self.max_free_retries,
            last_cause=self.last_cause,
            pd_cause=self.pd_cause,
            full_store=self.full_store,
            maybe_executed=self.maybe_executed,
            session=self.session,
            seq=self.seq,
            attempt_timeout=self.attempt_timeout,
            call=self.call,
            any_replica=self.any_replica,
            leader_only=self.leader_only,
        )

    def note(self, cause: str, *, pd: bool = False, full_store: StoreId | None = None) -> None:
        self.last_cause = cause
        self.pd_cause = pd
        self.full_store = full_store

    def remaining(self, now: float) -> float:
        return max(0.0, self.deadline - now)

    def attempt_budget(self, now: float) -> float:
        """The timeout of the attempt about to be sent."""
        left = self.remaining(now)
        self.capped = self.attempt_timeout < left
        return min(left, self.attempt_timeout)

    def applied(self) -> None:
        """A part of this call got its answer (a write part was applied)."""
        self.call.part_applied = True

    def expired(self) -> ClientError:
        """The error for a deadline that passed."""
        if self.is_write and self.maybe_executed:
            return UndeterminedError(
                self.what, f"deadline of {self.timeout:g} s exceeded; {self.last_cause}"
            )
        if self.is_write and self.call.part_applied:
            # DeadlineExceeded would promise that nothing was written.
            return UndeterminedError(
                self.what,
                f"deadline of {self.timeout:g} s exceeded after part of the call was "
                f"written; {self.last_cause}",
            )
        if self.full_store is not None:
            return StoreDiskFull(
                self.what, self.timeout, self.attempts, self.full_store, self.last_cause
            )
        cls = PdUnavailable if self.pd_cause else DeadlineExceeded
        return cls(self.what, self.timeout, self.attempts, self.last_cause or "no answer")

    def check(self, now: float) -> None:
        """Raise the deadline's error if it has passed."""
        if now >= self.deadline:
            raise self.expired()

    def plan(self, decision: Decision, now: float) -> float:
        """Seconds to wait before the next attempt. Raises the decision's
        error when it gives up, and the deadline's error when the wait would
        reach the deadline (no point sleeping into it)."""
        if isinstance(decision, GiveUp):
            raise decision.error
        delay = self._delay(decision)
        if now + delay >= self.deadline:
            raise self.expired()
        return delay

    def _delay(self, decision: Retry) -> float:
        kind = decision.backoff
        if kind is None:
            self._free += 1
            if self._free <= self.max_free_retries:
                return 0.0
            kind = BackoffKind.REGION_MISS
        else:
            self._free = 0
        n = self._tries.get(kind, 0) + 1
        self._tries[kind] = n
        return max(self.backoffs[kind].delay(n, self.rng), decision.floor)

"""The retry policy: what one failed attempt means, and what to do next.

Pure: no I/O, no trio, no clock, no global random. Time comes in as `now`
(the shell's trio clock), randomness from the `random.Random` of the call.

An attempt sends one request to one peer of one region. When it fails, the
decision functions below update the region cache (a pure `RegionCache`) and
return a `Decision`: retry (at once, or after a backoff of some kind), or
give up with a `client.errors` exception. `Attempts.plan` turns a decision
into the seconds to sleep, or raises.

The policy (see also `POLICY`, which the docs and tests print):

* Exactly-once writes: a write call of a client with a session
  (`Attempts.session`, the default) carries one request number in every
  attempt, and a region that applied it answers a retry from its record
  instead of applying it again (`store_node.sessions`). So every write,
  conditional or not, is retried after an unknown outcome, and
  `maybe_executed` remembers it (sent along as `SessionRef.retry`), so that
  the deadline then raises `UndeterminedError` rather than
  `DeadlineExceeded` (which promises that nothing was written). If the
  region forgot the session (SESSION_EXPIRED), a call that may have been
  applied raises `UndeterminedError`; one that cannot have been is retried
  in a new session.
* Without a session, whether an answer proves the request was NOT applied
  decides what a conditional write (compare-and-set and friends, which are
  not idempotent) may do: retry only after such proof; otherwise raise
  `UndeterminedError`. Plain writes are retried after an unknown outcome
  too; a retry may then apply twice (a put after a later delete).
* Proof of non-execution: `RpcUnavailableError` (never sent); `NotLeader`
  (refused at admission, or the proposal was refused by Raft);
  `EpochNotMatch`, `KeyNotInRegion` (refused at admission, or re-checked
  at apply time where nothing of the command is written); `ServerIsBusy`,
  `StoreNotMatch` (admission); `StaleCommand` (the proposal's log entry was
  overwritten or can never commit: `store_node.peer.Peer.resolve_applied`).
* NOT proof: `UndeterminedResult` (the proposal's entry may have been
  committed by another leader and reached this peer only in a snapshot:
  `Peer.resolve_snapshot`). `RegionNotFound`. A store answers it at admission (no peer
  here), but also to the proposals in flight of a peer it destroys
  (`StoreCore._destroy` -> `Peer.fail_all`), and such a proposal may
  already be committed under another leader. `RpcConnectionLostError`,
  `RpcTimeoutError`, `RpcProtocolError`, `RpcRemoteError(INTERNAL)`: the
  request may have run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Final, Protocol, TypeAlias, TypeVar

from client.cache import CachedRegion, RegionCache
from client.errors import (
    ClientError,
    DeadlineExceeded,
    InvalidArgument,
    PdUnavailable,
    StoreError,
    UndeterminedError,
)
from client.session import Session
from kvproto.errorpb import (
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    RegionError,
    RegionNotFound,
    ServerIsBusy,
    StaleCommand,
    StoreNotMatch,
    UndeterminedResult,
)
from kvproto.kvrpcpb import KvError, KvErrorCode, SessionRef
from kvproto.metapb import Peer, StoreId
from kvproto.rpc import (
    RpcCallError,
    RpcConnectionLostError,
    RpcProtocolError,
    RpcTimeoutError,
    RpcUnavailableError,
)

__all__ = [
    "DEFAULT_BACKOFFS",
    "POLICY",
    "Answer",
    "Attempts",
    "BackoffConfig",
    "BackoffKind",
    "CallState",
    "Decision",
    "GiveUp",
    "OpKind",
    "Retry",
    "judge",
    "on_no_peer",
    "on_pd_error",
    "on_region_error",
    "on_region_unknown",
    "on_rpc_error",
    "on_session_expired",
    "on_store_unknown",
    "proves_not_applied",
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
    """Why a retry waits; each kind has its own exponential schedule."""

    REGION_MISS = "region miss"  # the cache was wrong: reload and retry
    LEADER = "leader"  # no leader known (election), or a stale proposal
    STORE = "store"  # a store could not be reached
    BUSY = "busy"  # a store sheds load
    PD = "pd"  # the PD could not be reached or erred


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    """``base * 2 ** (n - 1)`` for the n-th wait of a kind, capped at `cap`;
    the wait is drawn uniformly from ``[d / 2, d]`` ("equal jitter")."""

    base: float
    cap: float


DEFAULT_BACKOFFS: Final[Mapping[BackoffKind, BackoffConfig]] = MappingProxyType(
    {
        BackoffKind.REGION_MISS: BackoffConfig(0.002, 0.5),
        BackoffKind.LEADER: BackoffConfig(0.01, 0.5),
        BackoffKind.STORE: BackoffConfig(0.05, 1.0),
        BackoffKind.BUSY: BackoffConfig(0.05, 2.0),
        BackoffKind.PD: BackoffConfig(0.1, 2.0),
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


# error -> (proves not applied, action) for the docs, the report and a test
# that keeps this table honest against the code.
POLICY: Final[tuple[tuple[str, str, str], ...]] = (
    ("RpcUnavailableError", "yes", "avoid the store, reload region from PD, back off (store)"),
    (
        "RpcConnectionLostError",
        "no",
        "avoid the store, reload, back off (store); conditional without a session: "
        "UndeterminedError",
    ),
    (
        "RpcTimeoutError",
        "no",
        "deadline reached: read DeadlineExceeded, write UndeterminedError; attempt timeout "
        "(attempt_timeout) before the deadline: as RpcConnectionLostError",
    ),
    (
        "RpcRemoteError INTERNAL",
        "no",
        "read StoreError; write: retry in its session (without one: UndeterminedError)",
    ),
    ("RpcRemoteError other", "yes", "StoreError"),
    (
        "RpcProtocolError",
        "no",
        "read StoreError; write: retry in its session (without one: UndeterminedError)",
    ),
    (
        "NotLeader(leader in region)",
        "yes",
        "follow the hint at once (after a leader backoff if it names a store that failed)",
    ),
    ("NotLeader(leader not in region)", "yes", "reload region from PD, back off (region miss)"),
    ("NotLeader(no leader)", "yes", "try the next peer, back off (leader)"),
    ("EpochNotMatch(newer regions)", "yes", "cache the regions, retry at once (re-split)"),
    ("EpochNotMatch(nothing newer)", "yes", "reload region from PD, back off (region miss)"),
    (
        "RegionNotFound",
        "no",
        "avoid the store, reload, back off (region miss); conditional without a session: "
        "UndeterminedError",
    ),
    ("KeyNotInRegion", "yes", "reload region from PD, back off (region miss)"),
    ("ServerIsBusy", "yes", "back off (busy), at least the store's backoff_ms"),
    ("StaleCommand", "yes", "back off (leader) and retry"),
    (
        "UndeterminedResult",
        "no",
        "back off (leader) and retry; conditional without a session: UndeterminedError",
    ),
    ("StoreNotMatch", "yes", "forget the store's address, reload region, back off (region miss)"),
    (
        "KvError SESSION_EXPIRED",
        "yes",
        "UndeterminedError if an earlier attempt may have applied, else a new session",
    ),
    ("KvError other", "yes", "InvalidArgument"),
    ("PD unreachable or PdServerError", "yes", "back off (pd); at the deadline PdUnavailable"),
)


def proves_not_applied(error: RegionError | RpcCallError) -> bool:
    """Whether this answer to a write proves that the write was not applied
    (see the module docstring for the evidence)."""
    if isinstance(error, RpcCallError):
        return not error.may_have_executed
    return not isinstance(error, RegionNotFound | UndeterminedResult)


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
    backoffs: Mapping[BackoffKind, BackoffConfig] = field(default_factory=lambda: DEFAULT_BACKOFFS)
    # Immediate retries in a row before they back off too: bounds a loop of
    # stores pointing at each other.
    max_free_retries: int = 3
    attempts: int = 0
    last_cause: str = ""
    # Whether the last cause was the PD (a deadline then says PdUnavailable).
    pd_cause: bool = False
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
    call: CallState = field(default_factory=lambda: CallState())
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
            maybe_executed=self.maybe_executed,
            session=self.session,
            seq=self.seq,
            attempt_timeout=self.attempt_timeout,
            call=self.call,
        )

    def note(self, cause: str, *, pd: bool = False) -> None:
        self.last_cause = cause
        self.pd_cause = pd

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
        cfg = self.backoffs[kind]
        d = min(cfg.cap, cfg.base * 2.0 ** min(n - 1, 64))
        return max(d / 2 + self.rng.random() * d / 2, decision.floor)


def _undetermined(att: Attempts, cause: str) -> GiveUp:
    return GiveUp(UndeterminedError(att.what, cause))


def on_region_error(
    cache: RegionCache, entry: CachedRegion, peer: Peer, err: RegionError, att: Attempts
) -> Decision:
    """A store answered `err` to a request for `entry`'s region sent to `peer`."""
    cause = f"store {peer.store_id}: {err}"
    att.note(cause)
    region = entry.region
    if att.is_write and not proves_not_applied(err):
        if att.kind is OpKind.CONDITIONAL_WRITE and not att.exactly_once:
            cache.invalidate_region(region)
            return _undetermined(att, cause)
        att.maybe_executed = True

    if isinstance(err, NotLeader):
        hint = err.leader
        if hint is None:
            # An election is on: ask the next peer, after a wait. Once the
            # round comes back to a store that failed us, give it another
            # chance (it may be back, and the others know no leader).
            nxt = entry.next_peer_after(peer)
            entry.leader = nxt
            if nxt is not None:
                att.avoid.discard(nxt.store_id)
            return Retry(BackoffKind.LEADER)
        if region.find_peer(hint.id) is None:
            # A peer we do not know: our membership is stale.
            cache.invalidate_region(region)
            return Retry(BackoffKind.REGION_MISS)
        entry.leader = hint
        if hint.store_id in att.avoid:
            # A store that failed us earlier in this call leads, says a
            # peer: believe it (its failure may have passed), after a wait.
            att.avoid.discard(hint.store_id)
            return Retry(BackoffKind.LEADER)
        if hint.id == peer.id:
            return Retry(BackoffKind.LEADER)
        return Retry(None)
    if isinstance(err, EpochNotMatch):
        if cache.update_from_epoch_not_match(err.current_regions, peer.store_id):
            return Retry(None)
        # Nothing newer than what we sent: the store is behind us, or the
        # cache holds another stale view. Ask the PD again, later.
        cache.invalidate_region(region)
        return Retry(BackoffKind.REGION_MISS)
    if isinstance(err, RegionNotFound):
        att.avoid.add(peer.store_id)
        cache.invalidate_region(region)
        return Retry(BackoffKind.REGION_MISS)
    if isinstance(err, KeyNotInRegion):
        cache.invalidate_region(region)
        return Retry(BackoffKind.REGION_MISS)
    if isinstance(err, ServerIsBusy):
        return Retry(BackoffKind.BUSY, floor=max(err.backoff_ms, 0) / 1000)
    if isinstance(err, StaleCommand | UndeterminedResult):
        return Retry(BackoffKind.LEADER)
    if isinstance(err, StoreNotMatch):
        cache.invalidate_region(region)
        return Retry(BackoffKind.REGION_MISS, forget_store=peer.store_id)
    raise AssertionError(f"unknown region error {err!r}")


def on_rpc_error(
    cache: RegionCache, entry: CachedRegion, peer: Peer, err: RpcCallError, att: Attempts
) -> Decision:
    """The call to `peer`'s store failed with `err`."""
    cause = f"store {peer.store_id}: {err}"
    att.note(cause)
    if isinstance(err, RpcTimeoutError) and not att.capped:
        # The attempt had what was left of the deadline: it is gone.
        if att.kind is OpKind.CONDITIONAL_WRITE and not att.exactly_once:
            return _undetermined(att, cause)
        att.maybe_executed = att.maybe_executed or att.is_write
        return GiveUp(att.expired())
    if isinstance(err, RpcConnectionLostError | RpcTimeoutError):
        # The connection died with the request in flight, or the store did
        # not answer within the attempt's time (stopped, cut off, or a
        # leader that cannot commit): it may have run; try elsewhere.
        if att.kind is OpKind.CONDITIONAL_WRITE and not att.exactly_once:
            cache.invalidate_region(entry.region)
            return _undetermined(att, cause)
        att.maybe_executed = att.maybe_executed or att.is_write
    elif not isinstance(err, RpcUnavailableError):
        # The store answered, but not with a response (RpcRemoteError,
        # RpcProtocolError): a read or a write that did not run gets no
        # better by retrying; a write that may have run is retried in its
        # session to learn its answer.
        if att.is_write and err.may_have_executed:
            if not att.exactly_once:
                return _undetermined(att, cause)
            att.maybe_executed = True
            return Retry(BackoffKind.STORE)
        return GiveUp(StoreError(att.what, cause))
    # Not sent, or sent and lost for a call that may be retried: the store
    # may be gone. Try other peers; ask the PD where the region is now.
    att.avoid.add(peer.store_id)
    cache.invalidate_region(entry.region)
    return Retry(BackoffKind.STORE, forget_store=peer.store_id)


class Answer(Protocol):
    """What every KV response has (kvproto.kvrpcpb)."""

    @property
    def region_error(self) -> RegionError | None: ...

    @property
    def error(self) -> KvError | None: ...


A = TypeVar("A", bound=Answer)


def judge(
    cache: RegionCache,
    entry: CachedRegion,
    peer: Peer,
    outcome: object,
    expected: type[A],
    att: Attempts,
) -> A | Decision:
    """What one attempt sent to `peer` for `entry`'s region came to: the
    response (an `expected`), or the decision about the next attempt.
    `outcome` is what came back: a response, or the `RpcCallError` the call
    raised. Raises InvalidArgument for a request no retry can fix."""
    if isinstance(outcome, RpcCallError):
        return on_rpc_error(cache, entry, peer, outcome, att)
    if not isinstance(outcome, expected):
        wrong = RpcProtocolError(f"expected {expected.__name__}, got {type(outcome).__name__}")
        return on_rpc_error(cache, entry, peer, wrong, att)
    if outcome.region_error is not None:
        return on_region_error(cache, entry, peer, outcome.region_error, att)
    if outcome.error is not None:
        if outcome.error.code == KvErrorCode.SESSION_EXPIRED:
            return on_session_expired(peer, att)
        raise InvalidArgument(att.what, str(outcome.error))
    if att.is_write:
        att.applied()
    return outcome


def on_session_expired(peer: Peer, att: Attempts) -> Decision:
    """The region answered SESSION_EXPIRED: it no longer remembers our
    session, so it cannot tell a retry of ours from a first try and applied
    nothing now. If an earlier attempt may have applied, the outcome is
    unknown; otherwise the shell retries in a new session (`renew_session`)."""
    cause = f"store {peer.store_id}: the region no longer remembers this client's session"
    att.note(cause)
    if att.maybe_executed:
        return _undetermined(att, cause)
    return Retry(None, renew_session=True)


def on_no_peer(cache: RegionCache, entry: CachedRegion, att: Attempts) -> Decision:
    """Every peer of the region is on a store that failed during this call:
    start over from the PD, after a wait."""
    att.note(att.last_cause or f"region {entry.region.id}: no reachable peer")
    att.avoid.clear()
    cache.invalidate_region(entry.region)
    return Retry(BackoffKind.STORE)


def on_store_unknown(
    cache: RegionCache, entry: CachedRegion, store_id: StoreId, why: str, att: Attempts
) -> Decision:
    """The PD does not know (or has buried) a store of the region."""
    att.note(f"store {store_id}: {why}")
    att.avoid.add(store_id)
    cache.invalidate_region(entry.region)
    return Retry(BackoffKind.REGION_MISS, forget_store=store_id)


def on_region_unknown(what: str, att: Attempts) -> Decision:
    """The PD has no region for a key (not bootstrapped yet, or it lags)."""
    att.note(f"PD knows no region for {what}", pd=True)
    return Retry(BackoffKind.REGION_MISS)


def on_pd_error(cause: str, att: Attempts) -> Decision:
    """A PD call failed (unreachable, timed out, or an error answer). PD
    calls only read, so they are always retried until the deadline."""
    att.note(f"PD: {cause}", pd=True)
    return Retry(BackoffKind.PD)

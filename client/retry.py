"""The retry policy: what one failed attempt means, and what to do next.

Pure: no I/O, no trio, no clock, no global random. Time comes in as `now`
(the shell's trio clock), randomness from the `random.Random` of the call.

An attempt sends one request to one peer of one region. When it fails, the
decision functions below update the region cache (a pure `RegionCache`) and
return a `Decision`: retry (at once, or after a backoff of some kind), or
give up with a `client.errors` exception. `Attempts.plan` (the retry state
of a call, `client.attempts`) turns a decision into the seconds to sleep,
or raises.

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
  `StoreNotMatch`, `DiskFull` (admission); `StaleCommand` (the proposal's
  log entry was overwritten or can never commit:
  `store_node.peer.Peer.resolve_applied`).
* `DiskFull`: the leader's store is below its reserve of free space and
  refuses writes (it serves reads). The write is retried after a backoff
  of its own, as space may be freed or the leader move; at the deadline the
  call raises `StoreDiskFull`, naming the store.
* NOT proof: `UndeterminedResult` (the proposal's entry may have been
  committed by another leader and reached this peer only in a snapshot:
  `Peer.resolve_snapshot`). `RegionNotFound`. A store answers it at admission (no peer
  here), but also to the proposals in flight of a peer it destroys
  (`StoreCore._destroy` -> `Peer.fail_all`), and such a proposal may
  already be committed under another leader. `RpcConnectionLostError`,
  `RpcTimeoutError`, `RpcProtocolError`, `RpcRemoteError(INTERNAL)`: the
  request may have run.
* Follower and stale reads go to a replica chosen to spread the load; when
  such an attempt fails because of the replica (it knows no leader, has no
  such region, is behind the cache's epoch, cannot be reached), the call
  goes on at the leader at once, without reloading the region or moving the
  leader hint (`on_replica_error`); other failures are judged as above.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final, Protocol, TypeVar

from client.attempts import (
    DEFAULT_BACKOFFS,
    Attempts,
    BackoffKind,
    CallState,
    Decision,
    GiveUp,
    OpKind,
    Retry,
)
from client.cache import CachedRegion, RegionCache
from client.errors import InvalidArgument, StoreError, UndeterminedError, ValueTooLarge
from kvproto.errorpb import (
    DiskFull,
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
from kvproto.kvrpcpb import KvError, KvErrorCode
from kvproto.metapb import Peer, StoreId
from kvproto.rpc import (
    RpcCallError,
    RpcConnectionLostError,
    RpcProtocolError,
    RpcTimeoutError,
    RpcUnavailableError,
)

# The retry state and the decisions live in client.attempts; they are
# named here too, with the policy that uses them.
__all__ = [
    "DEFAULT_BACKOFFS",
    "POLICY",
    "Answer",
    "Attempts",
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
    "on_replica_error",
    "on_rpc_error",
    "on_session_expired",
    "on_store_unknown",
    "proves_not_applied",
]


# error -> (proves not applied, action) for the docs, the report and a test
# that keeps this table honest against the code.
POLICY: Final[tuple[tuple[str, str, str], ...]] = (
    ("RpcUnavailableError", "yes", "avoid the store, reload region from PD, back off (store)"),
    (
        "RpcConnectionLostError",
        "no",
        (
            "avoid the store, reload, back off (store); conditional without a session: "
            "UndeterminedError"
        ),
    ),
    (
        "RpcTimeoutError",
        "no",
        (
            "deadline reached: read DeadlineExceeded, write UndeterminedError; attempt timeout "
            "(attempt_timeout) before the deadline: as RpcConnectionLostError"
        ),
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
        (
            "avoid the store, reload, back off (region miss); conditional without a session: "
            "UndeterminedError"
        ),
    ),
    ("KeyNotInRegion", "yes", "reload region from PD, back off (region miss)"),
    ("ServerIsBusy", "yes", "back off (busy), at least the store's backoff_ms"),
    ("DiskFull", "yes", "back off (disk full); at the deadline StoreDiskFull naming the store"),
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
    ("KvError VALUE_TOO_LARGE", "yes", "ValueTooLarge (the store's max_value_size)"),
    ("KvError other", "yes", "InvalidArgument"),
    ("PD unreachable or PdServerError", "yes", "back off (pd); at the deadline PdUnavailable"),
    # Follower and stale reads at a replica other than the leader hint (reads
    # write nothing: the second column does not apply).
    (
        "replica read: NotLeader(no leader), RegionNotFound",
        "-",
        "retry at once at the leader (RegionNotFound: avoid the store)",
    ),
    (
        "replica read: EpochNotMatch",
        "-",
        "cache newer regions (no leader hint from the replica); retry at once at the leader",
    ),
    (
        "replica read: store unreachable or no answer in attempt_timeout",
        "-",
        "avoid the store (and skip it for replica reads a while); retry at once at the leader",
    ),
    ("replica read: any other answer", "-", "as for a read at the leader; later attempts go there"),
)


def proves_not_applied(error: RegionError | RpcCallError) -> bool:
    """Whether this answer to a write proves that the write was not applied
    (see the module docstring for the evidence)."""
    if isinstance(error, RpcCallError):
        return not error.may_have_executed
    return not isinstance(error, RegionNotFound | UndeterminedResult)


def _undetermined(att: Attempts, cause: str) -> GiveUp:
    return GiveUp(UndeterminedError(att.what, cause))


def on_region_error(
    cache: RegionCache, entry: CachedRegion, peer: Peer, err: RegionError, att: Attempts
) -> Decision:
    """A store answered `err` to a request for `entry`'s region sent to `peer`."""
    cause = f"store {peer.store_id}: {err}"
    att.note(cause, full_store=peer.store_id if isinstance(err, DiskFull) else None)
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
    if isinstance(err, DiskFull):
        return Retry(BackoffKind.DISK_FULL)
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


def on_replica_error(
    cache: RegionCache,
    entry: CachedRegion,
    peer: Peer,
    err: RegionError | RpcCallError,
    att: Attempts,
) -> Decision:
    """A follower or stale read sent to `peer`, a replica that is not the
    leader hint, failed with `err`: the call goes on at the leader."""
    att.leader_only = True
    cause = f"store {peer.store_id}: {err}"
    if isinstance(err, NotLeader) and err.leader is None:
        # The replica knows no leader: the hint may still be right.
        att.note(cause)
        return Retry(None)
    if isinstance(err, RegionNotFound):
        # Not (yet) a peer there: a learner waiting for its snapshot, or a
        # removed one.
        att.note(cause)
        att.avoid.add(peer.store_id)
        return Retry(None)
    if isinstance(err, EpochNotMatch):
        # Newer regions are cached, without a leader hint; older ones are
        # the replica's lag, not the cache's: the leader will say.
        att.note(cause)
        cache.update_from_epoch_not_match(err.current_regions, None)
        return Retry(None)
    if isinstance(err, RpcUnavailableError | RpcConnectionLostError) or (
        isinstance(err, RpcTimeoutError) and att.capped
    ):
        att.note(cause)
        att.avoid.add(peer.store_id)
        return Retry(None, forget_store=peer.store_id)
    if isinstance(err, RpcCallError):
        return on_rpc_error(cache, entry, peer, err, att)
    return on_region_error(cache, entry, peer, err, att)


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
        if att.replica_attempt:
            return on_replica_error(cache, entry, peer, outcome, att)
        return on_rpc_error(cache, entry, peer, outcome, att)
    if not isinstance(outcome, expected):
        wrong = RpcProtocolError(f"expected {expected.__name__}, got {type(outcome).__name__}")
        return on_rpc_error(cache, entry, peer, wrong, att)
    if outcome.region_error is not None:
        if att.replica_attempt:
            return on_replica_error(cache, entry, peer, outcome.region_error, att)
        return on_region_error(cache, entry, peer, outcome.region_error, att)
    if outcome.error is not None:
        if outcome.error.code == KvErrorCode.SESSION_EXPIRED:
            return on_session_expired(peer, att)
        if outcome.error.code == KvErrorCode.VALUE_TOO_LARGE:
            raise ValueTooLarge(att.what, str(outcome.error))
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


def choose_peer(att: Attempts, entry: CachedRegion, suspects: Collection[StoreId]) -> Peer | None:
    """Where an attempt goes: the leader hint (or the next voter not
    avoided); for a follower or stale read, until one such attempt failed,
    a replica chosen at random among those whose store neither failed in
    this call nor lately (`suspects`)."""
    att.replica_attempt = False
    if att.any_replica and not att.leader_only:
        peer = entry.choose_replica(att.avoid | set(suspects), att.rng)
        if peer is not None:
            att.replica_attempt = entry.leader is None or peer.id != entry.leader.id
            return peer
    return entry.choose_peer(att.avoid)

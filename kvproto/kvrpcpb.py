"""The client-facing KV service of a store (tags 200..239).

Every request carries a `Context`: the region the client believes holds the
key(s), the epoch it believes in, and the peer it thinks leads (whose store
must be the receiving store). A response carries either a `region_error`
(retry after updating the routing: see `kvproto.errorpb`), or a `error` for a
request that is invalid whatever the routing (too-large key, empty key...),
or the result.

Keys and values are bytes. `end_key` b"" means +infinity.

Reads (get, batch get, scan) carry a `Consistency` and, for stale reads, the
staleness the caller accepts (`max_staleness_ms`); their answers say how
stale they may be (`staleness_ms`, 0 for strong and follower reads).

Size limits (below): a value is at most `max_value_size` bytes (store
setting and `client.ClientConfig`, default `DEFAULT_MAX_VALUE_SIZE`; larger
ones are refused before anything is proposed, `VALUE_TOO_LARGE`), a write
request's keys and values at most `MAX_WRITE_BYTES` (`REQUEST_TOO_LARGE`),
so that every write, as a request, a log entry and a Raft message, fits the
frame limit (`kvproto.frame.DEFAULT_MAX_FRAME_SIZE`). Read answers are cut
by the store to stay far inside it (`RawScanResponse.more`,
`RawBatchGetResponse.unread`).

Tags are part of the wire format: never reused, never renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from kvproto.codec import wire
from kvproto.errorpb import RegionError
from kvproto.frame import DEFAULT_MAX_FRAME_SIZE
from kvproto.metapb import Peer, RegionEpoch, RegionId

# The largest value a store accepts unless its `max_value_size` says
# otherwise; the client refuses larger ones before sending
# (`ClientConfig.max_value_size`).
DEFAULT_MAX_VALUE_SIZE: Final = 16 << 20
# No store may accept larger values: a compare-and-set carries two of them
# in one request, one log entry and one Raft message.
MAX_VALUE_SIZE_LIMIT: Final = 24 << 20
# The keys and values of one write request (a batch put's pairs, a
# compare-and-set's two values and key) at most: with its envelope, its log
# entry's and its Raft message's framing (a few bytes a pair, a few hundred
# a message) far inside the 64 MiB frame limit.
MAX_WRITE_BYTES: Final = 2 * MAX_VALUE_SIZE_LIMIT + (1 << 20)
assert MAX_WRITE_BYTES + (8 << 20) <= DEFAULT_MAX_FRAME_SIZE


@wire(200)
@dataclass(frozen=True, slots=True)
class Context:
    region_id: RegionId
    region_epoch: RegionEpoch
    peer: Peer


class KvErrorCode(IntEnum):
    INVALID_ARGUMENT = 1
    KEY_TOO_LARGE = 2
    VALUE_TOO_LARGE = 3
    REQUEST_TOO_LARGE = 4
    # The region no longer remembers the request's session (idle past its
    # time to live, or evicted): a retry cannot be told from a first try, so
    # it was not applied now; an earlier attempt may have been.
    SESSION_EXPIRED = 5


@wire(201)
@dataclass(frozen=True, slots=True)
class KvError:
    """A request that no retry can fix."""

    code: KvErrorCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.name.lower()}: {self.message}"


Pair = tuple[bytes, bytes]


class Consistency(IntEnum):
    """What a read promises, and which peer may serve it (the request's
    `Context.peer`).

    * STRONG: at the leader only (from its lease, or after a ReadIndex
      round): linearizable.
    * FOLLOWER: at any initialized peer of the region on the store, voter or
      learner: the peer has the leader confirm a read index (Raft ReadIndex,
      forwarded by a follower) and waits until it applied that far:
      linearizable too.
    * STALE: at any initialized peer, from what it has applied, at once:
      every write acknowledged before `now - staleness_ms` is visible. A
      peer staler than `max_staleness_ms` serves it as a FOLLOWER read
      (answered with staleness 0).
    """

    STRONG = 0
    FOLLOWER = 1
    STALE = 2


@wire(202)
@dataclass(frozen=True, slots=True)
class RawGetRequest:
    context: Context
    key: bytes
    consistency: Consistency = Consistency.STRONG
    max_staleness_ms: int = 0  # STALE only; >= 0


@wire(203)
@dataclass(frozen=True, slots=True)
class RawGetResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    value: bytes | None = None  # None: not found
    staleness_ms: int = 0


@wire(204)
@dataclass(frozen=True, slots=True)
class RawBatchGetRequest:
    context: Context
    keys: tuple[bytes, ...]
    consistency: Consistency = Consistency.STRONG
    max_staleness_ms: int = 0


@wire(205)
@dataclass(frozen=True, slots=True)
class RawBatchGetResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    pairs: tuple[Pair, ...] = ()  # found keys only, in request order
    staleness_ms: int = 0
    # The request's last `unread` keys were not read: the answer reached the
    # store's byte bound (large values); ask for them again.
    unread: int = 0


@wire(206)
@dataclass(frozen=True, slots=True)
class RawScanRequest:
    """Keys in [start_key, end_key) of the region, ascending (or descending
    from end_key when `reverse`), at most `limit` of them."""

    context: Context
    start_key: bytes
    end_key: bytes
    limit: int
    reverse: bool = False
    keys_only: bool = False
    consistency: Consistency = Consistency.STRONG
    max_staleness_ms: int = 0


@wire(207)
@dataclass(frozen=True, slots=True)
class RawScanResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    pairs: tuple[Pair, ...] = ()  # values are b"" when keys_only
    staleness_ms: int = 0
    # Fewer than `limit` pairs, cut at the store's byte bound (large
    # values): the range may hold more past the last pair.
    more: bool = False


@wire(216)
@dataclass(frozen=True, slots=True)
class SessionRef:
    """Which client request a write is, for exactly-once application (Raft
    dissertation 6.3): a client session numbers its writes, and every region
    remembers per session the answers of the numbers it applied.

    * `session_id`: 16 random bytes naming the client session.
    * `seq`: this request's number in the session (>= 1; every attempt of
      the request carries the same number).
    * `acked_below`: every number below it has been answered to the client
      (or given up on): their answers may be forgotten.
    * `retry`: an earlier attempt of this request may have been applied.
    * `opened_at_ms`: the client's wall clock when it opened the session, so
      that a region that forgot the session (expired) can tell a retry in
      it from a session it has never seen.
    """

    session_id: bytes
    seq: int
    acked_below: int
    retry: bool
    opened_at_ms: int


@wire(208)
@dataclass(frozen=True, slots=True)
class RawPutRequest:
    context: Context
    key: bytes
    value: bytes
    session: SessionRef | None = None


@wire(209)
@dataclass(frozen=True, slots=True)
class RawBatchPutRequest:
    context: Context
    pairs: tuple[Pair, ...]
    session: SessionRef | None = None


@wire(210)
@dataclass(frozen=True, slots=True)
class RawDeleteRequest:
    context: Context
    key: bytes
    session: SessionRef | None = None


@wire(211)
@dataclass(frozen=True, slots=True)
class RawBatchDeleteRequest:
    context: Context
    keys: tuple[bytes, ...]
    session: SessionRef | None = None


@wire(212)
@dataclass(frozen=True, slots=True)
class RawDeleteRangeRequest:
    context: Context
    start_key: bytes
    end_key: bytes
    session: SessionRef | None = None


@wire(213)
@dataclass(frozen=True, slots=True)
class RawWriteResponse:
    """The answer to every plain write (put, delete, their batches, delete range)."""

    region_error: RegionError | None = None
    error: KvError | None = None


@wire(214)
@dataclass(frozen=True, slots=True)
class RawCompareAndSetRequest:
    """Set `key` to `new_value` (None: delete) iff its value is `expected`
    (None: absent)."""

    context: Context
    key: bytes
    expected: bytes | None
    new_value: bytes | None
    session: SessionRef | None = None


@wire(215)
@dataclass(frozen=True, slots=True)
class RawCompareAndSetResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    succeeded: bool = False
    previous: bytes | None = None

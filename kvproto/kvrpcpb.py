"""The client-facing KV service of a store (tags 200..239).

Every request carries a `Context`: the region the client believes holds the
key(s), the epoch it believes in, and the peer it thinks leads (whose store
must be the receiving store). A response carries either a `region_error`
(retry after updating the routing: see `kvproto.errorpb`), or a `error` for a
request that is invalid whatever the routing (too-large key, empty key...),
or the result.

Keys and values are bytes. `end_key` b"" means +infinity.

Tags are part of the wire format: never reused, never renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from kvproto.codec import wire
from kvproto.errorpb import RegionError
from kvproto.metapb import Peer, RegionEpoch, RegionId


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


@wire(201)
@dataclass(frozen=True, slots=True)
class KvError:
    """A request that no retry can fix."""

    code: KvErrorCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.name.lower()}: {self.message}"


Pair = tuple[bytes, bytes]


@wire(202)
@dataclass(frozen=True, slots=True)
class RawGetRequest:
    context: Context
    key: bytes


@wire(203)
@dataclass(frozen=True, slots=True)
class RawGetResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    value: bytes | None = None  # None: not found


@wire(204)
@dataclass(frozen=True, slots=True)
class RawBatchGetRequest:
    context: Context
    keys: tuple[bytes, ...]


@wire(205)
@dataclass(frozen=True, slots=True)
class RawBatchGetResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    pairs: tuple[Pair, ...] = ()  # found keys only, in request order


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


@wire(207)
@dataclass(frozen=True, slots=True)
class RawScanResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    pairs: tuple[Pair, ...] = ()  # values are b"" when keys_only


@wire(208)
@dataclass(frozen=True, slots=True)
class RawPutRequest:
    context: Context
    key: bytes
    value: bytes


@wire(209)
@dataclass(frozen=True, slots=True)
class RawBatchPutRequest:
    context: Context
    pairs: tuple[Pair, ...]


@wire(210)
@dataclass(frozen=True, slots=True)
class RawDeleteRequest:
    context: Context
    key: bytes


@wire(211)
@dataclass(frozen=True, slots=True)
class RawBatchDeleteRequest:
    context: Context
    keys: tuple[bytes, ...]


@wire(212)
@dataclass(frozen=True, slots=True)
class RawDeleteRangeRequest:
    context: Context
    start_key: bytes
    end_key: bytes


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


@wire(215)
@dataclass(frozen=True, slots=True)
class RawCompareAndSetResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    succeeded: bool = False
    previous: bytes | None = None

"""The client's tunables (`ClientConfig`) and its defaults, and the read
consistencies a call may ask for (`Consistency`)."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from client.attempts import DEFAULT_BACKOFFS, BackoffKind
from kvproto.kvrpcpb import DEFAULT_MAX_VALUE_SIZE, MAX_VALUE_SIZE_LIMIT, MAX_WRITE_BYTES
from kvproto.rpc.reconnect import Backoff

__all__ = [
    "DEFAULT_MAX_STALENESS",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_SCAN_LIMIT",
    "DEFAULT_TIMEOUT",
    "STORE_BACKOFF",
    "ClientConfig",
    "Consistency",
    "ConsistencyArg",
]


class Consistency(enum.StrEnum):
    """What a read (get, batch_get, scan, scan_iter: their `consistency=`)
    promises, and where it is served.

    * ``"strong"`` (the default): at the region's leader, from its lease or
      after a ReadIndex round. Linearizable: the read sees every write that
      completed before it was called.
    * ``"follower"``: at any replica of the region (voter or learner),
      chosen to spread reads over the stores; the replica has the leader
      confirm a read index and serves once it has applied that far.
      Linearizable too (the index is the leader's commit index at a time
      after the read arrived); costs a round trip between the replica and
      the leader, none of the leader's kv/ reads.
    * ``"stale"``: at any replica, from what it has applied, without
      asking the leader: the read sees every write that completed at least
      `staleness` seconds before it was called, where `staleness` (the
      answer's, `ReadResult.staleness`) is at most the call's
      `max_staleness` (default `ClientConfig.max_staleness`). A replica
      staler than that serves it as a follower read (staleness 0). Not
      linearizable: a value read may be older than one read before.

    A call whose replica fails (unreachable, no leader known, not found,
    epoch changed) goes on at the leader, within its deadline. Each region
    of a batch or scan is read on its own (a scan is not a snapshot).
    """

    STRONG = "strong"
    FOLLOWER = "follower"
    STALE = "stale"


# What `consistency=` takes: a Consistency or its value.
ConsistencyArg: TypeAlias = Consistency | Literal["strong", "follower", "stale"]

DEFAULT_TIMEOUT: Final = 10.0
# How stale a stale read may be, in seconds, unless the call says.
DEFAULT_MAX_STALENESS: Final = 5.0
DEFAULT_SCAN_LIMIT: Final = 10_000
DEFAULT_PAGE_SIZE: Final = 1_000

# Reconnection schedule of a store connection: quick first, capped at 1 s.
STORE_BACKOFF: Final = Backoff(initial=0.05, max_delay=1.0)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Tunables of a client; the defaults suit most uses."""

    # Deadline of a call without its own `timeout=`, in seconds.
    timeout: float = DEFAULT_TIMEOUT
    # A batch request carries at most this many keys (the store refuses
    # more than 10,000) ...
    batch_max_keys: int = 1024
    # ... and about this many bytes of keys and values (at least one pair;
    # at most kvproto.kvrpcpb.MAX_WRITE_BYTES, the most a store takes).
    batch_max_bytes: int = 4 << 20
    # A value larger than this is refused before anything is sent
    # (ValueTooLarge); the store's own limit (its `max_value_size`, the same
    # default) is checked again there.
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE
    # Waits between retries, by reason (see client.retry).
    backoffs: Mapping[BackoffKind, Backoff] = field(default_factory=lambda: dict(DEFAULT_BACKOFFS))
    # Reconnection backoff of a store connection, and the longest a TCP
    # connect may take.
    store_backoff: Backoff = STORE_BACKOFF
    connect_timeout: float = 3.0
    # Per-call timeout of the PD client (our deadline cuts it shorter).
    pd_timeout: float = 5.0
    # Number every write in a client session so that a retry is never
    # applied twice (see client.retry). Without it, a retried write may
    # apply twice and a conditional write raises UndeterminedError instead
    # of retrying after an unknown outcome (what TiKV's raw client does).
    exactly_once: bool = True
    # The longest one attempt waits for a store's answer before the call
    # tries another peer (within the call's deadline): a stopped store, or
    # a leader cut off from its followers, never answers.
    attempt_timeout: float = 2.0
    # The staleness (seconds) a stale read accepts unless its call says
    # (`max_staleness=`); see `Consistency`.
    max_staleness: float = DEFAULT_MAX_STALENESS

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if not 1 <= self.batch_max_keys <= 10_000:
            raise ValueError(f"batch_max_keys must be in 1..10000, got {self.batch_max_keys}")
        if not self.attempt_timeout > 0:
            raise ValueError(f"attempt_timeout must be positive, got {self.attempt_timeout}")
        if not 1 <= self.batch_max_bytes <= MAX_WRITE_BYTES:
            raise ValueError(
                f"batch_max_bytes must be in 1..{MAX_WRITE_BYTES}, got {self.batch_max_bytes}"
            )
        if not 0 <= self.max_value_size <= MAX_VALUE_SIZE_LIMIT:
            raise ValueError(
                f"max_value_size must be in 0..{MAX_VALUE_SIZE_LIMIT}, got {self.max_value_size}"
            )
        if not (self.max_staleness >= 0 and math.isfinite(self.max_staleness)):
            raise ValueError(f"max_staleness must be >= 0 and finite, got {self.max_staleness}")

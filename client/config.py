"""The client's tunables (`ClientConfig`) and its defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from client.attempts import DEFAULT_BACKOFFS, BackoffKind
from kvproto.rpc.reconnect import Backoff

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_SCAN_LIMIT",
    "DEFAULT_TIMEOUT",
    "STORE_BACKOFF",
    "ClientConfig",
]

DEFAULT_TIMEOUT: Final = 10.0
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
    # ... and about this many bytes of keys and values (at least one pair).
    batch_max_bytes: int = 4 << 20
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

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if not 1 <= self.batch_max_keys <= 10_000:
            raise ValueError(f"batch_max_keys must be in 1..10000, got {self.batch_max_keys}")
        if not self.attempt_timeout > 0:
            raise ValueError(f"attempt_timeout must be positive, got {self.attempt_timeout}")
        if self.batch_max_bytes < 1:
            raise ValueError(f"batch_max_bytes must be positive, got {self.batch_max_bytes}")

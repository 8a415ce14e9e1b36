"""What the client raises: one small hierarchy, one line per message.

    ClientError
     +-- DeadlineExceeded        the call's deadline passed; nothing was written
     |    +-- PdUnavailable      ... and the last cause was the PD (unreachable, erroring)
     |    +-- StoreDiskFull      ... and the last cause was a store out of disk space
     +-- UndeterminedError       a write whose outcome is unknown (it may or may not
     |                           have been applied); never retried as if nothing happened
     +-- InvalidArgument         a request no retry can fix (empty or too large key...)
     |    +-- ValueTooLarge      ... a value over the size limit
     +-- StoreError              a store answered something no retry can fix
     +-- ClusterMismatch         the PD belongs to another cluster
     +-- ClientClosed            the client was closed

Every message names what the call was about (the key or range) and, for
the retry-related errors, the last cause seen. Pure: no I/O.
"""

from __future__ import annotations

__all__ = [
    "ClientClosed",
    "ClientError",
    "ClusterMismatch",
    "DeadlineExceeded",
    "InvalidArgument",
    "PdUnavailable",
    "StoreDiskFull",
    "StoreError",
    "UndeterminedError",
    "ValueTooLarge",
    "describe_key",
    "describe_range",
]

_MAX_SHOWN = 48


def describe_key(key: bytes) -> str:
    """A short, unambiguous rendering of a key for messages."""
    if len(key) <= _MAX_SHOWN:
        return repr(key)
    return f"{key[:_MAX_SHOWN]!r}... ({len(key)} bytes)"


def describe_range(start: bytes, end: bytes) -> str:
    """``[start, end)`` with +inf for an empty end."""
    return f"[{describe_key(start)}, {describe_key(end) if end else '+inf'})"


class ClientError(Exception):
    """Base of every error the client raises on purpose.

    `what` names the call ("get b'k'"); `cause` is the last underlying
    reason as one line ("" when there is none).
    """

    def __init__(self, what: str, message: str, cause: str = "") -> None:
        self.what = what
        self.cause = cause
        text = f"{what}: {message}" if what else message
        if cause:
            text = f"{text} (last cause: {cause})"
        super().__init__(text)


class DeadlineExceeded(ClientError):
    """The call's deadline passed before it succeeded. A write that raises
    this was not applied (when its outcome is unknown the client raises
    UndeterminedError instead)."""

    reason = "deadline"

    def __init__(self, what: str, timeout: float, attempts: int, cause: str) -> None:
        self.timeout = timeout
        self.attempts = attempts
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        super().__init__(what, f"{self.reason} of {timeout:g} s exceeded{tries}", cause)


class PdUnavailable(DeadlineExceeded):
    """The deadline passed while the PD could not be reached or answered
    with an error."""

    reason = "PD unavailable, deadline"


class StoreDiskFull(DeadlineExceeded):
    """The deadline passed while the store leading the region refused the
    write because its disk is full (below its reserve of free space). Nothing
    was written; reads still work. `store_id` names the store."""

    def __init__(self, what: str, timeout: float, attempts: int, store_id: int, cause: str) -> None:
        self.store_id = store_id
        self.reason = f"store {store_id} is out of disk space and refuses writes; deadline"
        super().__init__(what, timeout, attempts, cause)


class UndeterminedError(ClientError):
    """A write may or may not have been applied: an attempt was sent and its
    answer never came (connection lost, timeout, or a store that could not
    tell). Read the key to learn the outcome."""

    def __init__(self, what: str, cause: str) -> None:
        super().__init__(what, "outcome unknown, the write may or may not have applied", cause)


class InvalidArgument(ClientError):
    """A request that no retry can fix: refused by the client (empty key,
    inverted range, bad limit) or by the store (too large key or value)."""

    def __init__(self, what: str, reason: str) -> None:
        self.reason = reason
        super().__init__(what, f"invalid argument: {reason}")


class ValueTooLarge(InvalidArgument):
    """A value over the size limit, refused before anything was written:
    by the client before sending (`size` and `limit`, its
    `ClientConfig.max_value_size`), or by the store (whose `max_value_size`
    is lower; its message names both sizes, the attributes are None)."""

    def __init__(
        self, what: str, reason: str, size: int | None = None, limit: int | None = None
    ) -> None:
        self.size = size
        self.limit = limit
        super().__init__(what, reason)

    @classmethod
    def of(cls, what: str, name: str, size: int, limit: int) -> ValueTooLarge:
        """The client's own refusal of value `name` of `size` bytes."""
        return cls(
            what,
            f"{name} of {size} bytes exceeds the limit of {limit} bytes (max_value_size)",
            size,
            limit,
        )


class StoreError(ClientError):
    """A store answered with something no retry can fix (an internal error
    of a read, a message it does not know, an undecodable answer)."""

    def __init__(self, what: str, cause: str) -> None:
        super().__init__(what, "store error", cause)


class ClusterMismatch(ClientError):
    """The PD answering belongs to another cluster than the one first seen."""

    def __init__(self, what: str, cause: str) -> None:
        super().__init__(what, "PD cluster mismatch", cause)


class ClientClosed(ClientError):
    """The client was closed; no call can run any more."""

    def __init__(self, what: str = "") -> None:
        super().__init__(what, "client is closed")

"""How a read call asks to be served (`ReadMode`, from its `consistency=`
and `max_staleness=` arguments) and what it answers with its staleness
(`ReadResult`). Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from client.config import Consistency
from client.errors import InvalidArgument
from kvproto import kvrpcpb as kv

__all__ = ["STRONG_READ", "ReadMode", "ReadResult", "read_mode"]

T = TypeVar("T")

_WIRE: Final = {
    Consistency.STRONG: kv.Consistency.STRONG,
    Consistency.FOLLOWER: kv.Consistency.FOLLOWER,
    Consistency.STALE: kv.Consistency.STALE,
}


@dataclass(frozen=True, slots=True)
class ReadResult(Generic[T]):
    """What a read returned (`value`) and how stale it may be: every write
    that completed at least `staleness` seconds before the call was made is
    visible in it. 0 for strong and follower reads; for a batch or a scan,
    the largest of its regions' (as measured by the stores that served it).
    """

    value: T
    staleness: float = 0.0


@dataclass(frozen=True, slots=True)
class ReadMode:
    """A read's consistency and, for a stale one, the staleness it accepts
    (whole milliseconds, rounded down: never more than asked)."""

    consistency: Consistency = Consistency.STRONG
    max_staleness_ms: int = 0

    @property
    def wire(self) -> kv.Consistency:
        return _WIRE[self.consistency]

    @property
    def any_replica(self) -> bool:
        """Whether any replica may serve it (follower and stale reads)."""
        return self.consistency is not Consistency.STRONG


STRONG_READ: Final = ReadMode()

# The largest bound sent (an int CBOR encodes natively): "any staleness".
_MAX_WIRE_MS: Final = 2**63 - 1


def read_mode(
    what: str, consistency: object, max_staleness: object, default_max_staleness: float
) -> ReadMode:
    """The mode of a read call from its arguments (`max_staleness` None:
    `default_max_staleness`); InvalidArgument for values no store accepts,
    TypeError for arguments of the wrong type."""
    if not isinstance(consistency, str):
        raise TypeError(f"{what}: consistency must be a str, not {type(consistency).__name__}")
    try:
        mode = Consistency(consistency)
    except ValueError:
        names = ", ".join(c.value for c in Consistency)
        raise InvalidArgument(
            what, f"unknown consistency {consistency!r} (one of {names})"
        ) from None
    bound = default_max_staleness if max_staleness is None else max_staleness
    if not isinstance(bound, int | float) or isinstance(bound, bool):
        raise TypeError(f"{what}: max_staleness must be a number, not {type(bound).__name__}")
    if not (bound >= 0 and math.isfinite(bound)):
        raise InvalidArgument(what, f"max_staleness must be >= 0 seconds, got {bound}")
    if mode is not Consistency.STALE:
        return ReadMode(mode)
    return ReadMode(mode, min(math.floor(bound * 1000), _MAX_WIRE_MS))

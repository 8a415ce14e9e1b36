"""The typed errors of refused PD requests."""

from __future__ import annotations

from kvproto.pdpb import PdError, PdErrorCode

__all__ = [
    "OperatorExistsError",
    "PdRequestError",
    "SchedulerExistsError",
    "SchedulerNotFoundError",
    "failed_precondition",
    "invalid_argument",
]


class PdRequestError(Exception):
    """A request the PD refuses; it travels back as `PdError` in the
    response header (never as an exception across the wire)."""

    def __init__(self, code: PdErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_pb(self) -> PdError:
        return PdError(self.code, self.message)

    def __str__(self) -> str:
        return f"{self.code.name.lower()}: {self.message}"


def invalid_argument(message: str) -> PdRequestError:
    """The refusal of a malformed request (INVALID_ARGUMENT)."""
    return PdRequestError(PdErrorCode.INVALID_ARGUMENT, message)


def failed_precondition(message: str) -> PdRequestError:
    """The refusal of a well-formed request that the cluster's current
    state does not allow (FAILED_PRECONDITION; HTTP 409)."""
    return PdRequestError(PdErrorCode.FAILED_PRECONDITION, message)


class OperatorExistsError(Exception):
    """A region already has a running operator: at most one per region."""

    def __init__(self, region_id: int, running: str) -> None:
        super().__init__(f"region {region_id} already has a running operator: {running}")
        self.region_id = region_id
        self.running = running


class SchedulerExistsError(Exception):
    """A scheduler of that name is already active (the admin API: 409)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"scheduler {name} already exists")
        self.name = name


class SchedulerNotFoundError(Exception):
    """No active scheduler has that name (the admin API: 404)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no scheduler {name}")
        self.name = name

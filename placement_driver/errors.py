"""The typed error of a refused PD request."""

from __future__ import annotations

from kvproto.pdpb import PdError, PdErrorCode

__all__ = ["PdRequestError"]


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

"""The errors `RpcConnection.call` and `send_oneway` raise, by what the
caller may do next:

* `RpcUnavailableError`: not connected, or the request never left this
  process: safe to retry anywhere.
* `RpcConnectionLostError`: the request may have been sent, the connection
  died before its answer: the outcome is unknown.
* `RpcTimeoutError`: the caller's timeout expired: the outcome is unknown.
* `RpcRemoteError`: the server answered an `RpcError` (`code` says whether
  the handler ran).
* `RpcProtocolError`: the answer could not be decoded.

All derive from `RpcCallError`, whose `may_have_executed` sums this up.
"""

from __future__ import annotations

from kvproto.rpc.envelope import RpcError, RpcErrorCode

__all__ = [
    "RpcCallError",
    "RpcConnectionLostError",
    "RpcProtocolError",
    "RpcRemoteError",
    "RpcTimeoutError",
    "RpcUnavailableError",
]


class RpcCallError(Exception):
    """Base of the errors `call` and `send_oneway` raise."""

    # Whether the server may have run (part of) the request.
    may_have_executed: bool = True


class RpcUnavailableError(RpcCallError):
    """Not connected, or the request never left this process."""

    may_have_executed = False


class RpcConnectionLostError(RpcCallError):
    """The connection died after the request may have been sent."""


class RpcTimeoutError(RpcCallError):
    """The caller's timeout expired before the answer arrived."""


class RpcProtocolError(RpcCallError):
    """The server's answer to this request could not be decoded."""


class RpcRemoteError(RpcCallError):
    """The server answered an RpcError."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(f"{error.code.name}: {error.message}")
        self.error = error
        self.may_have_executed = error.code == RpcErrorCode.INTERNAL

    @property
    def code(self) -> RpcErrorCode:
        return self.error.code

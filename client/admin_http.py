"""A blocking client of the PD's admin HTTP API (JSON), for `shardkv ctl`.

Standard library only (urllib): a client-only install runs `shardkv ctl`
without the server extra, and it never imports the PD's code; the API's
JSON is the contract.

Every call answers the decoded JSON document, or raises `AdminError` with
one line for the user: the server's own reason for a 4xx or 5xx
(``{"error": ...}``), or what went wrong reaching it (naming the URL).
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from typing import Any, Final
from urllib.parse import urlencode

from plumbing.config_file import ConfigError, read_token_file

__all__ = ["API_PREFIX", "DEFAULT_TIMEOUT", "AdminError", "PdAdminClient", "read_token"]

log = logging.getLogger(__name__)

API_PREFIX: Final = "/pd/api/v1"
DEFAULT_TIMEOUT: Final = 10.0


class AdminError(Exception):
    """A failed admin API call; `status` is the HTTP status (None if there
    was no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def read_token(path: str) -> str:
    """The admin token in the file at `path`; AdminError if it cannot be
    used (`plumbing.config_file.read_token_file`, as the PD reads it)."""
    try:
        return read_token_file(path, "token")
    except ConfigError as e:
        raise AdminError(str(e)) from None


class PdAdminClient:
    """Calls to one PD's admin API at `base_url` ("http://HOST:PORT");
    `token` is sent as ``Authorization: Bearer`` on every call."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        tls_ca: str | None = None,
    ) -> None:
        """`tls_ca`: the PEM CA an https PD is checked against (default: the
        system's)."""
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._tls: ssl.SSLContext | None = None
        if tls_ca is not None:
            try:
                self._tls = ssl.create_default_context(cafile=tls_ca)
            except (OSError, ssl.SSLError) as e:
                raise AdminError(f"cannot load the CA file {tls_ca}: {e}") from None

    def get(self, path: str, **query: object) -> Any:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: object) -> Any:
        return self.call("POST", path, body=body)

    def delete(self, path: str, **query: object) -> Any:
        return self.call("DELETE", path, query=query)

    def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: dict[str, object] | None = None,
    ) -> Any:
        """`path` is under the API prefix, already URL-escaped."""
        url = f"{self.base_url}{API_PREFIX}{path}"
        given = {k: v for k, v in (query or {}).items() if v is not None}
        if given:
            url += "?" + urlencode(given)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        log.debug("%s %s", method, url)
        try:
            with urllib.request.urlopen(
                request, timeout=self._timeout, context=self._tls
            ) as response:
                return _decode(response.read(), url)
        except urllib.error.HTTPError as e:
            raise AdminError(_reason(e), e.code) from None
        except urllib.error.URLError as e:
            raise AdminError(self._unreachable(e.reason)) from None
        except TimeoutError as e:
            raise AdminError(self._unreachable(e)) from None
        except OSError as e:  # a connection reset or closed mid-answer
            raise AdminError(self._unreachable(e)) from None

    def _unreachable(self, why: object) -> str:
        if isinstance(why, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(why, TimeoutError):
            why = f"no answer within {self._timeout:g} s"
        return (
            f"cannot reach the PD admin API at {self.base_url} ({why}); is the PD running "
            "there? Give its HTTP address with --pd-http or SHARDKV_PD_HTTP"
        )


def _decode(raw: bytes, url: str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdminError(f"{url} answered something that is not JSON: {raw[:80]!r}") from None


def _reason(e: urllib.error.HTTPError) -> str:
    """The server's reason (its {"error": ...}), else the status line."""
    try:
        document = json.loads(e.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return f"HTTP {e.code} {e.reason}"

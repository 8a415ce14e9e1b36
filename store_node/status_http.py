"""The store's status port: a small HTTP server for operators and Prometheus.

    GET /metrics   the store's metrics in Prometheus text format
                   (`store_node.metrics`)
    GET /status    JSON: the store, each region's peer here (range in hex,
                   epoch, role, leader or not, term, commit, applied and
                   truncated indexes, log entries and bytes, approximate
                   size) and the store's counters (`store_node.status`);
                   503 while the store registers with the PD

With ``--enable-failpoints true`` (testing only: `plumbing.failpoints`):

    GET    /failpoints        JSON: the failpoints set, and every one known
    PUT    /failpoints/NAME   set NAME to the action in the body ("eio", "0")
    DELETE /failpoints/NAME   clear it

and without it, 403 on those paths. HEAD works wherever GET does. Other
methods answer 405 (with an Allow header), other paths 404, a bad action
400; errors are JSON ``{"error": "..."}``. Request bodies are read (up to
`MAX_BODY` bytes, else 413) and dropped but for a failpoint's action.

It is a minimal ASGI app served by hypercorn's trio worker, as the PD's
admin API is, in the store's nursery: it stops with the store. `StatusApp`
only maps a method and a path to a page, so it is testable without a
socket; `store_pages` makes the store's pages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Protocol

import hypercorn.config
import hypercorn.trio
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from plumbing import failpoints
from plumbing.asgi import Receive, Scope, Send, lifespan
from plumbing.cli import error_leaves
from store_node.blob_files import BlobStats
from store_node.core import StoreCore
from store_node.disk import DiskMonitor
from store_node.metrics import StoreMetrics
from store_node.status import status_json, store_status

__all__ = [
    "MAX_BODY",
    "Page",
    "StatusAddressError",
    "StatusApp",
    "StatusSource",
    "json_page",
    "serve_status",
    "store_pages",
]

log = logging.getLogger(__name__)

# The longest request body kept (a failpoint's action is a word).
MAX_BODY = 4096
FAILPOINTS = "/failpoints"


@dataclass(frozen=True, slots=True)
class Page:
    status: int
    content_type: str
    body: bytes


def json_page(document: object, status: int = 200) -> Page:
    data = json.dumps(document, indent=None, separators=(",", ":")).encode() + b"\n"
    return Page(status, "application/json", data)


class StatusSource(Protocol):
    """What the store's pages read (`StoreNode` has it)."""

    @property
    def core(self) -> StoreCore | None: ...

    @property
    def address(self) -> str: ...

    @property
    def disk(self) -> DiskMonitor: ...

    @property
    def metrics(self) -> StoreMetrics: ...

    def blob_usage(self) -> BlobStats: ...

    def loop_counters(self) -> dict[str, int]: ...


def store_pages(store: StatusSource) -> dict[str, Callable[[], Page]]:
    """The store's pages: /metrics and /status.

    Both read the core directly, not through the store loop: the loop
    changes the core only on this thread, and a status must answer while a
    round is stuck (when it matters most)."""

    def metrics() -> Page:
        return Page(200, CONTENT_TYPE_LATEST, store.metrics.exposition())

    def status() -> Page:
        core = store.core
        if core is None:
            return json_page({"error": "the store is starting: registering with the PD"}, 503)
        document = status_json(
            store_status(core, store.loop_counters()),
            store.address,
            store.disk.state(),
            blobs=asdict(store.blob_usage()),
        )
        return json_page(document)

    return {"/metrics": metrics, "/status": status}


class StatusAddressError(Exception):
    """The status server could not listen on its address (a start error)."""


def _nothing() -> None:
    pass


class StatusApp:
    """The ASGI application: `pages` maps a path ("/metrics") to what makes
    its page now. With `failpoints`, the failpoints can be set through it,
    and `on_failpoint` is called after each change (the store samples its
    disk at once)."""

    def __init__(
        self,
        pages: Mapping[str, Callable[[], Page]],
        failpoints: bool = False,
        on_failpoint: Callable[[], None] = _nothing,
    ) -> None:
        self._pages = dict(pages)
        self._failpoints = failpoints
        self._on_failpoint = on_failpoint

    def respond(self, method: str, path: str, body: bytes = b"") -> tuple[Page, str | None]:
        """The page for a request, and the Allow header of a 405."""
        path = path.rstrip("/") or "/"
        if path == FAILPOINTS or path.startswith(FAILPOINTS + "/"):
            return self._failpoint(method, path.removeprefix(FAILPOINTS).lstrip("/"), body)
        make = self._pages.get(path)
        if make is None:
            return json_page({"error": f"no such page: {path}"}, 404), None
        if method not in ("GET", "HEAD"):
            reason = f"method {method} is not allowed: the status pages are read-only"
            return json_page({"error": reason}, 405), "GET, HEAD"
        return make(), None

    def _failpoint(self, method: str, name: str, body: bytes) -> tuple[Page, str | None]:
        if not self._failpoints:
            reason = (
                "failpoints are off: start the store with --enable-failpoints true (testing only)"
            )
            return json_page({"error": reason}, 403), None
        if not name:
            if method not in ("GET", "HEAD"):
                return json_page({"error": f"method {method} is not allowed"}, 405), "GET, HEAD"
            set_now = {n: str(a) for n, a in failpoints.current().items()}
            return json_page({"set": set_now, "known": failpoints.declared()}), None
        answer: dict[str, object]
        try:
            if method == "PUT":
                action = failpoints.enable(name, body.decode("utf-8"))
                log.warning("failpoint %s set to %s through the status port", name, action)
                answer = {"name": name, "action": str(action)}
            elif method == "DELETE":
                was_set = failpoints.disable(name)
                log.warning("failpoint %s cleared through the status port", name)
                answer = {"name": name, "action": "off", "was_set": was_set}
            else:
                reason = f"method {method} is not allowed on a failpoint"
                return json_page({"error": reason}, 405), "PUT, DELETE"
        except UnicodeDecodeError:
            return json_page({"error": "the action must be UTF-8 text"}, 400), None
        except failpoints.FailpointError as e:
            status = 404 if name not in failpoints.declared() else 400
            return json_page({"error": str(e)}, status), None
        self._on_failpoint()
        return json_page(answer), None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await lifespan(receive, send)
        elif kind == "http":
            body = bytearray()
            while True:  # read the body, keeping at most MAX_BODY bytes of it
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                if len(body) <= MAX_BODY:
                    body += message.get("body", b"")[: MAX_BODY + 1 - len(body)]
                if not message.get("more_body"):
                    break
            raw = scope.get("raw_path") or scope["path"].encode()
            path = raw.partition(b"?")[0].decode("latin-1")
            method = scope["method"]
            try:
                if len(body) > MAX_BODY:
                    reason = f"a request body is at most {MAX_BODY} bytes"
                    page, allow = json_page({"error": reason}, 413), None
                else:
                    page, allow = self.respond(method, path, bytes(body))
            except Exception:
                log.exception("status page %s failed", path)
                page, allow = (
                    json_page({"error": "internal error (see the store's log)"}, 500),
                    None,
                )
            headers = [
                (b"content-type", page.content_type.encode()),
                (b"content-length", str(len(page.body)).encode()),
            ]
            if allow is not None:
                headers.append((b"allow", allow.encode()))
            await send({"type": "http.response.start", "status": page.status, "headers": headers})
            await send(
                {"type": "http.response.body", "body": b"" if method == "HEAD" else page.body}
            )
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})


async def serve_status(
    app: StatusApp,
    address: str,
    *,
    tls_cert_file: str = "",
    tls_key_file: str = "",
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `address` ("host:port", port 0: any free one) until
    cancelled, over HTTPS with `tls_cert_file`; `task_status` gets the bound
    "host:port". A failure to listen (address in use, unknown host) is a
    StatusAddressError."""
    config = hypercorn.config.Config()
    config.bind = [address]
    if tls_cert_file:
        config.certfile = tls_cert_file
        config.keyfile = tls_key_file
    config.accesslog = None
    config.errorlog = log
    bound = _BoundAddress(task_status)
    try:
        await hypercorn.trio.serve(app, config, task_status=bound)  # type: ignore[arg-type]
    except (OSError, ExceptionGroup) as e:
        errors = list(error_leaves(e))
        if bound.started_at is not None or not all(isinstance(x, OSError) for x in errors):
            raise
        reason = "; ".join(map(str, errors))
        raise StatusAddressError(f"cannot serve the status port on {address}: {reason}") from e


class _BoundAddress:
    """Hands hypercorn's "http://host:port" binds on as "host:port"."""

    def __init__(self, task_status: trio.TaskStatus[str]) -> None:
        self._task_status = task_status
        self.started_at: str | None = None

    def started(self, binds: list[str]) -> None:
        self.started_at = binds[0].removeprefix("http://").removeprefix("https://")
        self._task_status.started(self.started_at)

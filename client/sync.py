"""`SyncClient`: the async client's calls, blocking, for scripts and notebooks.

    with client.SyncClient(["127.0.0.1:2379"]) as kv:
        kv.put(b"k", b"v")
        for key, value in kv.scan_iter(b"a", b"z"):
            ...

A background thread runs trio (`trio.run`) with one async `Client`; each
method hands its call to that thread (`trio.from_thread.run`) and waits.
Calls from several threads may run at once: they share the client (its
region cache and connections) like tasks do. The methods, their arguments
and their errors are exactly those of `client.Client`.

Do not call it from inside a trio task: use the async client there.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import TypeVar

import trio

from client.config import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_SCAN_LIMIT,
    ClientConfig,
    Consistency,
    ConsistencyArg,
)
from client.errors import ClientClosed
from client.plan import Pair
from client.rawkv import Client, connect
from client.reads import ReadResult
from client.scan import ScanIterator

__all__ = ["SyncClient", "SyncScanIterator"]

T = TypeVar("T")


class SyncClient:
    """A blocking client of the cluster whose PD listens at `pd_addresses`.

    Starting it starts its thread (nothing is contacted until the first
    call); `close()` (or leaving the ``with`` block) stops it.
    """

    def __init__(
        self,
        pd_addresses: Sequence[str] | str,
        *,
        timeout: float | None = None,
        config: ClientConfig | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        """The arguments are `client.connect`'s."""
        security = {"token": token, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}
        self._client: Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(pd_addresses, timeout, config, security),
            name="shardkv-client",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    # -- lifetime -----------------------------------------------------------

    def _thread_main(
        self,
        pd_addresses: Sequence[str] | str,
        timeout: float | None,
        config: ClientConfig | None,
        security: dict[str, str | None],
    ) -> None:
        try:
            trio.run(self._serve, pd_addresses, timeout, config, security)
        except BaseException as e:
            if not self._ready.is_set():
                self._error = e
        finally:
            self._ready.set()

    async def _serve(
        self,
        pd_addresses: Sequence[str] | str,
        timeout: float | None,  # noqa: ASYNC109 (the client's default deadline)
        config: ClientConfig | None,
        security: dict[str, str | None],
    ) -> None:
        async with connect(
            pd_addresses,
            timeout=timeout,
            config=config,
            token=security["token"],
            tls_ca=security["tls_ca"],
            tls_cert=security["tls_cert"],
            tls_key=security["tls_key"],
        ) as kv:
            self._client = kv
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        """Stop the background thread (calls in flight are cancelled).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def client(self) -> Client:
        """The async client the calls run on (in the background thread)."""
        if self._client is None or self._closed:
            raise ClientClosed
        return self._client

    def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._closed or self._token is None:
            raise ClientClosed
        try:
            return trio.from_thread.run(call, trio_token=self._token)
        except trio.RunFinishedError:
            raise ClientClosed from None

    # -- the calls (see client.Client for each contract) ----------------------

    def get(
        self,
        key: bytes,
        *,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> bytes | None:
        return self._run(
            partial(
                self.client.get,
                key,
                consistency=consistency,
                max_staleness=max_staleness,
                timeout=timeout,
            )
        )

    def get_with_staleness(
        self,
        key: bytes,
        *,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> ReadResult[bytes | None]:
        return self._run(
            partial(
                self.client.get_with_staleness,
                key,
                consistency=consistency,
                max_staleness=max_staleness,
                timeout=timeout,
            )
        )

    def batch_get(
        self,
        keys: Iterable[bytes],
        *,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> dict[bytes, bytes]:
        return self._run(
            partial(
                self.client.batch_get,
                list(keys),
                consistency=consistency,
                max_staleness=max_staleness,
                timeout=timeout,
            )
        )

    def batch_get_with_staleness(
        self,
        keys: Iterable[bytes],
        *,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> ReadResult[dict[bytes, bytes]]:
        return self._run(
            partial(
                self.client.batch_get_with_staleness,
                list(keys),
                consistency=consistency,
                max_staleness=max_staleness,
                timeout=timeout,
            )
        )

    def contains(self, key: bytes, *, timeout: float | None = None) -> bool:
        return self._run(partial(self.client.contains, key, timeout=timeout))

    def scan(
        self,
        start: bytes,
        end: bytes = b"",
        *,
        limit: int = DEFAULT_SCAN_LIMIT,
        reverse: bool = False,
        keys_only: bool = False,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> list[Pair]:
        return self._run(
            partial(
                self.client.scan,
                start,
                end,
                limit=limit,
                reverse=reverse,
                keys_only=keys_only,
                consistency=consistency,
                max_staleness=max_staleness,
                timeout=timeout,
            )
        )

    def scan_with_staleness(
        self,
        start: bytes,
        end: bytes = b"",
        *,
        limit: int = DEFAULT_SCAN_LIMIT,
        reverse: bool = False,
        keys_only: bool = False,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> ReadResult[list[Pair]]:
        return self._run(
            partial(
                self.client.scan_with_staleness,
                start,
                end,
                limit=limit,
                reverse=reverse,
                keys_only=keys_only,
                consistency=consistency,
                max_staleness=max_staleness,
                timeout=timeout,
            )
        )

    def scan_iter(
        self,
        start: bytes,
        end: bytes = b"",
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        limit: int | None = None,
        reverse: bool = False,
        keys_only: bool = False,
        consistency: ConsistencyArg = Consistency.STRONG,
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> SyncScanIterator:
        if self._closed or self._token is None:
            raise ClientClosed
        pages = trio.from_thread.run_sync(
            partial(
                self.client.scan_iter,
                start,
                end,
                page_size=page_size,
                limit=limit,
                reverse=reverse,
                keys_only=keys_only,
                consistency=consistency,
                max_staleness=max_staleness,
                timeout=timeout,
            ),
            trio_token=self._token,
        )
        return SyncScanIterator(self, pages)

    def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> None:
        self._run(partial(self.client.put, key, value, timeout=timeout))

    def batch_put(
        self,
        pairs: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
        *,
        timeout: float | None = None,
    ) -> None:
        items = dict(pairs) if isinstance(pairs, Mapping) else list(pairs)
        self._run(partial(self.client.batch_put, items, timeout=timeout))

    def delete(self, key: bytes, *, timeout: float | None = None) -> None:
        self._run(partial(self.client.delete, key, timeout=timeout))

    def batch_delete(self, keys: Iterable[bytes], *, timeout: float | None = None) -> None:
        self._run(partial(self.client.batch_delete, list(keys), timeout=timeout))

    def delete_range(self, start: bytes, end: bytes, *, timeout: float | None = None) -> None:
        self._run(partial(self.client.delete_range, start, end, timeout=timeout))

    def compare_and_set(
        self,
        key: bytes,
        expected: bytes | None,
        new: bytes | None,
        *,
        timeout: float | None = None,
    ) -> tuple[bool, bytes | None]:
        return self._run(partial(self.client.compare_and_set, key, expected, new, timeout=timeout))

    def put_if_absent(
        self, key: bytes, value: bytes, *, timeout: float | None = None
    ) -> bytes | None:
        return self._run(partial(self.client.put_if_absent, key, value, timeout=timeout))

    def get_and_put(
        self, key: bytes, value: bytes, *, timeout: float | None = None
    ) -> bytes | None:
        return self._run(partial(self.client.get_and_put, key, value, timeout=timeout))


class SyncScanIterator:
    """The iterator of `SyncClient.scan_iter`: pairs in order, each page
    fetched in the background thread."""

    def __init__(self, owner: SyncClient, pages: ScanIterator) -> None:
        self._owner = owner
        self._pages = pages
        self._buffer: deque[Pair] = deque()

    def __iter__(self) -> Iterator[Pair]:
        return self

    @property
    def staleness(self) -> float:
        """How stale the pairs returned so far may be (`ScanIterator.staleness`)."""
        return self._pages.staleness

    def __next__(self) -> Pair:
        if not self._buffer:
            self._buffer.extend(self._owner._run(self._pages.next_page))
            if not self._buffer:
                raise StopIteration
        return self._buffer.popleft()

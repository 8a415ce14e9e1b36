"""shardkv's smart client: routes each call to the leader of the key's region.

    import client

    async with client.connect(["127.0.0.1:2379"]) as kv:   # PD addresses
        await kv.put(b"k", b"v")
        v = await kv.get(b"k")                             # bytes or None

    with client.SyncClient(["127.0.0.1:2379"]) as kv:      # blocking, for scripts
        kv.put(b"k", b"v")

Modules, pure core first (no I/O, no clock, no trio):

* `errors`: the exceptions raised (`ClientError` and its subclasses);
* `cache`: the region cache (start key -> region + leader hint);
* `retry`: the retry policy (which error means what, backoff, deadlines);
* `plan`: splitting requests by region, walking scans;

then the trio shell:

* `rawkv`: the async `Client`, `connect`;
* `sync`: `SyncClient`, the same calls blocking (trio in a background thread);
* `cli`: the `shardkv kv` command.
"""

from client import errors
from client.errors import (
    ClientClosed,
    ClientError,
    ClusterMismatch,
    DeadlineExceeded,
    InvalidArgument,
    PdUnavailable,
    StoreError,
    UndeterminedError,
)
from client.rawkv import (
    DEFAULT_SCAN_LIMIT,
    DEFAULT_TIMEOUT,
    Client,
    ClientConfig,
    Pair,
    ScanIterator,
    connect,
    open_client,
)
from client.sync import SyncClient, SyncScanIterator

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "DEFAULT_TIMEOUT",
    "Client",
    "ClientClosed",
    "ClientConfig",
    "ClientError",
    "ClusterMismatch",
    "DeadlineExceeded",
    "InvalidArgument",
    "Pair",
    "PdUnavailable",
    "ScanIterator",
    "StoreError",
    "SyncClient",
    "SyncScanIterator",
    "UndeterminedError",
    "connect",
    "errors",
    "open_client",
]

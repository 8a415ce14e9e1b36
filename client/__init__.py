"""shardkv's smart client: routes each call to the leader of the key's region.

    import client

    async with client.connect(["127.0.0.1:2379"]) as kv:   # PD addresses
        await kv.put(b"k", b"v")
        v = await kv.get(b"k")                             # bytes or None
        v = await kv.get(b"k", consistency="follower")     # at any replica

    with client.SyncClient(["127.0.0.1:2379"]) as kv:      # blocking, for scripts
        kv.put(b"k", b"v")

Modules, pure core first (no I/O, no clock, no trio):

* `errors`: the exceptions raised (`ClientError` and its subclasses);
* `checks`: argument checks, and what a call is called in its errors;
* `config`: `ClientConfig`, the tunables, and `Consistency`, what a read
  promises;
* `reads`: a read's `ReadMode`, and `ReadResult` (a value and its staleness);
* `cache`: the region cache (start key -> region + leader hint);
* `session`: the numbering of writes for exactly-once application;
* `attempts`: the retry state of a call (deadline, backoffs, session number);
* `retry`: the retry policy (which error means what, what to do next);
* `plan`: splitting requests by region, walking scans;

then the trio shell:

* `rawkv`: the async `Client` (its public calls), `connect`;
* `locate`: the regions of keys (cache, else the PD), stores, connections;
* `sender`: one request's attempts at one region, retry decisions carried out;
* `batch`: batch and range calls fanned out per region;
* `scan`: scans a page at a time, `ScanIterator`;
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
    StoreDiskFull,
    StoreError,
    UndeterminedError,
    ValueTooLarge,
)
from client.rawkv import (
    DEFAULT_SCAN_LIMIT,
    DEFAULT_TIMEOUT,
    Client,
    ClientConfig,
    Consistency,
    Pair,
    ReadResult,
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
    "Consistency",
    "DeadlineExceeded",
    "InvalidArgument",
    "Pair",
    "PdUnavailable",
    "ReadResult",
    "ScanIterator",
    "StoreDiskFull",
    "StoreError",
    "SyncClient",
    "SyncScanIterator",
    "UndeterminedError",
    "ValueTooLarge",
    "connect",
    "errors",
    "open_client",
]

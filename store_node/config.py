"""Every tunable of a store, with its default and help text.

Set in a TOML file (`--config store.toml`, keys as below) and overridden by
flags of the same name (`--tick-interval 50ms`). Durations accept "100ms",
"5s", "2m"; sizes accept "8MiB", "64KiB".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kvproto.kvrpcpb import DEFAULT_MAX_VALUE_SIZE, MAX_VALUE_SIZE_LIMIT, MAX_WRITE_BYTES
from kvproto.rpc import parse_address
from plumbing.config_file import setting
from store_node.keys import BLOB_FILE_SIZE, LARGE_VALUE_THRESHOLD, MAX_KEY_SIZE
from store_node.log_gc import LogGcConfig


@dataclass(frozen=True, slots=True)
class StoreConfig:
    data_dir: str = setting("", "data directory (kv/, raft/, snap/); required", metavar="DIR")
    raft_dir: str | None = setting(
        None,
        "directory of the Raft log, e.g. on another disk (default: DATA_DIR/raft)",
        metavar="DIR",
    )
    listen: str = setting(
        "127.0.0.1:20160", "address to serve clients and other stores on", metavar="HOST:PORT"
    )
    advertise: str | None = setting(
        None,
        "address other stores and clients use (default: the bound --listen address)",
        metavar="HOST:PORT",
    )
    source_host: str | None = setting(
        None,
        "host that connections to other stores and the PD come from, e.g. the listen "
        "host on a machine with several addresses, so firewalls and peers see this "
        "store's own address (default: the system picks)",
        metavar="HOST",
    )
    status: str | None = setting(
        None,
        "address of the status HTTP server (GET /metrics for Prometheus, GET /status as "
        "JSON), e.g. 127.0.0.1:20180; port 0 picks a free one (logged); off by default",
        metavar="HOST:PORT",
    )
    cluster_token_file: str = setting(
        "",
        "file holding the cluster token (the PD and every store hold the same one): "
        "connections to and from this store must then prove it (or the client token), "
        "and only the cluster's may carry Raft traffic (default: no authentication)",
        metavar="FILE",
    )
    client_token_file: str = setting(
        "",
        "file holding the token clients prove (with --cluster-token-file; default: "
        "clients prove the cluster token)",
        metavar="FILE",
    )
    tls_cert_file: str = setting(
        "",
        "PEM certificate of this store (for the address others dial): with tls_key_file "
        "and tls_ca_file, every connection to and from the store is TLS, mutual between "
        "members (default: no TLS)",
        metavar="FILE",
    )
    tls_key_file: str = setting("", "PEM private key of tls_cert_file", metavar="FILE")
    tls_ca_file: str = setting(
        "",
        "PEM CA that signed the cluster's certificates: the PD's and other stores' are "
        "checked against it, and a client certificate it signed proves a cluster member",
        metavar="FILE",
    )
    pd: tuple[str, ...] = setting(
        ("127.0.0.1:2379",), "PD addresses, comma separated", metavar="HOST:PORT[,...]"
    )
    labels: tuple[tuple[str, str], ...] = setting(
        (), "store labels, e.g. zone=z1,host=h1", metavar="KEY=VALUE[,...]"
    )
    replace_store: int = setting(
        0,
        "join in the place of store ID, whose data was lost: with an empty data directory "
        "at that store's address, register as a new store while the PD makes store ID a "
        "Tombstone (its replicas are re-created); refused while store ID may be alive. "
        "Once replaced, the setting is ignored; 0: none",
        min=0,
        metavar="ID",
    )
    sync: bool = setting(
        True,
        "fsync the Raft log before acknowledging writes; false trades durability on "
        "machine crashes for speed (benchmarks only)",
    )
    tick_interval: float = setting(0.1, "Raft tick interval", kind="duration", min=0.001)
    election_ticks: int = setting(10, "ticks without a leader before an election", min=2)
    heartbeat_ticks: int = setting(2, "ticks between leader heartbeats", min=1)
    lease_margin: float = setting(
        0.2,
        "a leader answers reads from its lease for (election_ticks - 1) * tick_interval "
        "minus this margin after a heartbeat round, covering clock drift between stores; "
        "a margin that leaves nothing turns lease reads off",
        kind="duration",
        min=0.0,
    )
    hibernate_regions: bool = setting(
        True,
        "idle regions stop ticking and heartbeating (2 election timeouts without work); "
        "stores then watch each other's liveness instead",
    )
    max_inflight_msgs: int = setting(256, "unacknowledged appends per follower", min=1)
    max_inflight_bytes: int = setting(
        32 << 20,
        "entry bytes of the unacknowledged appends per follower (at least one append); "
        "0: no bound but max_inflight_msgs",
        kind="size",
        min=0,
    )
    max_size_per_msg: int = setting(
        1 << 20,
        "entry bytes per append message (at least one entry)",
        kind="size",
        min=1,
        max=MAX_WRITE_BYTES,
    )
    max_entry_bytes: int = setting(
        8 << 20,
        "bytes of client writes batched into one log entry (a larger write is an entry of its own)",
        kind="size",
        min=1,
        max=MAX_WRITE_BYTES,
    )
    max_round_bytes: int = setting(
        16 << 20,
        "bytes of client writes a region proposes, and of log entries it applies, in one "
        "round of the store loop (at least one write, one entry; the rest in the next "
        "rounds): a region busy with large values leaves the rounds to the others",
        kind="size",
        min=1,
    )
    max_round_events: int = setting(4096, "events drained into one round of the store loop", min=1)
    max_queued_events: int = setting(
        65536, "events queued for the store loop before callers wait", min=1
    )
    max_key_size: int = setting(
        MAX_KEY_SIZE,
        f"largest key accepted (at most {MAX_KEY_SIZE} bytes, LMDB's limit on a key)",
        kind="size",
        min=1,
        max=MAX_KEY_SIZE,
    )
    max_value_size: int = setting(
        DEFAULT_MAX_VALUE_SIZE,
        f"largest value accepted (at most {MAX_VALUE_SIZE_LIMIT >> 20}MiB: a compare-and-set "
        "carries two in one request, log entry and Raft message); larger ones are refused "
        "before anything is proposed",
        kind="size",
        min=0,
        max=MAX_VALUE_SIZE_LIMIT,
    )
    store_heartbeat_interval: float = setting(
        5.0, "interval of store heartbeats to the PD", kind="duration", min=0.01
    )
    region_heartbeat_interval: float = setting(
        10.0, "interval of region heartbeats from leaders", kind="duration", min=0.01
    )
    asleep_region_heartbeat_interval: float = setting(
        60.0,
        "interval of region heartbeats from sleeping leaders (a sleeping region changes "
        "nothing the PD hears of; anything that would, wakes it first)",
        kind="duration",
        min=0.01,
    )
    min_free_disk: int = setting(
        256 << 20,
        "free space kept in reserve on the data (and Raft) directory's disk: below it the "
        "store refuses client writes (DiskFull) while reads, replication and PD orders go "
        "on, until a tenth more than the reserve is free again; 0 turns the refusal off",
        kind="size",
        min=0,
    )
    enable_failpoints: bool = setting(
        False,
        "serve PUT and DELETE /failpoints/NAME on the status port to inject disk faults at "
        "run time (engine.sync, disk.free; see docs/deploy.md): for testing only",
    )
    kv_sync_interval: float = setting(
        60.0,
        "interval of fsyncs of kv/ (bounds log replay after a machine crash; log "
        "truncation syncs kv/ itself first)",
        kind="duration",
        min=0.001,
    )

    # Log compaction (store_node.log_gc): a region's log is compacted when
    # any of the first three holds, as far as the last two allow.
    log_gc_interval: float = setting(
        600.0,
        "compact a region's log once this long has passed since its last compaction, "
        "whatever its size (0: never for this reason)",
        kind="duration",
        min=0.0,
    )
    log_gc_max_entries: int = setting(
        128,
        "compact a region's log once more than this many of its entries can go (applied, "
        "and not held for a follower)",
        min=1,
    )
    log_gc_max_bytes: int = setting(
        16 << 20,
        "compact a region's log once more than this many of its bytes can go",
        kind="size",
        min=1,
    )
    log_gc_max_follower_lag: int = setting(
        10_000,
        "a leader keeps the log entries a follower at most this many entries behind still "
        "needs; one further behind gets a snapshot instead",
        min=1,
    )
    log_gc_hard_max_bytes: int = setting(
        64 << 20,
        "past this many bytes of a region's log, a leader compacts it to its applied index "
        "whatever its followers still need (they get snapshots)",
        kind="size",
        min=1,
    )
    max_snapshot_sends: int = setting(2, "snapshots sent at once by this store", min=1)
    max_snapshot_receives: int = setting(4, "snapshots received at once by this store", min=1)
    max_connections: int = setting(
        1024,
        "connections the RPC port serves at once (clients and stores); at the limit a "
        "newcomer takes the place of one that sent nothing yet or is idle, else is refused",
        min=1,
    )
    incremental_snapshots: bool = setting(
        True,
        "catch a follower that holds an older copy of a region up by sending only the "
        "sub-ranges that differ (compared by hashes), not the whole snapshot",
    )
    snapshot_chunk_size: int = setting(
        1 << 20, "bytes per snapshot chunk", kind="size", min=1024, max=32 << 20
    )

    # Large values apart from kv/ (store_node.blob_files, blob_gc).
    large_value_threshold: int = setting(
        LARGE_VALUE_THRESHOLD,
        "values longer than this are stored apart from kv/, in blob files under "
        "<data-dir>/blobs (kv/ keeps a pointer; WiscKey, TiKV's Titan); 0 keeps every "
        "value in kv/. Changing it leaves values already written where they are",
        kind="size",
        min=0,
    )
    blob_file_size: int = setting(
        BLOB_FILE_SIZE, "a blob file takes appends until it is this large", kind="size", min=4096
    )
    blob_gc_interval: float = setting(
        60.0,
        "how often the blob files are checked for values kv/ no longer holds (files with "
        "none left are deleted, mostly dead ones rewritten)",
        kind="duration",
        min=0.001,
    )
    blob_gc_discardable_ratio: float = setting(
        0.5,
        "a blob file whose share of dead values reaches this has its live values moved "
        "to the current file, then is deleted",
        min=0.01,
        max=1.0,
    )

    session_ttl: float = setting(
        600.0,
        "a client session idle this long in a region is forgotten there (a retry in it "
        "is then refused, never applied twice); longer than any client's deadline",
        kind="duration",
        min=1.0,
    )

    split_check_interval: float = setting(
        60.0, "interval of full size scans of leader regions", kind="duration", min=0.01
    )
    consistency_check_interval: float = setting(
        0.0,
        "how often each region's replicas are hashed and compared (consistency check; "
        "a store's leaders take their regions one at a time, the longest unchecked first); "
        "each check reads the whole region on every replica; 0 turns periodic checks off "
        "(`shardkv ctl region check ID` still runs one)",
        kind="duration",
        min=0.0,
    )

    def validate(self) -> None:
        if not self.data_dir:
            raise ValueError("data_dir is required (--data-dir DIR)")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks")
        if not self.pd:
            raise ValueError("at least one PD address is needed (--pd HOST:PORT)")
        if self.client_token_file and not self.cluster_token_file:
            raise ValueError("client_token_file needs cluster_token_file too")
        tls = (self.tls_cert_file, self.tls_key_file, self.tls_ca_file)
        if any(tls) and not all(tls):
            raise ValueError("TLS needs tls_cert_file, tls_key_file and tls_ca_file together")
        if self.enable_failpoints and not self.status:
            raise ValueError("enable_failpoints needs a status port (--status HOST:PORT)")
        if self.log_gc_max_bytes > self.log_gc_hard_max_bytes:
            raise ValueError("log_gc_max_bytes must not be above log_gc_hard_max_bytes")
        if self.status:
            try:
                parse_address(self.status, listen=True)
            except ValueError as e:
                raise ValueError(f"bad value for status: {e}") from None
        host = self.listen.rpartition(":")[0].strip("[]")
        if host in ("0.0.0.0", "::", "") and not self.advertise:
            # It would register an address nobody can dial (TiKV refuses too).
            raise ValueError(
                f"listen {self.listen} takes every interface: set advertise (--advertise "
                "HOST:PORT) to the address other stores and clients dial"
            )

    def log_gc_config(self) -> LogGcConfig:
        """The log compaction settings in the core's units (ticks)."""
        interval = self.log_gc_interval
        return LogGcConfig(
            max_entries=self.log_gc_max_entries,
            max_bytes=self.log_gc_max_bytes,
            interval_ticks=math.ceil(interval / self.tick_interval) if interval else 0,
            max_follower_lag=self.log_gc_max_follower_lag,
            hard_max_bytes=self.log_gc_hard_max_bytes,
        )


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """What the store core runs with: `StoreConfig` turned into ticks and
    bytes by the shell, or set directly by tests and the simulation."""

    election_ticks: int = 10
    heartbeat_ticks: int = 2
    max_inflight_msgs: int = 256
    # raft.Config.max_inflight_bytes (0: unlimited): with large entries, 256
    # appends in flight to one follower could be gigabytes.
    max_inflight_bytes: int = 32 << 20
    max_size_per_msg: int = 1 << 20
    # Upper bound on the ops bytes batched into one log entry.
    max_entry_bytes: int = 8 << 20
    # Bytes of queued writes a region proposes in one round (at least one
    # write), and raft.Config.max_committed_size_per_ready: the entry bytes
    # it applies in one (at least one entry).
    max_round_bytes: int = 16 << 20
    # Writes queued on one region beyond this many bytes get ServerIsBusy.
    max_pending_write_bytes: int = 64 << 20
    # A client session idle this long in a region is forgotten there
    # (store_node.sessions); a client must not retry a write for longer.
    session_ttl_ms: int = 10 * 60_000
    # How long a quorum-acknowledged heartbeat round keeps a leader's lease
    # (store_node.lease.lease_duration); 0: every read takes a ReadIndex round.
    lease_seconds: float = 0.0
    # raft.Config.skip_bcast_commit: followers learn a commit index with the
    # next append or heartbeat, not from an empty append of their own.
    skip_bcast_commit: bool = True
    log_gc: LogGcConfig = field(default_factory=LogGcConfig)
    # Hibernating regions (store_node.hibernate): a leader idle this many
    # ticks asks its region to sleep (0: never); a store silent this many
    # ticks wakes the sleeping peers that depend on it.
    hibernate_after_ticks: int = 20
    liveness_ticks: int = 10
    # Each region's replicas are hashed and compared every this many ticks
    # (store_node.consistency; 0: only when the PD orders a check).
    consistency_check_ticks: int = 0

"""Every tunable of a store, with its default and help text.

Set in a TOML file (`--config store.toml`, keys as below) and overridden by
flags of the same name (`--tick-interval 50ms`). Durations accept "100ms",
"5s", "2m"; sizes accept "8MiB", "64KiB".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvproto.rpc import parse_address
from plumbing.config_file import setting
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
    max_size_per_msg: int = setting(1 << 20, "entry bytes per append message", kind="size", min=1)
    max_entry_bytes: int = setting(
        8 << 20, "bytes of client writes batched into one log entry", kind="size", min=1
    )
    max_round_events: int = setting(4096, "events drained into one round of the store loop", min=1)
    max_queued_events: int = setting(
        65536, "events queued for the store loop before callers wait", min=1
    )
    max_key_size: int = setting(8 << 10, "largest key accepted", kind="size", min=1)
    max_value_size: int = setting(8 << 20, "largest value accepted", kind="size", min=0)
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
    kv_sync_interval: float = setting(
        60.0,
        "interval of fsyncs of kv/ (bounds log replay after a machine crash; log "
        "truncation syncs kv/ itself first)",
        kind="duration",
        min=0.001,
    )

    raft_log_gc_threshold: int = setting(
        128, "truncate a region's log once this many applied entries can go", min=1
    )
    raft_log_gc_count_limit: int = setting(
        10_000,
        "lag allowance: a follower further behind than this gets a snapshot instead of "
        "holding back the leader's log truncation",
        min=1,
    )
    raft_log_gc_size_limit: int = setting(
        64 << 20, "truncate regardless of followers past this many log bytes", kind="size", min=1
    )
    max_snapshot_sends: int = setting(2, "snapshots sent at once by this store", min=1)
    max_snapshot_receives: int = setting(4, "snapshots received at once by this store", min=1)
    max_connections: int = setting(
        1024,
        "connections the RPC port serves at once (clients and stores); at the limit a "
        "newcomer takes the place of one that sent nothing yet or is idle, else is refused",
        min=1,
    )
    snapshot_chunk_size: int = setting(
        1 << 20, "bytes per snapshot chunk", kind="size", min=1024, max=32 << 20
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


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """What the store core runs with: `StoreConfig` turned into ticks and
    bytes by the shell, or set directly by tests and the simulation."""

    election_ticks: int = 10
    heartbeat_ticks: int = 2
    max_inflight_msgs: int = 256
    max_size_per_msg: int = 1 << 20
    # Upper bound on the ops bytes batched into one log entry.
    max_entry_bytes: int = 8 << 20
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

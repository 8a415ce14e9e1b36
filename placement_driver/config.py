"""The PD's configuration: start-up options and the cluster config.

Two dataclasses, one flat namespace of keys (pd.toml, flags, RPC and HTTP
use the same names):

* `ServerConfig`: how this PD process runs (`data_dir`, `listen`, `http`,
  `admin_token_file`). Read at start only.
* `ClusterConfig`: what the cluster runs with (replicas, split thresholds,
  store down times, schedule limits). Persisted with the cluster metadata,
  readable and settable over RPC (`SetConfig`, all or nothing).

Precedence of a cluster key at start: default < stored (the value the
cluster last ran with, e.g. set over RPC) < pd.toml < flag. A key that
neither the file nor a flag names keeps its stored value across restarts.

Value forms are those of `plumbing.config_file` and `plumbing.units`
(shared with the store): durations as seconds (a number) or text ("500ms",
"20s", "30m", "1h"), sizes as bytes (a number) or text ("64KiB", "96MiB";
"MB" is 1000**2). An unknown key or a bad value is a `ConfigError` naming
the key.

Pure: no I/O but reading the TOML file in `load_startup_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kvproto.rpc import parse_address
from plumbing import config_file
from plumbing.config_file import ConfigError, setting
from plumbing.units import format_duration, format_size

__all__ = [
    "CLUSTER_KEYS",
    "SERVER_KEYS",
    "ClusterConfig",
    "ConfigError",
    "ServerConfig",
    "StartupConfig",
    "cluster_config_from",
    "format_value",
    "load_startup_config",
    "parse_listen_address",
]

MiB: Final = 1 << 20
MAX_DURATION: Final = 10 * 365 * 24 * 3600.0  # ten years
# Upper bounds of the cluster keys, far beyond any sensible value but well
# inside the 64-bit ints of the wire: a value the PD stores travels in
# heartbeat answers (region_max_size, region_max_keys), which a store
# refuses whole if any int is beyond 64 bits.
MAX_REGION_SIZE: Final = 1 << 40  # 1 TiB
MAX_REGION_KEYS: Final = 1 << 40
MAX_LIMIT: Final = 1 << 20  # operators, snapshots or pending peers at once


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Start-up options of one PD process."""

    data_dir: str = setting("", "data directory of the PD (its LMDB environment); required")
    listen: str = setting(
        "127.0.0.1:2379", "HOST:PORT of the PD RPC (stores, clients); port 0 picks a free port"
    )
    http: str = setting(
        "127.0.0.1:2380", "HOST:PORT of the admin HTTP API (JSON); port 0 picks a free port"
    )
    admin_token_file: str = setting(
        "",
        "file holding the admin token: every admin API request but GET and HEAD then needs "
        "'Authorization: Bearer <token>' (read at start; default: no token, orders are open)",
    )
    cluster_token_file: str = setting(
        "",
        "file holding the cluster token (every store holds the same one): PD RPC "
        "connections must then prove it (stores) or the client token (clients, which may "
        "then only read routing: regions, stores, config) (default: no authentication)",
    )
    client_token_file: str = setting(
        "",
        "file holding the token clients prove (with --cluster-token-file; default: clients "
        "prove the cluster token)",
    )

    max_connections: int = setting(
        1024,
        "connections the RPC port serves at once (stores and clients); at the limit a "
        "newcomer takes the place of one that sent nothing yet or is idle, else is refused",
        min=1,
    )

    tls_cert_file: str = setting(
        "",
        "PEM certificate of the PD's RPC port (for the address stores and clients dial): "
        "with tls_key_file, its RPC connections are TLS (default: no TLS)",
    )
    tls_key_file: str = setting("", "PEM private key of tls_cert_file")
    tls_ca_file: str = setting(
        "",
        "PEM CA of the cluster: a client certificate it signed proves a cluster member "
        "(mutual TLS); without one, connections are encrypted and roles come from tokens",
    )

    def validate(self) -> None:
        if not self.data_dir:
            raise ValueError("data_dir is required: pass --data-dir DIR or set data_dir in pd.toml")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS needs tls_cert_file and tls_key_file together")
        if self.tls_ca_file and not self.tls_cert_file:
            raise ValueError("tls_ca_file needs tls_cert_file and tls_key_file")
        if self.client_token_file and not self.cluster_token_file:
            raise ValueError("client_token_file needs cluster_token_file too")
        for name in ("listen", "http"):
            try:
                parse_listen_address(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"bad value for {name}: {e}") from None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The cluster config. Durations are seconds, sizes bytes."""

    max_replicas: int = setting(3, "replicas (peers) of each region", min=1, max=15)
    region_max_size: int = setting(
        96 * MiB, "a region larger than this is split", kind="size", min=1, max=MAX_REGION_SIZE
    )
    region_max_keys: int = setting(
        960_000, "a region with more keys than this is split", min=1, max=MAX_REGION_KEYS
    )
    store_disconnect_time: float = setting(
        20.0,
        "a store without heartbeat this long is Disconnected (no new operators on it)",
        kind="duration",
        min=0.001,
        max=MAX_DURATION,
    )
    max_store_down_time: float = setting(
        30 * 60.0,
        "a store without heartbeat this long is Down (its replicas get replaced)",
        kind="duration",
        min=0.001,
        max=MAX_DURATION,
    )
    leader_schedule_limit: int = setting(
        4, "leader transfers scheduled at once", min=0, max=MAX_LIMIT
    )
    region_schedule_limit: int = setting(
        2048, "region moves scheduled at once", min=0, max=MAX_LIMIT
    )
    replica_schedule_limit: int = setting(
        64, "replica repairs scheduled at once", min=0, max=MAX_LIMIT
    )
    merge_schedule_limit: int = setting(8, "region merges scheduled at once", min=0, max=MAX_LIMIT)
    hot_region_schedule_limit: int = setting(
        4, "hot region moves scheduled at once", min=0, max=MAX_LIMIT
    )
    tolerant_size_ratio: float = setting(
        0.0,
        "balance schedulers move a leader (a replica) only between stores whose scores differ "
        "by more than twice this many leaders (sizes of the region moved); 0: adaptive, "
        "1/200 of the most regions on one store, at least 1",
        min=0,
        max=1e6,
    )
    max_snapshot_count: int = setting(
        64, "snapshots a store sends or receives at once", min=0, max=MAX_LIMIT
    )
    max_pending_peer_count: int = setting(
        64, "pending peers a store may have", min=0, max=MAX_LIMIT
    )

    def validate(self) -> None:
        if not math.isfinite(self.tolerant_size_ratio):
            raise ValueError(f"bad value for tolerant_size_ratio: {self.tolerant_size_ratio}")

    def check_rules(self) -> None:
        """The rules between keys; raises ConfigError."""
        if self.store_disconnect_time >= self.max_store_down_time:
            raise ConfigError(
                "store_disconnect_time must be shorter than max_store_down_time "
                f"(got {format_value(self, 'store_disconnect_time')} and "
                f"{format_value(self, 'max_store_down_time')})"
            )

    def items(self) -> dict[str, str]:
        """Every key with its value as text, in declaration order (the
        values of GetConfig / SetConfig and of the stored config)."""
        return {name: format_value(self, name) for name in CLUSTER_KEYS}

    def toml_values(self) -> dict[str, int | float | str]:
        """Every key as it would be written in pd.toml: numbers as numbers,
        sizes and durations as text (the HTTP API's JSON)."""
        out: dict[str, int | float | str] = {}
        for name in CLUSTER_KEYS:
            kind = _FIELDS[name].metadata.get("kind")
            out[name] = format_value(self, name) if kind else getattr(self, name)
        return out


_FIELDS: Final = {f.name: f for f in dataclasses.fields(ClusterConfig)}
CLUSTER_KEYS: Final = tuple(_FIELDS)
SERVER_KEYS: Final = tuple(f.name for f in dataclasses.fields(ServerConfig))


def format_value(cfg: ClusterConfig, name: str) -> str:
    """The text of one key's value; parsing it gives the value back exactly."""
    value = getattr(cfg, name)
    kind = _FIELDS[name].metadata.get("kind")
    if kind == "duration":
        return format_duration(value)
    if kind == "size":
        return format_size(value)
    return str(value)


def cluster_config_from(
    values: Mapping[str, object], base: ClusterConfig | None = None, *, check_rules: bool = True
) -> ClusterConfig:
    """`base` (default: the defaults) with `values` applied: each value as in
    pd.toml or as text. Raises ConfigError naming the first unknown key or
    bad value, or (with `check_rules`) a broken rule between keys."""
    _check_known(values, CLUSTER_KEYS, what="cluster config key")
    merged: dict[str, object] = dict(base.items()) if base is not None else {}
    merged.update(values)
    config = config_file.load(ClusterConfig, None, merged)
    if check_rules:
        config.check_rules()
    return config


@dataclass(frozen=True, slots=True)
class StartupConfig:
    """What `shardkv pd` starts with: the server options, and the cluster
    keys named explicitly by pd.toml or flags (raw values, already checked
    to parse), which win over the stored config."""

    server: ServerConfig
    cluster_overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)


def load_startup_config(path: str | None, flags: Mapping[str, object]) -> StartupConfig:
    """Read pd.toml at `path` (if any), apply `flags` (None values are
    unset flags) and check everything. Raises ConfigError."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(config_file.read_toml(path))
        _check_known(values, SERVER_KEYS + CLUSTER_KEYS, what="config key", where=path)
    values.update({k: v for k, v in flags.items() if v is not None})
    _check_known(values, SERVER_KEYS + CLUSTER_KEYS, what="config key")
    server = config_file.load(
        ServerConfig, None, {k: v for k, v in values.items() if k in SERVER_KEYS}
    )
    overrides = {k: v for k, v in values.items() if k in CLUSTER_KEYS}
    # Parse them now, so that a bad value stops the process before it opens
    # anything. Rules between keys need the stored config: the PD checks
    # them when it starts (still exit code 2).
    cluster_config_from(overrides, check_rules=False)
    return StartupConfig(server, overrides)


def parse_listen_address(address: str) -> tuple[str, int]:
    """ "host:port" or "[v6host]:port" with 0 <= port < 65536 -> (host, port)."""
    return parse_address(address, listen=True)


def _check_known(
    values: Iterable[str], known: tuple[str, ...], *, what: str, where: str | None = None
) -> None:
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            place = f" in {where}" if where else ""
            raise ConfigError(
                f"unknown {what} {key!r}{place}{suggestion}; known keys: {', '.join(known)}"
            )

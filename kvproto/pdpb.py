"""The placement driver's RPC (tags 100..199).

Every request starts with a `RequestHeader` and every response with a
`ResponseHeader`. The cluster id is generated when the cluster is
bootstrapped. A request carries it, and an id that is not the PD's is
refused with `PdErrorCode.CLUSTER_MISMATCH`; 0 ("not known yet") only in
the `CLUSTER_ID_OPTIONAL` requests, those a fresh member sends before it
can know the id. A response header always carries the PD's cluster id (0
before bootstrap), which is how a member learns it.

The PD never calls stores: it answers region heartbeats with the next step
of the region's operator, if any.

Tags and enum values are part of the wire and disk formats: never reused,
never renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from kvproto.codec import wire
from kvproto.metapb import Peer, PeerId, Region, RegionEpoch, RegionId, Store, StoreId
from kvproto.raft_cmdpb import ChangePeerRequest


class PdErrorCode(IntEnum):
    INTERNAL = 1
    NOT_BOOTSTRAPPED = 2
    ALREADY_BOOTSTRAPPED = 3
    CLUSTER_MISMATCH = 4
    INVALID_ARGUMENT = 5
    STORE_NOT_FOUND = 6
    STORE_TOMBSTONE = 7
    DUPLICATE_STORE_ADDRESS = 8
    REGION_NOT_FOUND = 9
    STALE_REGION = 10
    UNKNOWN_CONFIG = 11
    # A well-formed request that the cluster's current state refuses (a
    # store to drain while too few others are Up, a region with an operator
    # running): it may succeed later, unchanged.
    FAILED_PRECONDITION = 12


@wire(100)
@dataclass(frozen=True, slots=True)
class PdError:
    code: PdErrorCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.name.lower()}: {self.message}"


@wire(101)
@dataclass(frozen=True, slots=True)
class RequestHeader:
    cluster_id: int = 0


@wire(102)
@dataclass(frozen=True, slots=True)
class ResponseHeader:
    cluster_id: int = 0
    error: PdError | None = None


# -- bootstrap and ids -------------------------------------------------------


@wire(103)
@dataclass(frozen=True, slots=True)
class IsBootstrappedRequest:
    header: RequestHeader


@wire(104)
@dataclass(frozen=True, slots=True)
class IsBootstrappedResponse:
    header: ResponseHeader
    bootstrapped: bool = False


@wire(105)
@dataclass(frozen=True, slots=True)
class BootstrapRequest:
    """Accepted once per cluster: the first store and the first region."""

    header: RequestHeader
    store: Store
    region: Region


@wire(106)
@dataclass(frozen=True, slots=True)
class BootstrapResponse:
    header: ResponseHeader


@wire(107)
@dataclass(frozen=True, slots=True)
class AllocIdRequest:
    header: RequestHeader


@wire(108)
@dataclass(frozen=True, slots=True)
class AllocIdResponse:
    """A cluster-unique id, larger than every id allocated before (even
    across PD restarts)."""

    header: ResponseHeader
    id: int = 0


# -- stores ----------------------------------------------------------------------


@wire(110)
@dataclass(frozen=True, slots=True)
class StoreStats:
    store_id: StoreId
    capacity: int = 0  # bytes of the disk holding the data directory
    available: int = 0
    used_size: int = 0  # bytes used by the store's data
    region_count: int = 0
    leader_count: int = 0
    sending_snap_count: int = 0
    receiving_snap_count: int = 0
    applying_snap_count: int = 0
    # Writes and reads per second since the last heartbeat.
    write_keys_rate: float = 0.0
    read_keys_rate: float = 0.0
    is_busy: bool = False


@wire(111)
@dataclass(frozen=True, slots=True)
class PutStoreRequest:
    """Register or update a store (address, labels). A store id must come
    from AllocId; an address used by another live store is refused."""

    header: RequestHeader
    store: Store


@wire(112)
@dataclass(frozen=True, slots=True)
class PutStoreResponse:
    header: ResponseHeader


@wire(147)
@dataclass(frozen=True, slots=True)
class ReplaceStoreRequest:
    """Register `store` (a new id from AllocId) in the place of store
    `replaced`, whose data was lost: the PD makes `replaced` a Tombstone
    (its peers are re-created elsewhere) and frees its address for
    `store`. Refused unless `replaced` is at `store`'s address and has not
    heartbeated for `store_disconnect_time` (a live store is never
    replaced). Repeating an accepted request is accepted."""

    header: RequestHeader
    store: Store
    replaced: StoreId


@wire(148)
@dataclass(frozen=True, slots=True)
class ReplaceStoreResponse:
    header: ResponseHeader


@wire(113)
@dataclass(frozen=True, slots=True)
class GetStoreRequest:
    header: RequestHeader
    store_id: StoreId


@wire(114)
@dataclass(frozen=True, slots=True)
class GetStoreResponse:
    header: ResponseHeader
    store: Store | None = None
    stats: StoreStats | None = None


@wire(115)
@dataclass(frozen=True, slots=True)
class GetAllStoresRequest:
    header: RequestHeader
    exclude_tombstone: bool = True


@wire(116)
@dataclass(frozen=True, slots=True)
class GetAllStoresResponse:
    header: ResponseHeader
    stores: tuple[Store, ...] = ()


@wire(117)
@dataclass(frozen=True, slots=True)
class StoreHeartbeatRequest:
    header: RequestHeader
    stats: StoreStats


@wire(118)
@dataclass(frozen=True, slots=True)
class StoreHeartbeatResponse:
    """Carries the split thresholds so stores learn them from the PD, and
    the regions led on the store that the PD asks to hear from now (it has
    an operator step waiting for them, which travels only in the answer to
    a region heartbeat). `report_leaders`: the PD has not heard from this
    store since it started, so it knows none of its leaders (they are not
    persisted): the store reports every region it leads now, sleeping ones
    included, rather than within their 60-s interval."""

    header: ResponseHeader
    region_max_size: int = 0
    region_max_keys: int = 0
    report_regions: tuple[RegionId, ...] = ()
    report_leaders: bool = False


@wire(145)
@dataclass(frozen=True, slots=True)
class WaitOrdersRequest:
    """A store's long poll for the regions the PD wants to hear from now
    (the same as `StoreHeartbeatResponse.report_regions`): answered as soon
    as there are some, or with none after `wait_seconds` (the PD caps it)."""

    header: RequestHeader
    store_id: StoreId
    wait_seconds: float


@wire(146)
@dataclass(frozen=True, slots=True)
class WaitOrdersResponse:
    header: ResponseHeader
    report_regions: tuple[RegionId, ...] = ()


# -- regions -----------------------------------------------------------------------


@wire(120)
@dataclass(frozen=True, slots=True)
class PeerStats:
    peer: Peer
    down_seconds: int = 0


@wire(121)
@dataclass(frozen=True, slots=True)
class RegionHeartbeatRequest:
    """Sent by a region's leader periodically and at once when its leader or
    epoch changes.

    The flow fields count the region's client traffic at this leader over
    the last `interval_seconds`, since its previous heartbeat of the region
    (or since it became leader): keys and bytes (key + value) of the client
    writes of its term it applied (puts and deletes; a delete range counts
    nothing) and of the pairs its reads returned. An interval of 0 measured
    nothing (the counts wait for the next heartbeat). Fields are positional
    on the wire (appended here, with defaults): PD and stores upgrade
    together."""

    header: RequestHeader
    region: Region
    leader: Peer
    term: int = 0
    approximate_size: int = 0
    approximate_keys: int = 0
    down_peers: tuple[PeerStats, ...] = ()
    pending_peers: tuple[Peer, ...] = ()
    written_bytes: int = 0
    written_keys: int = 0
    read_bytes: int = 0
    read_keys: int = 0
    interval_seconds: float = 0.0


@wire(122)
@dataclass(frozen=True, slots=True)
class SplitRegion:
    """Ask the leader to split at these keys (strictly increasing, inside the
    region); no keys means "choose split keys by size"."""

    keys: tuple[bytes, ...] = ()


@wire(123)
@dataclass(frozen=True, slots=True)
class RegionHeartbeatResponse:
    """The next operator step for the region, if any (at most one of the
    step fields is set). `region_epoch` is the epoch the step was planned on:
    the leader ignores a step planned on another epoch. `consistency_check`,
    besides any step: the id of a consistency check an administrator asked
    for, which the leader starts now (0: none)."""

    header: ResponseHeader
    region_id: int = 0
    region_epoch: RegionEpoch | None = None
    change_peer: ChangePeerRequest | None = None
    transfer_leader: Peer | None = None
    split_region: SplitRegion | None = None
    consistency_check: int = 0


@wire(124)
@dataclass(frozen=True, slots=True)
class GetRegionRequest:
    """The region containing `key`."""

    header: RequestHeader
    key: bytes


@wire(125)
@dataclass(frozen=True, slots=True)
class GetRegionByIdRequest:
    header: RequestHeader
    region_id: RegionId


@wire(126)
@dataclass(frozen=True, slots=True)
class GetRegionResponse:
    """`region` None: not known (yet). `leader` None: no leader reported."""

    header: ResponseHeader
    region: Region | None = None
    leader: Peer | None = None


@wire(127)
@dataclass(frozen=True, slots=True)
class ScanRegionsRequest:
    """Regions overlapping [start_key, end_key) in key order; limit 0 is no
    limit."""

    header: RequestHeader
    start_key: bytes
    end_key: bytes = b""
    limit: int = 0


@wire(128)
@dataclass(frozen=True, slots=True)
class RegionInfo:
    region: Region
    leader: Peer | None = None


@wire(129)
@dataclass(frozen=True, slots=True)
class ScanRegionsResponse:
    header: ResponseHeader
    regions: tuple[RegionInfo, ...] = ()


@wire(130)
@dataclass(frozen=True, slots=True)
class AskBatchSplitRequest:
    header: RequestHeader
    region: Region
    split_count: int


@wire(131)
@dataclass(frozen=True, slots=True)
class SplitId:
    """Ids for one new region: its id and one peer id per peer of the region
    being split, in the same order."""

    new_region_id: RegionId
    new_peer_ids: tuple[PeerId, ...]


@wire(132)
@dataclass(frozen=True, slots=True)
class AskBatchSplitResponse:
    header: ResponseHeader
    ids: tuple[SplitId, ...] = ()


@wire(133)
@dataclass(frozen=True, slots=True)
class ReportBatchSplitRequest:
    header: RequestHeader
    regions: tuple[Region, ...]


@wire(134)
@dataclass(frozen=True, slots=True)
class ReportBatchSplitResponse:
    header: ResponseHeader


# -- consistency checks ------------------------------------------------------------


@wire(160)
@dataclass(frozen=True, slots=True)
class ReportRegionHashRequest:
    """One replica's hash of its copy of a region at a consistency check's
    index (`store_node.consistency`): every replica of `region` (the region
    as of `index`) sends one. `check_id` is the id of the check the PD asked
    for, 0 for a periodic one."""

    header: RequestHeader
    region: Region
    check_id: int
    index: int
    store_id: StoreId
    hash: bytes


@wire(161)
@dataclass(frozen=True, slots=True)
class ReportRegionHashResponse:
    header: ResponseHeader


# -- config -------------------------------------------------------------------------


@wire(140)
@dataclass(frozen=True, slots=True)
class ConfigItem:
    """One config key and its value as text (as in pd.toml)."""

    name: str
    value: str


@wire(141)
@dataclass(frozen=True, slots=True)
class GetConfigRequest:
    header: RequestHeader


@wire(142)
@dataclass(frozen=True, slots=True)
class GetConfigResponse:
    header: ResponseHeader
    items: tuple[ConfigItem, ...] = ()


@wire(143)
@dataclass(frozen=True, slots=True)
class SetConfigRequest:
    """Set config keys; all or nothing: an unknown key or a bad value refuses
    the whole request."""

    header: RequestHeader
    items: tuple[ConfigItem, ...]


@wire(144)
@dataclass(frozen=True, slots=True)
class SetConfigResponse:
    header: ResponseHeader
    items: tuple[ConfigItem, ...] = ()


# The requests that may carry cluster id 0 to a bootstrapped PD: what a
# fresh store sends before it can know the id (store_node.identity). It asks
# IsBootstrapped first, whose answer carries the id; but another fresh store
# may bootstrap the cluster between that answer and this store's own
# AllocId (its store, region and peer ids) and Bootstrap (then refused with
# ALREADY_BOOTSTRAPPED, whose header teaches the id). Everything else,
# PutStore included, is sent once the id is known; a client (PdClient) asks
# IsBootstrapped before its first other call. None of these three changes
# what the cluster holds beyond burning ids, so accepting them unchecked
# costs nothing: the check is against a member of another cluster acting on
# this one (authentication is the token's or TLS's job, not this id's).
CLUSTER_ID_OPTIONAL: frozenset[type] = frozenset(
    {IsBootstrappedRequest, BootstrapRequest, AllocIdRequest}
)

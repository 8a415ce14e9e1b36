"""`PdServer`: the trio shell around the pure PD core.

It owns the nursery, the sockets and the storage; the decisions are the
core's (`Cluster`, `PdService`). One lifetime, one nursery:

* the PD RPC (kvproto `RpcServer`, one handler for every pdpb request);
* the admin HTTP API (`AdminApi` served by hypercorn's trio worker), and
  `GET /metrics` on the same port (`PdMetrics`: a registry of its own);
* a task that re-derives store states exactly when the next one changes
  (Up -> Disconnected -> Down; woken early by heartbeats, new stores and
  config changes), on `trio.current_time()`, so trio's MockClock drives it;
* a task that flushes region metadata every `region_flush_interval`;
* the scheduling: an `OperatorController` answers region heartbeats with
  operator steps (a store long-polls with WaitOrders for the regions whose
  new operator waits for a heartbeat: held here until an operator starts,
  so a step goes out in about a round trip), a task runs its `patrol`
  every `patrol_interval` (timeouts, the replica checker over every region,
  burying empty Offline stores), and another the schedulers
  (`SchedulerController.run`: balance-leader, balance-region, evict-leader;
  their set persisted in the storage) on an adaptive interval: 50 ms after
  a run that started operators, growing to the patrol interval while they
  find nothing. `patrol()` runs both once (tests).

Administrators' orders (the HTTP API calls the same core methods):
`split_region` starts a split operator, `set_store_state` marks a store
Offline (decommission), Up again, or Tombstone; `schedulers` are added,
removed and paused.

Persistence: `LmdbMetaStorage` under the data directory. Cluster id, stores,
id blocks and config are written through before the request is answered;
regions are batched (at most `region_flush_interval` of region changes is
lost in a crash, and re-learnt from the next heartbeats) and flushed on
shutdown. LMDB writes run on the trio thread: they are rare and small, and
keeping them there keeps every request handler atomic (no await between
reading and changing the cluster).

Stop it by cancelling its scope: it flushes the regions and closes the
storage on the way out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import hypercorn.config
import hypercorn.trio
import trio

from kvproto import pdpb
from kvproto.metapb import StoreState
from kvproto.rpc import RequestContext, RpcServer
from kvproto.rpc.auth import security_from_files
from kvproto.rpc.tls import tls_from_files
from placement_driver.cluster import Cluster
from placement_driver.config import ServerConfig, parse_listen_address
from placement_driver.consistency import ConsistencyChecks
from placement_driver.http_api import AdminApi, Text
from placement_driver.id_alloc import DEFAULT_ID_ALLOC_STEP
from placement_driver.metrics import CONTENT_TYPE_LATEST, PdMetrics
from placement_driver.operator_controller import (
    DEFAULT_HISTORY_SIZE,
    OperatorController,
    PatrolResult,
)
from placement_driver.operators import Operator, OperatorTimeouts
from placement_driver.schedulers import SchedulerController
from placement_driver.service import RESPONSE_TYPES, OperatorHook, PdService
from placement_driver.storage import LmdbMetaStorage, MetaStorage
from placement_driver.stores import StoreInfo
from plumbing.config_file import read_token_file

__all__ = ["PdAddresses", "PdServer"]

log = logging.getLogger(__name__)

DEFAULT_REGION_FLUSH_INTERVAL = 1.0
DEFAULT_PATROL_INTERVAL = 1.0
# The schedulers' interval after a run that started operators, and its
# growth after each run that did not (up to the patrol interval).
MIN_SCHEDULE_INTERVAL = 0.05
SCHEDULE_BACKOFF = 1.5
# The longest a WaitOrders long poll is held (a store asks for less).
MAX_ORDER_WAIT = 60.0

# What a connection proven with the client token may ask (routing reads);
# the rest (registration, heartbeats, ids, splits, config changes) is the
# cluster's.
CLIENT_REQUESTS: Final = frozenset(
    {
        pdpb.IsBootstrappedRequest,
        pdpb.GetStoreRequest,
        pdpb.GetAllStoresRequest,
        pdpb.GetRegionRequest,
        pdpb.GetRegionByIdRequest,
        pdpb.ScanRegionsRequest,
        pdpb.GetConfigRequest,
    }
)

# Requests after which the store-state task must look at the stores again.
_WAKES_STORE_STATES = (
    pdpb.BootstrapRequest,
    pdpb.PutStoreRequest,
    pdpb.ReplaceStoreRequest,
    pdpb.StoreHeartbeatRequest,
    pdpb.SetConfigRequest,
)


@dataclass(frozen=True, slots=True)
class PdAddresses:
    """Where a running PD listens: "host:port" each (bound ports, not 0)."""

    rpc: str
    http: str
    tls: bool = False  # the HTTP port is HTTPS

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.http}"


class PdServer:
    """One PD process's service.

    ``await nursery.start(server.run)`` returns the `PdAddresses` once both
    listeners are bound; `cluster` and `addresses` are set from then on.
    `run` raises ConfigError if the stored config and the overrides
    together are invalid or the admin token file cannot be used,
    DataDirLockedError if another PD uses the data directory.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        cluster_overrides: Mapping[str, object] | None = None,
        id_alloc_step: int = DEFAULT_ID_ALLOC_STEP,
        region_flush_interval: float = DEFAULT_REGION_FLUSH_INTERVAL,
        rng: random.Random | None = None,
        operators: OperatorHook | None = None,
        storage: MetaStorage | None = None,
        patrol_interval: float = DEFAULT_PATROL_INTERVAL,
        operator_history_size: int = DEFAULT_HISTORY_SIZE,
        operator_timeouts: OperatorTimeouts | None = None,
    ) -> None:
        """`storage` replaces the LMDB storage under `config.data_dir`
        (tests of failure handling); by default it is opened by `run`.
        `operators` replaces the PD's `OperatorController` (scheduling) by
        another hook: then nothing patrols and the operator endpoints of the
        HTTP API answer 503."""
        self.config = config
        self._cluster_overrides = dict(cluster_overrides or {})
        self._id_alloc_step = id_alloc_step
        self._region_flush_interval = region_flush_interval
        self._rng = rng or random.SystemRandom()
        self._controller: OperatorController | None
        if operators is None:
            operators = OperatorController(operator_history_size, operator_timeouts)
        self._controller = operators if isinstance(operators, OperatorController) else None
        self._schedulers: SchedulerController | None = None  # loaded by `run`
        self._operators = operators
        self._patrol_interval = patrol_interval
        self._storage = storage
        self._cluster: Cluster | None = None
        self._service: PdService | None = None
        self._addresses: PdAddresses | None = None
        self._wake_store_states = trio.Event()
        # Set (and replaced) when an operator starts or a consistency check
        # is ordered: wakes the long polls.
        self._operator_started = trio.Event()
        if self._controller is not None:
            self._controller.on_start = self._wake_long_polls
        # Replica consistency checks: ordered through the admin API, their
        # digests reported by the stores.
        self.consistency = ConsistencyChecks()
        self._rpc_server = RpcServer(
            dict.fromkeys(RESPONSE_TYPES, self._handle), max_connections=config.max_connections
        )
        self.metrics = PdMetrics(lambda: self._cluster, self._controller)

    @property
    def rpc_server(self) -> RpcServer:
        """The RPC server; its `handle_connection` serves in-memory streams
        too (tests under trio's MockClock)."""
        return self._rpc_server

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            raise RuntimeError("the PD is not running")
        return self._cluster

    @property
    def operator_controller(self) -> OperatorController:
        if self._controller is None:
            raise RuntimeError("this PD runs without an operator controller")
        return self._controller

    @property
    def schedulers(self) -> SchedulerController:
        if self._schedulers is None:
            raise RuntimeError("this PD is not running or runs without an operator controller")
        return self._schedulers

    @property
    def addresses(self) -> PdAddresses:
        if self._addresses is None:
            raise RuntimeError("the PD is not running")
        return self._addresses

    async def run(
        self, *, task_status: trio.TaskStatus[PdAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        token_file = self.config.admin_token_file
        # Before anything is opened: a bad token file stops the PD at start.
        admin_token = read_token_file(token_file, "admin token") if token_file else None
        cfg = self.config
        auth, _ = security_from_files(cfg.cluster_token_file, cfg.client_token_file)
        self._rpc_server.auth = auth
        self._rpc_server.client_messages = CLIENT_REQUESTS
        self._rpc_server.tls, _ = tls_from_files(
            cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_ca_file
        )
        owned: LmdbMetaStorage | None = None
        storage = self._storage
        if storage is None:
            storage = owned = LmdbMetaStorage(self.config.data_dir)
        try:
            cluster = Cluster(
                storage,
                trio.current_time(),
                config_overrides=self._cluster_overrides,
                id_alloc_step=self._id_alloc_step,
            )
            self._cluster = cluster
            self._service = PdService(cluster, self._rng, self._operators, self.consistency)
            if self._controller is not None:
                self._schedulers = SchedulerController(storage)
            try:
                async with trio.open_nursery() as nursery:
                    rpc = await nursery.start(self._serve_rpc)
                    http = await nursery.start(self._serve_http, cluster, admin_token)
                    nursery.start_soon(self._watch_store_states, cluster)
                    nursery.start_soon(self._flush_regions_periodically, cluster)
                    if self._controller is not None:
                        nursery.start_soon(self._patrol_periodically, cluster, self._controller)
                        nursery.start_soon(self._schedule_adaptively, cluster, self._controller)
                    self._addresses = PdAddresses(rpc, http, tls=bool(self.config.tls_cert_file))
                    log.info(
                        "PD serving: RPC on %s, HTTP on http://%s, data dir %s, %s",
                        rpc,
                        http,
                        self.config.data_dir,
                        f"cluster {cluster.cluster_id}"
                        if cluster.is_bootstrapped
                        else "not bootstrapped",
                    )
                    task_status.started(self._addresses)
            finally:
                self._flush(cluster)
        finally:
            self._addresses = None
            if owned is not None:
                owned.close()

    # -- RPC ----------------------------------------------------------------------

    async def _serve_rpc(self, *, task_status: trio.TaskStatus[str]) -> None:
        host, port = parse_listen_address(self.config.listen)
        async with trio.open_nursery() as nursery:
            bound_host, bound_port = await nursery.start(self._rpc_server.serve, host, port)
            task_status.started(_join_address(bound_host, bound_port))

    async def _handle(self, request: Any, ctx: RequestContext) -> object:
        if self._service is None:
            raise RuntimeError("the PD is not running")
        started = time.perf_counter()
        response = self._service.handle(request, trio.current_time())
        if isinstance(response, pdpb.RegionHeartbeatResponse):
            self.metrics.observe_region_heartbeat(time.perf_counter() - started, response)
        if isinstance(request, _WAKES_STORE_STATES):
            self._wake_store_states.set()
        if isinstance(request, pdpb.WaitOrdersRequest):
            return await self._hold_wait_orders(request, response)
        return response

    async def _hold_wait_orders(self, request: pdpb.WaitOrdersRequest, response: object) -> object:
        """Hold an empty answer to a store's long poll until an operator
        starts (or a consistency check is ordered) for one of its regions
        or its wait is over (an unusable wait, NaN or out of range, is the
        longest)."""
        wait = request.wait_seconds
        if not 0 <= wait <= MAX_ORDER_WAIT:
            wait = MAX_ORDER_WAIT
        with trio.move_on_after(wait):
            while (
                isinstance(response, pdpb.WaitOrdersResponse)
                and response.header.error is None
                and not response.report_regions
            ):
                await self._operator_started.wait()
                assert self._service is not None
                response = self._service.handle(request, trio.current_time())
        return response

    def _wake_long_polls(self) -> None:
        self._operator_started.set()
        self._operator_started = trio.Event()

    # -- HTTP ---------------------------------------------------------------------

    async def _serve_http(
        self, cluster: Cluster, admin_token: str | None, *, task_status: trio.TaskStatus[str]
    ) -> None:
        config = hypercorn.config.Config()
        config.bind = [self.config.http]
        config.accesslog = None
        config.errorlog = logging.getLogger("placement_driver.http")
        if self.config.tls_cert_file:  # the same certificate as the RPC port
            config.certfile = self.config.tls_cert_file
            config.keyfile = self.config.tls_key_file
        app = AdminApi(
            cluster,
            trio.current_time,
            operators=self._controller,
            schedulers=self._schedulers,
            on_store_state_change=self._wake_store_watch,
            metrics=lambda: Text(self.metrics.exposition(), CONTENT_TYPE_LATEST),
            admin_token=admin_token,
            checks=self.consistency,
            on_check_ordered=self._wake_long_polls,
        )
        if admin_token is not None:
            log.info("admin API: orders need the admin token of %s", self.config.admin_token_file)
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(_hypercorn_serve, app, config)
            task_status.started(binds[0].removeprefix("http://").removeprefix("https://"))

    # -- administrators' orders ---------------------------------------------------

    def split_region(self, region_id: int, keys: tuple[bytes, ...] = ()) -> Operator:
        """Start an operator splitting the region at `keys` (none: by size);
        the leader gets it with the region's next heartbeat. Raises
        PdRequestError (REGION_NOT_FOUND, INVALID_ARGUMENT, NOT_BOOTSTRAPPED)
        or OperatorExistsError."""
        now = trio.current_time()
        return self.operator_controller.split_region(self.cluster, region_id, keys, now)

    def set_store_state(self, store_id: int, state: StoreState) -> StoreInfo:
        """`Cluster.set_store_state` now (Offline: decommission)."""
        targeted = () if self._controller is None else self._controller.target_stores()
        info = self.cluster.set_store_state(store_id, state, trio.current_time(), targeted=targeted)
        self._wake_store_watch()
        return info

    def patrol(self) -> PatrolResult:
        """One patrol of the operator controller and the schedulers now (the
        task runs one every `patrol_interval`)."""
        return self._patrol(self.cluster, self.operator_controller)

    def _patrol(self, cluster: Cluster, controller: OperatorController) -> PatrolResult:
        # The replica checker first: repairs have first pick of the regions.
        now = trio.current_time()
        result = controller.patrol(cluster, now)
        if self._schedulers is not None:
            scheduled = self._schedulers.run(cluster, controller, now)
            result = dataclasses.replace(result, created=result.created + tuple(scheduled))
        return result

    def _wake_store_watch(self) -> None:
        self._wake_store_states.set()

    # -- periodic tasks -----------------------------------------------------------

    async def _watch_store_states(self, cluster: Cluster) -> None:
        while True:
            self._wake_store_states = trio.Event()
            now = trio.current_time()
            cluster.update_store_states(now)
            deadline = cluster.next_store_state_change(now)
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake_store_states.wait()

    async def _patrol_periodically(self, cluster: Cluster, controller: OperatorController) -> None:
        while True:
            await trio.sleep(self._patrol_interval)
            try:
                result = controller.patrol(cluster, trio.current_time())
            except AssertionError:
                raise
            except Exception:  # a storage failure (burying a store): next time
                log.exception("operator patrol failed; will retry")
                continue
            if result.buried:
                self._wake_store_watch()

    async def _schedule_adaptively(self, cluster: Cluster, controller: OperatorController) -> None:
        """Run the schedulers again soon after a run that started operators
        (their kind's limit still bounds how many run at once), and less
        often, up to every `patrol_interval`, while they find nothing (TiKV
        PD's adaptive schedule interval). Once per patrol, 4 operators a
        run, moved the leaders of 10,000 fresh regions 4 a second."""
        interval = MIN_SCHEDULE_INTERVAL
        while True:
            await trio.sleep(interval)
            assert self._schedulers is not None
            created = self._schedulers.run(cluster, controller, trio.current_time())
            if created:
                interval = MIN_SCHEDULE_INTERVAL
            else:
                interval = min(interval * SCHEDULE_BACKOFF, max(self._patrol_interval, interval))

    async def _flush_regions_periodically(self, cluster: Cluster) -> None:
        while True:
            await trio.sleep(self._region_flush_interval)
            self._flush(cluster)

    def _flush(self, cluster: Cluster) -> None:
        try:
            written = cluster.flush_regions()
        except Exception:
            log.exception("cannot write region metadata; will retry")
            return
        if written:
            log.debug("flushed %d region records", written)


async def _hypercorn_serve(
    app: AdminApi, config: hypercorn.config.Config, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    await hypercorn.trio.serve(app, config, task_status=task_status)  # type: ignore[arg-type]


def _join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

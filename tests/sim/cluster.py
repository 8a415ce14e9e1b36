"""The whole-cluster deterministic simulation: stores, the PD and clients in
one seeded loop, under faults, with every client operation recorded and the
history checked at the end.

One run (`run(seed, root, options)`):

1. Bootstrap as a real cluster does: store 1 creates the first region and
   bootstraps the PD, the other stores join, the PD's replica checker adds
   replicas.
2. Clients run a workload of every KV call over a small key space (values
   unique per write, so the checker's explanations read well), while a
   chaos schedule injects faults: store crashes and power losses (with each
   environment's durability modelled by `SimEngine`), all stores losing
   power at once, partitions, lossy / duplicating / reordering networks,
   lost answers (the store took the request, the client never hears),
   PD restarts, clock skew, and operator orders (leader transfers, splits,
   decommissioning a store and bringing it back).
3. Heal everything, let the cluster settle, read every key once more.
4. Check: every operation completed; the history is linearizable per key
   (`shardkv.check.linearizability`); every region's replicas are byte-equal
   (data and client sessions); no consistency check (when the options turn
   them on) found replicas that differ; the PD's region tree tiles the key space;
   no call failed in a way the workload cannot cause (invalid argument).

The parts: `workload.Workload` (the calls and their history),
`chaos.Chaos` (the faults), `end_checks` (convergence, replicas, region
tree); this module sets them up, runs the phases and reports.

A failure raises `SimulationFailure` with the seed, what failed, the
history of the failing key around the violation, the end of the trace and
a `reproduce:` line.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from shardkv.check.explain import describe_check_result
from shardkv.check.linearizability import check
from store_node.bootstrap import write_initial_region
from store_node.config import CoreConfig
from store_node.engine import Engine
from store_node.lease import lease_duration
from store_node.log_gc import LogGcConfig
from tests import factories
from tests.sim import end_checks
from tests.sim.chaos import CHAOS_WEIGHTS, FLAVORS, Chaos
from tests.sim.client import SimClient
from tests.sim.disk import SyncMode
from tests.sim.pd import SimPd
from tests.sim.store import TICK, SimStore
from tests.sim.workload import Workload
from tests.sim.world import Net, World

__all__ = [
    "CHAOS_WEIGHTS",
    "FLAVORS",
    "Options",
    "Report",
    "Simulation",
    "SimulationFailure",
    "run",
]

log = logging.getLogger(__name__)

PD_CONFIG: dict[str, object] = {
    "max_replicas": 3,
    "region_max_keys": 5,
    "region_max_size": 1 << 30,
    "store_disconnect_time": 2.0,
    "max_store_down_time": 8.0,
}
CORE_CONFIG = CoreConfig(
    election_ticks=10,
    heartbeat_ticks=2,
    # Small thresholds: logs get truncated and followers catch up by snapshot
    # (a compaction once 8 entries can go, as when the seeds were found).
    log_gc=LogGcConfig(max_entries=7, max_follower_lag=24, hard_max_bytes=1 << 20),
    session_ttl_ms=120_000,
    # As a store computes it with the default margin (store_node.config).
    lease_seconds=lease_duration(10, TICK, 0.2),
)


@dataclass(frozen=True, slots=True)
class Options:
    stores: int = 4
    clients: int = 4
    keys: int = 10
    # Virtual seconds of workload under chaos, then of settling.
    duration: float = 30.0
    # The longest the cluster may take to settle once healed.
    settle: float = 60.0
    chaos: bool = True
    power_loss: bool = True
    kv_mode: SyncMode = SyncMode.NOMETASYNC
    exactly_once: bool = True
    client_timeout: float = 5.0
    attempt_timeout: float = 1.0
    # "all" calls, or only reads and conditional writes (which a client
    # without sessions never retries after an unknown outcome).
    workload: str = "all"
    # Values "unique" per write, or "few" (tests.sim.workload).
    values: str = "unique"
    # The clients' batch chunks (ClientConfig.batch_max_keys): the workload's
    # batches are of 2-4 keys, so 1 or 2 cuts them, and a region's second
    # chunk takes a session number of its own.
    batch_max_keys: int = 1 << 30
    # How many of the clients only read.
    readers: int = 0
    # Chaos weights for a kind of bug (FLAVORS); None: the default mix.
    flavor: str | None = None
    # Each store's monotonic clock runs at a rate drawn in 1 +- clock_drift
    # (within what the lease margin covers: (1 - d) / (1 + d) of the
    # minimum election timeout must exceed the lease).
    clock_drift: float = 0.04
    # Leader lease reads (False: every read takes a ReadIndex round).
    lease_reads: bool = True
    # Consistency checks: each store's periodic ones every this many ticks
    # (0: none), and one the PD orders for a random region every this many
    # virtual seconds (0: none). Off by default: checks add log entries, and
    # the seeds of the other tests were found without them.
    consistency_check_ticks: int = 0
    order_checks_every: float = 0.0
    # Values longer than this are stored apart (blob files; 0: none). The
    # workload's values are 5 to 8 bytes: most go apart.
    large_value_threshold: int = 6
    # The longest a delta snapshot takes from the comparison of the copies
    # to its arrival (virtual s): longer, and the copy moves meanwhile more
    # often (a heartbeat raises its commit index).
    delta_delay: float = 0.05


class SimulationFailure(AssertionError):
    def __init__(self, seed: int, what: str, report: str) -> None:
        super().__init__(f"seed {seed}: {what}\n{report}")
        self.seed = seed
        self.what = what


@dataclass(slots=True)
class Report:
    seed: int
    operations: int
    outcomes: Counter[str]
    faults: Counter[str]
    regions: int
    net: Counter[str]
    virtual_seconds: float
    events: int
    keys_checked: int = 0
    undecided: int = 0
    # The stores' counters, summed (lease reads, follower reads...).
    store_stats: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (
            f"seed {self.seed}: {self.operations} operations ({outcomes}); "
            f"{self.regions} regions; {self.store_stats['lease_reads']} lease reads, "
            f"{self.store_stats['follower_reads']} follower reads, "
            f"{self.store_stats['delta_snapshots_installed']} delta snapshots; "
            f"faults: {faults or 'none'}; "
            f"{self.virtual_seconds:.0f} virtual s, {self.events} events"
        )


class Simulation:
    def __init__(self, seed: int, root: Path, options: Options) -> None:
        self.seed = seed
        self.root = root
        self.options = options
        self.world = World(seed)
        self.net = Net(self.world)
        self.pd = SimPd(self.world, PD_CONFIG)
        self.stores: dict[int, SimStore] = {}
        config = CORE_CONFIG if options.lease_reads else replace(CORE_CONFIG, lease_seconds=0.0)
        if options.consistency_check_ticks:
            config = replace(config, consistency_check_ticks=options.consistency_check_ticks)
        drift = options.clock_drift
        for i in range(1, options.stores + 1):
            store = SimStore(
                self.world,
                self.net,
                self.pd,
                i,
                root / f"s{i}",
                config,
                options.kv_mode,
                clock_rate=self.world.rng.uniform(1 - drift, 1 + drift),
                large_value_threshold=options.large_value_threshold,
                delta_delay=options.delta_delay,
            )
            self.stores[i] = store
        for s in self.stores.values():
            s.others = self.stores
        self.keyspace = [b"k%02d" % i for i in range(options.keys)]
        self.clients = [
            SimClient(
                self.world,
                self.net,
                self.pd,
                self.stores,
                c,
                exactly_once=options.exactly_once,
                timeout=options.client_timeout,
                attempt_timeout=options.attempt_timeout,
                batch_max_keys=options.batch_max_keys,
            )
            for c in range(1, options.clients + 1)
        ]
        self.workload = Workload(
            self.world,
            self.clients,
            self.keyspace,
            options.workload,
            options.readers,
            options.values,
        )
        self.history = self.workload.history
        self.chaos = Chaos(
            self.world,
            self.net,
            self.pd,
            self.stores,
            self.clients,
            self.keyspace,
            flavor=options.flavor,
            power_loss=options.power_loss,
            lull=self.workload.lull,
        )

    def bootstrap(self) -> None:
        first = factories.region(5, peers=(factories.peer(6, 1),))
        engine = Engine(self.root / "s1")
        write_initial_region(engine, first)
        engine.close()
        self.pd.start()
        stores = [factories.store(i, address=f"s{i}:20160") for i in self.stores]
        self.pd.bootstrap(stores[0], first, stores[1:])
        for member in [*self.stores.values(), *self.clients]:
            member.cluster_id = self.pd.cluster.cluster_id
        for s in self.stores.values():
            s.start()

    def run(self) -> Report:
        try:
            return self._run()
        except SimulationFailure:
            raise
        except Exception as e:
            # A store, the PD or a client core raised: a bug, whatever it is.
            self._fail(f"{type(e).__name__} raised: {e}", traceback.format_exc())
            raise  # unreachable

    def _run(self) -> Report:
        opts = self.options
        self.bootstrap()
        self.world.run_until(3.0)
        self.workload.start()
        if opts.chaos:
            self.chaos.start()
        if opts.order_checks_every:
            self.world.at(opts.order_checks_every, self._order_check)
        self.world.run_until(self.world.now + opts.duration)
        self.workload.stop()
        self.chaos.heal()
        self.world.run_until(self.world.now + 2.0)
        self._wait_for(
            lambda: self.workload.running == 0, "every operation to complete", opts.settle
        )
        self._wait_for(
            self._converged, "every region to have one leader and equal replicas", opts.settle
        )
        answered = self.workload.read_every_key()
        self._wait_for(answered, "final read answers")
        self._wait_for(self._converged, "the replicas to agree after the final reads")
        return self._check()

    def _order_check(self) -> None:
        """An administrator asks the PD for a check of a random region."""
        if not self.workload.active:
            return
        regions = sorted(r.id for r in self.pd.regions())
        if regions:
            self.pd.order_check(self.world.rng.choice(regions))
        self.world.at(self.options.order_checks_every, self._order_check)

    def _wait_for(self, cond: Callable[[], bool], what: str, limit: float = 30.0) -> None:
        end = self.world.now + limit
        while not cond():
            if self.world.now >= end:
                self._fail(f"liveness: no {what} {limit:.0f} virtual s after healing", "")
            self.world.run_until(self.world.now + 0.5)

    def _converged(self) -> bool:
        return end_checks.converged(self.stores)

    def _check(self) -> Report:
        report = Report(
            seed=self.seed,
            operations=len(self.history),
            outcomes=self.workload.outcomes,
            faults=self.chaos.faults,
            regions=len(end_checks.leaders(self.stores)),
            net=self.net.stats,
            virtual_seconds=self.world.now,
            events=self.world.events,
            store_stats=sum((st.stats() for st in self.stores.values()), Counter()),
        )
        if self.chaos.leaderless:
            self._fail(
                "regions without a leader while a quorum was up",
                "\n".join(self.chaos.leaderless[:20]),
            )
        if self.workload.unexpected:
            self._fail("unexpected errors", "\n".join(self.workload.unexpected[:20]))
        result = check(self.history)
        report.keys_checked = len(result.keys)
        report.undecided = len(result.undecided)
        if result.violations:
            self._fail(
                f"not linearizable: keys {[kc.key for kc in result.violations]}",
                describe_check_result(result, max_keys=2),
            )
        differ = end_checks.differing_replicas(self.stores)
        if differ is not None:
            self._fail(*differ)
        differ = end_checks.consistency_mismatches(self.stores, self.pd)
        if differ is not None:
            self._fail("a consistency check found replicas that differ", differ)
        # The PD hears from every leader within a heartbeat interval.
        self.world.run_until(self.world.now + 2.5)
        problem = end_checks.tiles(sorted(self.pd.regions(), key=lambda r: r.start_key))
        if problem is not None:
            self._fail("the PD's region tree has a gap or an overlap", problem)
        for s in self.stores.values():
            s.close()
        return report

    def _fail(self, what: str, details: str) -> None:
        trace = "\n".join(list(self.world.trace)[-60:])
        raise SimulationFailure(
            self.seed,
            what,
            f"{details}\n-- last trace lines --\n{trace}\n"
            f"reproduce: python3 -m pytest tests/sim/test_sim.py --seed={self.seed}",
        )


def run(seed: int, root: Path, options: Options | None = None) -> Report:
    """One simulation run in `root` (emptied first)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return Simulation(seed, root, options or Options()).run()

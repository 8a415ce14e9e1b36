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
   (`tests.sim.linearizability`); every region's replicas are byte-equal
   (data and client sessions); the PD's region tree tiles the key space;
   no call failed in a way the workload cannot cause (invalid argument).

A failure raises `SimulationFailure` with the seed, what failed, the
history of the failing key around the violation, the end of the trace and
a `reproduce:` line.
"""

from __future__ import annotations

import itertools
import logging
import random
import shutil
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from client.errors import ClientError, UndeterminedError
from kvproto.metapb import Region, StoreState
from store_node import keys
from store_node.bootstrap import write_initial_region
from store_node.core import CoreConfig
from store_node.engine import Engine, scan_cursor
from store_node.log_gc import LogGcConfig
from tests import factories
from tests.sim import linearizability as lin
from tests.sim.client import Op, SimClient
from tests.sim.disk import SyncMode
from tests.sim.pd import SimPd
from tests.sim.store import SimStore
from tests.sim.world import Faults, Net, World

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
    # Small thresholds: logs get truncated and followers catch up by snapshot.
    log_gc=LogGcConfig(threshold=8, count_limit=24, size_limit=1 << 20),
    session_ttl_ms=120_000,
)


# How often each chaos action is picked (`Simulation._chaos_<name>`).
CHAOS_WEIGHTS: dict[str, float] = {
    "crash": 14,
    "power_loss": 10,
    "power_loss_all": 2,
    "crash_mid_fsync": 5,
    "partition": 8,
    "partition_leader": 4,
    "deaf": 4,
    "pause": 6,
    "lossy": 9,
    "lose_answers": 9,
    "pd_restart": 5,
    "transfer": 9,
    "split": 9,
    "move": 4,
    "bounce": 3,
    "decommission": 3,
    "clock_skew": 4,
}
# Flavors weight the actions a bug needs (mutation tests pick one).
FLAVORS: dict[str | None, dict[str, float]] = {
    "leaders": {"pause": 30, "partition_leader": 20, "deaf": 20, "transfer": 20, "lossy": 10},
    "bounces": {"bounce": 40, "move": 20},
    "deaf": {"deaf": 100, "split": 0, "move": 0, "bounce": 0, "decommission": 0},
    "crashes": {"crash_mid_fsync": 80, "power_loss": 10, "power_loss_all": 10},
}


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
    # Chaos weights for a kind of bug (FLAVORS); None: the default mix.
    flavor: str | None = None


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
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (
            f"seed {self.seed}: {self.operations} operations ({outcomes}); "
            f"{self.regions} regions; faults: {faults or 'none'}; "
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
        for i in range(1, options.stores + 1):
            store = SimStore(
                self.world,
                self.net,
                self.pd,
                i,
                root / f"s{i}",
                CORE_CONFIG,
                options.kv_mode,
            )
            self.stores[i] = store
        for s in self.stores.values():
            s.others = self.stores
        self.keyspace = [b"k%02d" % i for i in range(options.keys)]
        self.history = lin.History(self.keyspace)
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
            )
            for c in range(1, options.clients + 1)
        ]
        self.faults: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self._values = itertools.count(1)
        self._running = 0
        self._workload_on = True
        self._offline: int | None = None
        self._bouncing = False

    # -- setup --------------------------------------------------------------------------

    def bootstrap(self) -> None:
        first = factories.region(5, peers=(factories.peer(6, 1),))
        engine = Engine(self.root / "s1")
        write_initial_region(engine, first)
        engine.close()
        self.pd.start()
        stores = [factories.store(i, address=f"s{i}:20160") for i in self.stores]
        self.pd.bootstrap(stores[0], first, stores[1:])
        for s in self.stores.values():
            s.start()

    # -- the workload -----------------------------------------------------------------

    def _next_op(self, client: SimClient) -> None:
        if not self._workload_on:
            return
        rng = self.world.rng
        call, op = self._choose(client, rng.random())
        op_id = self.history.invoke(client.client_id, call, self.world.now)
        self._running += 1

        def done(result: object, error: ClientError | None) -> None:
            self._running -= 1
            self._record(op_id, call, result, error)
            self.world.at(rng.uniform(0, 0.01), self._next_op, client)

        client.run(op, done)

    def _record(
        self, op_id: int, call: lin.Call, result: object, error: ClientError | None
    ) -> None:
        now = self.world.now
        if error is None:
            self.history.complete(op_id, lin.Outcome.OK, result, now)
            self.outcomes["ok"] += 1
        elif isinstance(error, UndeterminedError):
            self.history.complete(op_id, lin.Outcome.UNKNOWN, None, now)
            self.outcomes["unknown"] += 1
        else:
            # DeadlineExceeded / PdUnavailable promise nothing was written;
            # the checker holds the client to it.
            self.history.complete(op_id, lin.Outcome.FAILED, None, now)
            self.outcomes[f"failed ({type(error).__name__})"] += 1
            if type(error).__name__ in ("InvalidArgument", "StoreError", "ClusterMismatch"):
                self.unexpected.append(f"{lin.describe_call(call)}: {error}")

    def _choose(self, client: SimClient, r: float) -> tuple[lin.Call, Op[object]]:
        rng = self.world.rng
        ks = self.keyspace
        key = rng.choice(ks)
        if self.options.workload == "conditional" and 0.32 <= r < 0.70:
            r = rng.uniform(0.70, 1.0)

        def value() -> bytes:
            return b"c%d.%d" % (client.client_id, next(self._values))

        if r < 0.18:
            return lin.Get(key), client.get(key)
        if r < 0.25:
            sample = rng.sample(ks, rng.randint(2, 4))
            return lin.BatchGet(tuple(sample)), client.batch_get(sample)
        if r < 0.32:
            start, end = sorted(rng.sample([*ks, b"k99"], 2))
            if rng.random() < 0.2:
                end = b""
            limit = rng.randint(1, 8)
            reverse = rng.random() < 0.3
            return lin.Scan(start, end, limit, reverse), client.scan(start, end, limit, reverse)
        if r < 0.50:
            v = value()
            return lin.Put(key, v), client.put(key, v)
        if r < 0.57:
            pairs = {k: value() for k in rng.sample(ks, rng.randint(2, 4))}
            return lin.BatchPut(tuple(sorted(pairs.items()))), client.batch_put(pairs)
        if r < 0.64:
            return lin.Delete(key), client.delete(key)
        if r < 0.67:
            sample = rng.sample(ks, rng.randint(2, 3))
            return lin.BatchDelete(tuple(sorted(sample))), client.batch_delete(sample)
        if r < 0.70:
            start, end = sorted(rng.sample(ks, 2))
            return lin.DeleteRange(start, end), client.delete_range(start, end)
        if r < 0.84:
            expected = self._guess(key)
            new = value() if rng.random() < 0.9 else None
            return lin.CompareAndSet(key, expected, new), client.compare_and_set(key, expected, new)
        if r < 0.92:
            v = value()
            return lin.PutIfAbsent(key, v), client.put_if_absent(key, v)
        v = value()
        return lin.GetAndPut(key, v), client.get_and_put(key, v)

    def _guess(self, key: bytes) -> bytes | None:
        """A value `key` may hold now: the latest one a completed call of
        the history wrote or read (so that compare-and-sets often succeed)."""
        rng = self.world.rng
        if rng.random() < 0.2:
            return None
        for op in reversed(self.history.operations()[-40:]):
            c = op.call
            if isinstance(c, lin.Put) and c.key == key:
                return c.value
            if isinstance(c, lin.Get) and c.key == key and op.outcome is lin.Outcome.OK:
                return op.result if isinstance(op.result, bytes) else None
        return None

    # -- chaos ------------------------------------------------------------------------------

    def _chaos(self) -> None:
        if not self._workload_on:
            return
        rng = self.world.rng
        self.world.at(rng.uniform(0.3, 1.5), self._chaos)
        weights = dict(CHAOS_WEIGHTS)
        weights.update(FLAVORS.get(self.options.flavor, {}))
        if not self.options.power_loss:
            weights["power_loss"] = weights["power_loss_all"] = weights["crash_mid_fsync"] = 0
        names = sorted(weights)
        name = rng.choices(names, [weights[n] for n in names])[0]
        getattr(self, f"_chaos_{name}")(rng)

    def _down(self) -> list[SimStore]:
        return [s for s in self.stores.values() if not s.up]

    def _chaos_crash(self, rng: random.Random) -> None:
        if not self._down() or rng.random() < 0.2:
            self._stop_store(rng.choice(list(self.stores.values())), power_loss=False)

    def _chaos_power_loss(self, rng: random.Random) -> None:
        if not self._down() or rng.random() < 0.2:
            self._stop_store(rng.choice(list(self.stores.values())), power_loss=True)

    def _chaos_power_loss_all(self, rng: random.Random) -> None:
        if not self._down():
            self.faults["power loss of every store"] += 1
            for s in self.stores.values():
                self._stop_store(s, power_loss=True, count=False)

    def _chaos_crash_mid_fsync(self, rng: random.Random) -> None:
        """A follower (mostly) loses power in the middle of its next write,
        alone or with every store: what it vouched for must be durable."""
        stores = [s for s in self.stores.values() if s.up]
        if not stores or self._down():
            return
        victim = rng.choice(stores)
        everyone = rng.random() < 0.5

        def hit() -> None:
            if not victim.up or not self._workload_on:
                return
            self.world.log(
                f"chaos: {victim.name} mid-fsync, power loss of {'all' if everyone else 'it'}"
            )
            for s in list(self.stores.values()) if everyone else [victim]:
                self._stop_store(s, power_loss=True, count=False)

        victim.on_next_write = hit
        self.faults["power loss mid-fsync" + (" (every store)" if everyone else "")] += 1

    def _chaos_partition(self, rng: random.Random) -> None:
        """A store cut off from the other stores (and maybe the clients)."""
        victim = rng.choice(list(self.stores.values()))
        self._isolate(victim, rng, "partition")

    def _chaos_partition_leader(self, rng: random.Random) -> None:
        """The leader of some region cut off from the other stores, while
        clients still reach it (a deposed leader serving them)."""
        self._isolate(self._some_leader(rng), rng, "leader partition", clients=False)

    def _isolate(
        self, victim: SimStore, rng: random.Random, what: str, clients: bool | None = None
    ) -> None:
        others = {s.name for s in self.stores.values() if s is not victim}
        if clients if clients is not None else rng.random() < 0.5:
            others |= {c.name for c in self.clients}
        self.net.partition({victim.name}, others)
        self.faults[what] += 1
        self.world.log(f"chaos: {victim.name} partitioned from {sorted(others)}")
        self.world.at(rng.uniform(0.5, 4.0), self._heal_net)

    def _some_leader(self, rng: random.Random) -> SimStore:
        """A store leading some region, mostly; any store sometimes."""
        stores = list(self.stores.values())
        leaders = [s for s in stores if s.core is not None and s.core.leader_regions()]
        return rng.choice(leaders if leaders and rng.random() < 0.8 else stores)

    def _chaos_pause(self, rng: random.Random) -> None:
        """SIGSTOP a store (a leader, mostly) for a while, then SIGCONT: it
        wakes up believing it still leads."""
        victim = self._some_leader(rng)
        if not victim.up or victim.paused:
            return
        victim.pause()
        self.faults["pause"] += 1
        self.world.log(f"chaos: {victim.name} paused")
        incarnation = victim.incarnation

        def resume() -> None:
            if victim.incarnation == incarnation and victim.paused:
                victim.resume()
                self.world.log(f"chaos: {victim.name} resumed")

        self.world.at(rng.uniform(1.0, 4.0), resume)

    def _chaos_deaf(self, rng: random.Random) -> None:
        """A store hears nothing from the others but they hear it (one
        direction of its links cut): a leader keeps replicating, never
        learns what committed, and steps down."""
        victim = self._some_leader(rng)
        for s in self.stores.values():
            if s is not victim:
                self.net.cut.add((s.name, victim.name))
        self.faults["one-way partition"] += 1
        self.world.log(f"chaos: {victim.name} hears nothing")
        self.world.at(rng.uniform(1.5, 6.0), self._heal_net)

    def _chaos_lossy(self, rng: random.Random) -> None:
        self.net.faults = Faults(
            drop=rng.choice([0.02, 0.1, 0.3]),
            duplicate=rng.choice([0.0, 0.05]),
            long_delay=rng.choice([0.0, 0.05]),
        )
        self.faults["lossy network"] += 1
        self.world.at(rng.uniform(0.5, 3.0), self._calm_net)

    def _chaos_lose_answers(self, rng: random.Random) -> None:
        self.net.faults.lose_answer = rng.choice([0.1, 0.3])
        self.faults["lost answers"] += 1
        self.world.at(rng.uniform(0.5, 3.0), self._calm_net)

    def _chaos_pd_restart(self, rng: random.Random) -> None:
        if self.pd.up:
            self.pd.crash()
            self.faults["PD restart"] += 1
            self.world.log("chaos: PD down")
            self.world.at(rng.uniform(0.3, 3.0), self._start_pd)

    def _chaos_transfer(self, rng: random.Random) -> None:
        regions = self._pd_regions()
        if regions and self.pd.order_transfer(
            rng.choice(regions).id, rng.choice(list(self.stores))
        ):
            self.faults["leader transfer"] += 1

    def _chaos_split(self, rng: random.Random) -> None:
        key = rng.choice(self.keyspace)
        for region in self._pd_regions():
            if region.contains(key) and region.start_key != key:
                if self.pd.order_split(region.id, key):
                    self.faults["split"] += 1
                return

    def _chaos_move(self, rng: random.Random) -> None:
        regions = self._pd_regions()
        if regions:
            src, dst = rng.sample(list(self.stores), 2)
            if self.pd.order_move(rng.choice(regions).id, src, dst):
                self.faults["replica move"] += 1

    def _chaos_bounce(self, rng: random.Random) -> None:
        """A replica moved away from a store that is down, then back to it
        before it returns: the store then holds a removed peer of a region
        it must host again (as a new peer)."""
        regions = self._pd_regions()
        if not regions or self._down() or self._bouncing:
            return
        region = rng.choice(regions)
        holders = [p.store_id for p in region.peers]
        spare = [s for s in self.stores if s not in holders]
        if not spare:
            return
        victim = self.stores[rng.choice(holders)]
        self._bouncing = True
        self.faults["replica bounce"] += 1
        self.world.log(f"chaos: bounce region {region.id} off {victim.name}")
        victim.stop(power_loss=False)
        self.pd.order_move(region.id, victim.store_id, rng.choice(spare))

        def back() -> None:
            if not self._workload_on:
                return  # healed meanwhile: no more orders
            record = self.pd.cluster.region_by_id(region.id) if self.pd.up else None
            if record is not None:
                holders = [p.store_id for p in record.region.peers]
                if victim.store_id not in holders:
                    src = rng.choice([h for h in holders if h != victim.store_id])
                    self.pd.order_move(region.id, src, victim.store_id)

        def restart() -> None:
            self._bouncing = False
            self._restart(victim)

        self.world.at(rng.uniform(3.0, 5.0), back)
        self.world.at(rng.uniform(6.0, 8.0), restart)

    def _chaos_decommission(self, rng: random.Random) -> None:
        if self._offline is None and len(self.stores) > 3 and not self._down():
            store = rng.choice(list(self.stores))
            if self.pd.set_store_state(store, StoreState.OFFLINE):
                self._offline = store
                self.faults["decommission"] += 1
                self.world.log(f"chaos: s{store} offline")
                self.world.at(rng.uniform(3.0, 10.0), self._bring_back)

    def _chaos_clock_skew(self, rng: random.Random) -> None:
        store = rng.choice(list(self.stores.values()))
        store.clock_skew_ms = rng.choice([0, 1_500, -1_500, 300_000])
        self.faults["clock skew"] += 1

    def _stop_store(self, store: SimStore, *, power_loss: bool, count: bool = True) -> None:
        if not store.up:
            return
        store.stop(power_loss=power_loss)
        if count:
            self.faults["power loss" if power_loss else "crash"] += 1
        self.world.at(self.world.rng.uniform(0.2, 3.0), self._restart, store)

    def _restart(self, store: SimStore) -> None:
        if not store.up:
            store.start()
            self.world.log(f"{store.name}: restarted")

    def _start_pd(self) -> None:
        if not self.pd.up:
            self.pd.start()
            self.world.log("PD: restarted")

    def _heal_net(self) -> None:
        self.net.heal()

    def _calm_net(self) -> None:
        self.net.faults = Faults()

    def _bring_back(self) -> None:
        if self._offline is not None and self.pd.set_store_state(self._offline, StoreState.UP):
            self.world.log(f"chaos: s{self._offline} up again")
            self._offline = None
        elif self._offline is not None:
            self.world.at(1.0, self._bring_back)

    def _pd_regions(self) -> list[Region]:
        if not self.pd.up:
            return []
        return [r.region for r in self.pd.cluster.regions()]

    # -- the run ----------------------------------------------------------------------------

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
        for c in self.clients:
            self.world.at(self.world.rng.uniform(0, 0.1), self._next_op, c)
        if opts.chaos:
            self.world.at(1.0, self._chaos)
        self.world.run_until(self.world.now + opts.duration)
        self._workload_on = False
        self._heal_all()
        self.world.run_until(self.world.now + 2.0)
        self._wait_for(lambda: self._running == 0, "every operation to complete", opts.settle)
        self._wait_for(
            self._converged, "every region to have one leader and equal replicas", opts.settle
        )
        self._final_reads()
        self._wait_for(self._converged, "the replicas to agree after the final reads")
        return self._check()

    def _heal_all(self) -> None:
        self.net.heal()
        self.net.faults = Faults()
        if not self.pd.up:
            self.pd.start()
        for s in self.stores.values():
            s.clock_skew_ms = 0
            s.on_next_write = None
            if s.paused:
                s.resume()
            if not s.up:
                s.start()
        if self._offline is not None:
            self.pd.set_store_state(self._offline, StoreState.UP)
            self._offline = None

    def _wait_for(self, cond: Callable[[], bool], what: str, limit: float = 30.0) -> None:
        end = self.world.now + limit
        while not cond():
            if self.world.now >= end:
                self._fail(f"liveness: no {what} {limit:.0f} virtual s after healing", "")
            self.world.run_until(self.world.now + 0.5)

    def _final_reads(self) -> None:
        reader = self.clients[0]
        pending = len(self.keyspace)

        def read(key: bytes) -> None:
            op_id = self.history.invoke(reader.client_id, lin.Get(key), self.world.now)

            def done(result: object, error: ClientError | None) -> None:
                nonlocal pending
                pending -= 1
                self._record(op_id, lin.Get(key), result, error)
                if error is not None:
                    self.unexpected.append(f"final read of {key!r}: {error}")

            reader.run(reader.get(key), done)

        for key in self.keyspace:
            read(key)
        self._wait_for(lambda: pending == 0, "final read answers")

    # -- checks ------------------------------------------------------------------------------

    def _leaders(self) -> dict[int, list[SimStore]]:
        leaders: dict[int, list[SimStore]] = {}
        for s in self.stores.values():
            assert s.core is not None
            for peer in s.core.leader_regions():
                leaders.setdefault(peer.region_id, []).append(s)
        return leaders

    def _converged(self) -> bool:
        if any(s.core is None for s in self.stores.values()):
            return False
        leaders = self._leaders()
        for region_id, (store, *rest) in leaders.items():
            if rest:
                return False
            assert store.core is not None
            leader = store.core.peers[region_id]
            region = leader.region
            applied = leader.node.applied_index
            if leader.node.commit_index != applied:
                return False
            for p in region.peers:
                other = self.stores[p.store_id].core
                assert other is not None
                peer = other.peers.get(region_id)
                if peer is None or not peer.initialized or peer.node.applied_index != applied:
                    return False
        # Every key has a region with a leader.
        regions = sorted(
            (self.stores[s[0].store_id].core.peers[rid].region for rid, s in leaders.items()),  # type: ignore[union-attr]
            key=lambda r: r.start_key,
        )
        return _tiles(regions) is None

    def _check(self) -> Report:
        report = Report(
            seed=self.seed,
            operations=len(self.history),
            outcomes=self.outcomes,
            faults=self.faults,
            regions=len(self._leaders()),
            net=self.net.stats,
            virtual_seconds=self.world.now,
            events=self.world.events,
        )
        if self.unexpected:
            self._fail("unexpected errors", "\n".join(self.unexpected[:20]))
        result = lin.check(self.history)
        report.keys_checked = len(result.keys)
        report.undecided = len(result.undecided)
        if result.violations:
            self._fail(
                f"not linearizable: keys {[kc.key for kc in result.violations]}",
                result.describe(max_keys=2),
            )
        self._check_replicas()
        self._check_pd_regions()
        for s in self.stores.values():
            s.close()
        return report

    def _check_replicas(self) -> None:
        for region_id, (store, *_) in self._leaders().items():
            assert store.core is not None
            region = store.core.peers[region_id].region
            sums = {}
            for p in region.peers:
                sums[p.store_id] = _region_digest(self.stores[p.store_id].engine, region)
            if len(set(sums.values())) != 1:
                self._fail(f"replicas of region {region_id} differ", f"digests by store: {sums}")

    def _check_pd_regions(self) -> None:
        # The PD hears from every leader within a heartbeat interval.
        self.world.run_until(self.world.now + 2.5)
        regions = sorted(self._pd_regions(), key=lambda r: r.start_key)
        problem = _tiles(regions)
        if problem is not None:
            self._fail("the PD's region tree has a gap or an overlap", problem)

    def _fail(self, what: str, details: str) -> None:
        trace = "\n".join(list(self.world.trace)[-60:])
        raise SimulationFailure(
            self.seed,
            what,
            f"{details}\n-- last trace lines --\n{trace}\n"
            f"reproduce: python3 -m pytest tests/sim/test_sim.py --seed={self.seed}",
        )


def _tiles(regions: list[Region]) -> str | None:
    """Why sorted `regions` do not cover the key space exactly once, or None."""
    if not regions:
        return "no regions"
    if regions[0].start_key != b"":
        return f"nothing covers keys below {regions[0].start_key!r}"
    for a, b in itertools.pairwise(regions):
        if a.end_key != b.start_key:
            return f"region {a.id} ends at {a.end_key!r}, region {b.id} starts at {b.start_key!r}"
    if regions[-1].end_key != b"":
        return f"nothing covers keys from {regions[-1].end_key!r}"
    return None


def _region_digest(engine: Engine, region: Region) -> int:
    """CRC of a region's data and client sessions on one store."""
    crc = 0
    with engine.read_kv() as txn:
        for k, v in scan_cursor(txn, engine.kv_db(keys.DATA_DB), region.start_key, region.end_key):
            crc = zlib.crc32(bytes(k) + b"=" + bytes(v), crc)
        for k, v in scan_cursor(
            txn,
            engine.kv_db(keys.SESSION_DB),
            keys.session_prefix(region.id),
            keys.session_prefix(region.id + 1),
        ):
            crc = zlib.crc32(bytes(k) + b"=" + bytes(v), crc)
    return crc


def run(seed: int, root: Path, options: Options | None = None) -> Report:
    """One simulation run in `root` (emptied first)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return Simulation(seed, root, options or Options()).run()

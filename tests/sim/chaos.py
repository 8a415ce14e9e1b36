"""The chaos schedule of the whole-cluster simulation: one fault at a time,
every 0.3-1.5 virtual seconds, from `Chaos.start()` until `Chaos.heal()`.

Each action (`Chaos._act_<name>`, picked with the weights of `CHAOS_WEIGHTS`
or of a flavor in `FLAVORS`) is one kind of fault, and schedules its own
end: store crashes and power losses (with each environment's durability
modelled by `SimEngine`), all stores losing power at once, a power loss in
the middle of an fsync, a crash or power loss in the middle of a snapshot
install, SIGSTOP pauses, symmetric and one-way partitions, a
leader cut off from its followers while clients reach it, lossy /
duplicating / reordering networks, lost answers (the store took the
request, the client never hears), PD restarts, clock skew, and operator
orders (leader transfers, splits, replica moves and bounces, decommissioning
a store and bringing it back). `faults` counts what was injected.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

from kvproto.metapb import StoreState
from tests.sim import end_checks
from tests.sim.client import SimClient
from tests.sim.pd import SimPd
from tests.sim.store import SimStore
from tests.sim.world import Faults, Net, World

# How often each chaos action is picked (`Chaos._act_<name>`).
CHAOS_WEIGHTS: dict[str, float] = {
    "crash": 14,
    "power_loss": 10,
    "power_loss_all": 2,
    "crash_mid_fsync": 5,
    "crash_mid_install": 8,
    "partition": 8,
    "partition_leader": 4,
    "deaf": 4,
    "transfer_deaf": 3,
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
    "lull": 4,
    "outage": 0,
}
# Flavors weight the actions a bug needs (mutation tests pick one).
FLAVORS: dict[str | None, dict[str, float]] = {
    "leaders": {"pause": 30, "partition_leader": 20, "deaf": 20, "transfer": 20, "lossy": 10},
    "bounces": {"bounce": 40, "move": 20},
    # Idle regions asleep when a store dies for long: they must elect anew.
    "outages": {**dict.fromkeys(CHAOS_WEIGHTS, 0.0), "lull": 50, "outage": 20, "crash": 10},
    "deaf": {"deaf": 100, "split": 0, "move": 0, "bounce": 0, "decommission": 0},
    "crashes": {"crash_mid_fsync": 80, "power_loss": 10, "power_loss_all": 10},
    # Followers back from a crash catch up by (delta) snapshots, and crash
    # in the middle of installing them.
    "catchup": {"crash": 30, "power_loss": 20, "crash_mid_install": 30},
    # Deposed leaders serving some clients while others find the successor.
    "leases": {
        **dict.fromkeys(CHAOS_WEIGHTS, 0.0),
        "partition_leader": 40,
        "transfer_deaf": 20,
        "pause": 15,
        "transfer": 15,
        "lossy": 10,
        "lull": 15,
    },
}


class Chaos:
    def __init__(
        self,
        world: World,
        net: Net,
        pd: SimPd,
        stores: dict[int, SimStore],
        clients: Sequence[SimClient],
        keyspace: Sequence[bytes],
        *,
        flavor: str | None,
        power_loss: bool,
        lull: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self.world = world
        self._lull = lull
        self.net = net
        self.pd = pd
        self.stores = stores
        self.clients = clients
        self.keyspace = keyspace
        self.faults: Counter[str] = Counter()
        self.active = False
        weights = dict(CHAOS_WEIGHTS)
        weights.update(FLAVORS.get(flavor, {}))
        if not power_loss:
            weights["power_loss"] = weights["power_loss_all"] = weights["crash_mid_fsync"] = 0
        self._names = sorted(weights)
        self._weights = [weights[n] for n in self._names]
        self._offline: int | None = None
        self._bouncing = False
        # Regions found without a leader by an outage's probe.
        self.leaderless: list[str] = []

    def start(self) -> None:
        self.active = True
        self.world.at(1.0, self._next)

    def _next(self) -> None:
        if not self.active:
            return
        rng = self.world.rng
        self.world.at(rng.uniform(0.3, 1.5), self._next)
        name = rng.choices(self._names, self._weights)[0]
        getattr(self, f"_act_{name}")(rng)

    def heal(self) -> None:
        """No more faults, and an end to those in force: the network whole
        and reliable, the PD and every store up, clocks right, no store
        decommissioned."""
        self.active = False
        self.net.heal()
        self.net.faults = Faults()
        if not self.pd.up:
            self.pd.start()
        for s in self.stores.values():
            s.clock_skew_ms = 0
            s.on_next_write = None
            s.on_next_install = None
            if s.paused:
                s.resume()
            if not s.up:
                s.start()
        if self._offline is not None:
            self.pd.set_store_state(self._offline, StoreState.UP)
            self._offline = None

    def _down(self) -> list[SimStore]:
        return [s for s in self.stores.values() if not s.up]

    def _act_crash(self, rng: random.Random) -> None:
        if not self._down() or rng.random() < 0.2:
            self._stop_store(rng.choice(list(self.stores.values())), power_loss=False)

    def _act_power_loss(self, rng: random.Random) -> None:
        if not self._down() or rng.random() < 0.2:
            self._stop_store(rng.choice(list(self.stores.values())), power_loss=True)

    def _act_power_loss_all(self, rng: random.Random) -> None:
        if not self._down():
            self.faults["power loss of every store"] += 1
            for s in self.stores.values():
                self._stop_store(s, power_loss=True, count=False)

    def _act_crash_mid_fsync(self, rng: random.Random) -> None:
        """A follower (mostly) loses power in the middle of its next write,
        alone or with every store: what it vouched for must be durable."""
        stores = [s for s in self.stores.values() if s.up]
        if not stores or self._down():
            return
        victim = rng.choice(stores)
        everyone = rng.random() < 0.5

        def hit() -> None:
            if not victim.up or not self.active:
                return
            self.world.log(
                f"chaos: {victim.name} mid-fsync, power loss of {'all' if everyone else 'it'}"
            )
            for s in list(self.stores.values()) if everyone else [victim]:
                self._stop_store(s, power_loss=True, count=False)

        victim.on_next_write = hit
        self.faults["power loss mid-fsync" + (" (every store)" if everyone else "")] += 1

    def _act_crash_mid_install(self, rng: random.Random) -> None:
        """The next store to install a snapshot (a follower back from a
        crash, mostly, whose older copy gets a delta) crashes or loses power
        in the middle of it, between the kv/ transaction and the log reset:
        it must come back on its old copy or on the new one."""
        power = rng.random() < 0.5
        stores = list(self.stores.values())

        def hit(victim: SimStore) -> None:  # only while active: heal() disarms it
            for s in stores:
                s.on_next_install = None
            what = "power loss" if power else "crash"
            self.world.log(f"chaos: {victim.name} {what} in the middle of a snapshot install")
            self.faults["snapshot install cut short"] += 1
            self._stop_store(victim, power_loss=power, count=False)

        for s in stores:
            s.on_next_install = partial(hit, s)

    def _act_partition(self, rng: random.Random) -> None:
        """A store cut off from the other stores (and maybe the clients)."""
        victim = rng.choice(list(self.stores.values()))
        self._isolate(victim, rng, "partition")

    def _act_partition_leader(self, rng: random.Random) -> None:
        """The leader of some region cut off from the other stores and from
        some clients, while the others still reach it: a deposed leader
        serving some clients while the rest find its successor."""
        victim = self._some_leader(rng)
        cut = {c.name for c in self.clients if rng.random() < 0.5}
        self._isolate(victim, rng, "leader partition", clients=False, also=cut)

    def _isolate(
        self,
        victim: SimStore,
        rng: random.Random,
        what: str,
        clients: bool | None = None,
        also: set[str] | None = None,
    ) -> None:
        others = {s.name for s in self.stores.values() if s is not victim}
        if clients if clients is not None else rng.random() < 0.5:
            others |= {c.name for c in self.clients}
        others |= also or set()
        self.net.partition({victim.name}, others)
        self.faults[what] += 1
        self.world.log(f"chaos: {victim.name} partitioned from {sorted(others)}")
        self.world.at(rng.uniform(0.5, 4.0), self._heal_net)

    def _some_leader(self, rng: random.Random) -> SimStore:
        """A store leading some region, mostly; any store sometimes."""
        stores = list(self.stores.values())
        leaders = [s for s in stores if s.core is not None and s.core.leader_regions()]
        return rng.choice(leaders if leaders and rng.random() < 0.8 else stores)

    def _act_pause(self, rng: random.Random) -> None:
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

    def _act_outage(self, rng: random.Random) -> None:
        """A store dies for long (6 to 10 s) on an otherwise calm cluster:
        5 s later, every region with a quorum of voters up must have a
        leader again, asleep or not when it happened (a probe records the
        ones that have not in `leaderless`)."""
        if self._down():
            return
        victim = rng.choice(list(self.stores.values()))
        victim.stop(power_loss=False)
        self.faults["outage"] += 1
        self.world.log(f"chaos: {victim.name} down for long")

        def probe() -> None:
            if victim.up or self._down() != [victim] or not self.active:
                return  # something else happened meanwhile: no verdict
            for rid in end_checks.leaderless(self.stores):
                self.leaderless.append(f"region {rid}, {victim.name} down for 5 s")

        self.world.at(5.0, probe)
        self.world.at(rng.uniform(6.0, 10.0), self._restart, victim)

    def _act_lull(self, rng: random.Random) -> None:
        """The clients pause long enough for idle regions to hibernate, while
        the faults go on: sleeping regions meet crashes and partitions."""
        seconds = rng.uniform(2.5, 5.0)
        self._lull(seconds)
        self.faults["lull"] += 1
        self.world.log(f"chaos: clients lull for {seconds:.1f} s")

    def _act_deaf(self, rng: random.Random) -> None:
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

    def _act_transfer_deaf(self, rng: random.Random) -> None:
        """A leader hands its leadership over and at once hears nothing more
        from the other stores: its TimeoutNow goes out, the transferee wins,
        and the old leader, still reachable by some clients, learns nothing
        of it until its own quorum check; the clients that lost it go on
        with the new one."""
        victim = self._some_leader(rng)
        core = victim.core
        if core is None or victim.paused:
            return
        candidates = [
            (p.region_id, q.id)
            for p in core.leader_regions()
            for q in p.region.peers
            if q.id != p.meta.id and not q.is_learner
        ]
        if not candidates:
            return
        region_id, to_peer = rng.choice(candidates)
        victim.submit(lambda c: c.transfer_leader(region_id, to_peer))
        for s in self.stores.values():
            if s is not victim:
                self.net.cut.add((s.name, victim.name))
        # Some clients lose it too: they go on with the new leader.
        for c in self.clients:
            if rng.random() < 0.5:
                self.net.partition({victim.name}, {c.name})
        self.faults["transfer, then deaf"] += 1
        self.world.log(f"chaos: {victim.name} transfers region {region_id}, then hears nothing")
        self.world.at(rng.uniform(1.5, 4.0), self._heal_net)

    def _act_lossy(self, rng: random.Random) -> None:
        self.net.faults = Faults(
            drop=rng.choice([0.02, 0.1, 0.3]),
            duplicate=rng.choice([0.0, 0.05]),
            long_delay=rng.choice([0.0, 0.05]),
        )
        self.faults["lossy network"] += 1
        self.world.at(rng.uniform(0.5, 3.0), self._calm_net)

    def _act_lose_answers(self, rng: random.Random) -> None:
        self.net.faults.lose_answer = rng.choice([0.1, 0.3])
        self.faults["lost answers"] += 1
        self.world.at(rng.uniform(0.5, 3.0), self._calm_net)

    def _act_pd_restart(self, rng: random.Random) -> None:
        if self.pd.up:
            self.pd.crash()
            self.faults["PD restart"] += 1
            self.world.log("chaos: PD down")
            self.world.at(rng.uniform(0.3, 3.0), self._start_pd)

    def _act_transfer(self, rng: random.Random) -> None:
        regions = self.pd.regions()
        if regions and self.pd.order_transfer(
            rng.choice(regions).id, rng.choice(list(self.stores))
        ):
            self.faults["leader transfer"] += 1

    def _act_split(self, rng: random.Random) -> None:
        key = rng.choice(self.keyspace)
        for region in self.pd.regions():
            if region.contains(key) and region.start_key != key:
                if self.pd.order_split(region.id, key):
                    self.faults["split"] += 1
                return

    def _act_move(self, rng: random.Random) -> None:
        regions = self.pd.regions()
        if regions:
            src, dst = rng.sample(list(self.stores), 2)
            if self.pd.order_move(rng.choice(regions).id, src, dst):
                self.faults["replica move"] += 1

    def _act_bounce(self, rng: random.Random) -> None:
        """A replica moved away from a store that is down, then back to it
        before it returns: the store then holds a removed peer of a region
        it must host again (as a new peer)."""
        regions = self.pd.regions()
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
            if not self.active:
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

    def _act_decommission(self, rng: random.Random) -> None:
        if self._offline is None and len(self.stores) > 3 and not self._down():
            store = rng.choice(list(self.stores))
            if self.pd.set_store_state(store, StoreState.OFFLINE):
                self._offline = store
                self.faults["decommission"] += 1
                self.world.log(f"chaos: s{store} offline")
                self.world.at(rng.uniform(3.0, 10.0), self._bring_back)

    def _act_clock_skew(self, rng: random.Random) -> None:
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

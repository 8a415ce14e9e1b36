"""The nemesis of `shardkv chaos`: faults injected one at a time, on a
schedule drawn from the run's seed.

* kill: SIGKILL a store, restart it 1-4 s later;
* pause: SIGSTOP a store for 1-4 s (alive but silent: its connections stay
  open and nothing answers, as with a long GC pause or a frozen VM);
* pd-kill: SIGKILL the PD, restart it 1-4 s later;
* partition: for 2-4 s, in turn: the store leading most regions cut off
  from the other stores and the PD (clients still reach it); the stores
  split in two with the PD on a random side; one store's packets to the
  others dropped (it hears them, they never hear it); the PD cut off from
  every store (chaos.netns);
* transfer: an admin transfer-leader operator on a random region;
* split: an admin split of a random region at a random key;
* move: a follower replica moved to a store without one (transfer-peer),
  or, when every store has one, removed for the PD to put back;
* disk: for 2-5 s, a store's disk looks full (its writes are refused, its
  reads go on); or its next Raft-log sync fails, which must stop it (it is
  then restarted). Through the store's failpoints (`--enable-failpoints`).

Every store is hit by a process fault before any is hit twice, and the
kinds come in a seeded order, so a short run still covers each.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import random
import signal
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from client.admin_http import AdminError, PdAdminClient
from kvproto.rpc import parse_address
from shardkv.chaos.model import Fault, Run
from shardkv.chaos.netns import Firewall, cut_both_ways
from shardkv.chaos.processes import Processes
from shardkv.local_cluster import LocalCluster
from store_node.cli import EXIT_DISK_FAILURE

__all__ = ["Nemesis"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Store:
    id: int
    address: str


@dataclass(slots=True)
class Nemesis:
    admin: PdAdminClient
    processes: Processes
    rng: random.Random
    state: Run
    t0: float
    cluster: LocalCluster | None = None  # ours: the PD, hosts, status ports
    firewall: Firewall | None = None  # in our own namespace: partitions
    _victims: Any = None  # cycles over the stores' addresses
    _order: list[str] = field(default_factory=list)
    _failpoints_set: bool = False
    _modes: Any = None  # cycles over the partition modes

    def _now(self) -> float:
        return trio.current_time() - self.t0

    async def run(self, faults: Sequence[str]) -> None:
        self._order = list(faults)
        self.rng.shuffle(self._order)
        actions: dict[str, Callable[[], Any]] = {
            "kill": self._kill,
            "pause": self._pause,
            "pd-kill": self._pd_kill,
            "partition": self._partition,
            "transfer": self._transfer,
            "split": self._split,
            "move": self._move,
            "disk": self._disk,
        }
        turn = tries = 0
        while True:
            await trio.sleep(self.rng.uniform(1.0, 3.0))
            kind = self._order[turn % len(self._order)]
            recorded = len(self.state.faults)
            try:
                await actions[kind]()
            except AdminError as e:
                if len(self.state.faults) > recorded:  # refused (busy region...): noted
                    self.state.faults[-1].outcome = f"refused: {str(e)[:80]}"
                else:  # the PD did not answer (restarting): no fault this turn
                    log.info("no %s fault this turn: %s", kind, e)
            # A kind that found nothing to do (no region with a leader yet,
            # the PD restarting) is tried again, so a run covers every kind.
            tries += 1
            if len(self.state.faults) > recorded or tries >= 3:
                turn += 1
                tries = 0

    def _record(self, kind: str, target: str) -> Fault:
        fault = Fault(self._now(), kind, target)
        self.state.faults.append(fault)
        return fault

    # -- what the PD knows -------------------------------------------------

    async def stores(self) -> list[_Store]:
        doc = await trio.to_thread.run_sync(self.admin.get, "/stores")
        return [
            _Store(s["id"], s["address"])
            for s in sorted(doc["stores"], key=lambda s: s["id"])
            if s["state"] != "tombstone"
        ]

    async def _regions(self) -> list[dict[str, Any]]:
        doc = await trio.to_thread.run_sync(self.admin.get, "/regions")
        return [r for r in doc["regions"] if r.get("leader")]

    async def _busiest_leader(self) -> str:
        """The address of the store leading the most regions."""
        led = Counter(r["leader"]["store_id"] for r in await self._regions())
        stores = await self.stores()
        return max(stores, key=lambda s: (led[s.id], self.rng.random())).address

    async def _next_victim(self) -> str:
        if self._victims is None:
            addresses = [s.address for s in await self.stores()]
            self.rng.shuffle(addresses)
            self._victims = itertools.cycle(addresses)
        address: str = next(self._victims)
        return address

    # -- process faults ----------------------------------------------------

    async def _kill(self) -> None:
        address = await self._next_victim()
        if not self.processes.running(address):
            return
        fault = self._record("kill", f"store {address}")
        await self.processes.kill(address)
        await trio.sleep(self.rng.uniform(1.0, 4.0))
        await self.processes.restart(address)
        fault.healed_at = self._now()

    async def _pause(self) -> None:
        address = await self._next_victim()
        if not self.processes.running(address):
            return
        fault = self._record("pause", f"store {address}")
        self.processes.signal(address, signal.SIGSTOP)
        try:
            await trio.sleep(self.rng.uniform(1.0, 4.0))
        finally:
            self.processes.signal(address, signal.SIGCONT)
        fault.healed_at = self._now()

    async def _pd_kill(self) -> None:
        assert self.cluster is not None and self.cluster.pd is not None
        fault = self._record("pd-kill", f"PD {self.cluster.pd_address}")
        await self.cluster.kill_child(self.cluster.pd)
        await trio.sleep(self.rng.uniform(1.0, 4.0))
        await self.cluster.start_pd()
        fault.healed_at = self._now()

    # -- partitions --------------------------------------------------------

    async def _partition(self) -> None:
        assert self.cluster is not None and self.firewall is not None
        pd = self.cluster.pd_host
        stores = await self.stores()
        hosts = {s.id: parse_address(s.address)[0] for s in stores}
        if len(hosts) < 2:
            return
        if self._modes is None:
            # Each mode in turn, the nastiest first: a leader cut off from
            # its peers and the PD that clients still reach.
            rest = ["split", "one-way", "pd"]
            self.rng.shuffle(rest)
            self._modes = itertools.cycle(["isolate-leader", *rest])
        mode: str = next(self._modes)
        all_hosts = sorted(hosts.values())
        if mode == "isolate-leader":
            address = await self._busiest_leader()
            cut = parse_address(address)[0]
            pairs = cut_both_ways([cut], [h for h in [*all_hosts, pd] if h != cut])
            target = f"store {address} from its peers and the PD"
        elif mode == "split":
            shuffled = list(all_hosts)
            self.rng.shuffle(shuffled)
            minority = shuffled[: self.rng.randint(1, max(1, (len(shuffled) - 1) // 2))]
            majority = shuffled[len(minority) :]
            (minority if self.rng.random() < 0.5 else majority).append(pd)
            pairs = cut_both_ways(minority, majority)
            target = f"{sorted(minority)} | {sorted(majority)}"
        elif mode == "one-way":
            mute = self.rng.choice(all_hosts)
            pairs = {(mute, h) for h in [*all_hosts, pd] if h != mute}
            target = f"{mute} heard but not heard"
        else:
            pairs = cut_both_ways([pd], all_hosts)
            target = "the PD from every store"
        fault = self._record("partition", f"{mode}: {target}")
        await self.firewall.cut(pairs)
        try:
            await trio.sleep(self.rng.uniform(2.0, 4.0))
        finally:
            with trio.CancelScope(shield=True):
                await self.firewall.heal()
        fault.healed_at = self._now()

    # -- operators ---------------------------------------------------------

    async def _operator(self, kind: str, target: str, body: dict[str, Any]) -> None:
        self._record(kind, target)
        await trio.to_thread.run_sync(self.admin.post, "/operators", body)

    async def _transfer(self) -> None:
        regions = await self._regions()
        if not regions:
            return
        region = self.rng.choice(regions)
        leader = region["leader"]["store_id"]
        others = [p["store_id"] for p in region["peers"] if p["store_id"] != leader]
        if not others:
            return
        to = self.rng.choice(others)
        await self._operator(
            "transfer",
            f"region {region['id']} to store {to}",
            {"name": "transfer-leader", "region_id": region["id"], "to_store_id": to},
        )

    async def _split(self) -> None:
        regions = await self._regions()
        if not regions:
            return
        region = self.rng.choice(regions)
        key = b"chaos-%03d-%d" % (self.rng.randrange(1000), self.rng.randrange(10))
        await self._operator(
            "split",
            f"region {region['id']} at {key.decode()}",
            {"name": "split-region", "region_id": region["id"], "keys": [{"hex": key.hex()}]},
        )

    async def _move(self) -> None:
        regions = await self._regions()
        if not regions:
            return
        region = self.rng.choice(regions)
        leader = region["leader"]["store_id"]
        holders = {p["store_id"] for p in region["peers"]}
        followers = sorted(holders - {leader})
        free = [s.id for s in await self.stores() if s.id not in holders]
        if not followers:
            return
        source = self.rng.choice(followers)
        if free:
            to = self.rng.choice(free)
            await self._operator(
                "move",
                f"region {region['id']} from store {source} to store {to}",
                {
                    "name": "transfer-peer",
                    "region_id": region["id"],
                    "from_store_id": source,
                    "to_store_id": to,
                },
            )
        else:  # every store has one: the PD's replica checker puts it back
            await self._operator(
                "move",
                f"region {region['id']} off store {source} (and back)",
                {"name": "remove-peer", "region_id": region["id"], "store_id": source},
            )

    # -- disks -------------------------------------------------------------

    async def _disk(self) -> None:
        assert self.cluster is not None
        full = self.rng.random() < 0.5
        if full:  # where writes are proposed: the busiest leader's store
            address = await self._busiest_leader()
        else:
            address = await self._next_victim()
        spec = next(s for s in self.cluster.store_specs if s.address == address)
        if not spec.child.running:
            return
        url = f"{spec.status_url}/failpoints"
        self._failpoints_set = True
        if full:
            fault = self._record("disk", f"store {address}: disk full")
            await _failpoint(url, "disk.free", "0")
            try:
                await trio.sleep(self.rng.uniform(2.0, 5.0))
            finally:
                with trio.CancelScope(shield=True):
                    await _failpoint(url, "disk.free", None)
            fault.healed_at = self._now()
            return
        fault = self._record("disk", f"store {address}: Raft-log sync fails")
        await _failpoint(url, "engine.sync", "eio")
        # A store must stop at a failed sync (it never carries on after one).
        process = spec.child.process
        assert process is not None
        with trio.move_on_after(10):
            code = await process.wait()
            fault.outcome = f"applied: the store stopped (exit {code})"
            if code != EXIT_DISK_FAILURE:
                self.state.violations.append(
                    f"store {address} exited {code} after a failed sync, not "
                    f"{EXIT_DISK_FAILURE} (a disk failure)"
                )
        if spec.child.running:
            fault.outcome = "VIOLATION: the store carried on after a failed sync"
            self.state.violations.append(f"store {address} carried on after a failed sync")
            await self.processes.kill(address)
        await trio.sleep(self.rng.uniform(0.5, 2.0))
        await self.processes.restart(address)
        fault.healed_at = self._now()

    async def clear_failpoints(self) -> None:
        """Every store's failpoints off (after a run cut off mid-fault)."""
        if not self._failpoints_set or self.cluster is None:
            return
        for spec in self.cluster.store_specs:
            if spec.child.running:
                for name in ("disk.free", "engine.sync"):
                    await _failpoint(f"{spec.status_url}/failpoints", name, None)


async def _failpoint(url: str, name: str, action: str | None) -> None:
    """Set (or with None, clear) a failpoint through a store's status port;
    a store that is down has none to clear."""
    request = urllib.request.Request(
        f"{url}/{name}",
        data=None if action is None else action.encode(),
        method="DELETE" if action is None else "PUT",
    )

    def call() -> None:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    try:
        await trio.to_thread.run_sync(call)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        # engine.sync=eio may stop the store before its answer is out.
        log.info("failpoint %s at %s: %s", name, url, e)

"""A small builder-style mock cluster for checker and operator tests, and
the store's way of carrying out an operator step.

`MockCluster` is a real `Cluster` on in-memory storage plus an
`OperatorController`, built by chained calls and driven with an explicit
clock::

    mc = MockCluster().store(1).store(2).store(3).region(1, voters=(1, 2))
    order = mc.heartbeat(mc.region_of(1))      # what the leader is told

Conventions (so tests read without arithmetic):

* stores are Up and have sent a heartbeat (1 TiB, half free) unless told;
* region `r` covers ``[b"r%04d" % r, b"r%04d" % (r + 1))``, its peer on
  store `s` has id ``r * 100 + s``; voters first, then learners;
* the first store bootstraps the cluster with a placeholder region (id
  1000), which the first `region` call replaces; so ids the PD allocates
  (new peers) are 1001, 1002, ...

`apply_order` carries out a step with store_node's own membership rules
(`membership.apply_to_region`, the epoch rules of `kvproto.epoch`), so a
step the store could not take fails here too. `step` has a region's leader
carry out what the PD answers it (leaving a joint configuration at once, a
learner caught up at once), and `settle` patrols, schedules and steps until
nothing runs: the schedulers (`schedulers`, the default set) run only in
`schedule` and `settle`, never in `patrol`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

from kvproto import pdpb
from kvproto.epoch import AdminCmdType, bumped
from kvproto.metapb import (
    Peer,
    PeerId,
    PeerRole,
    Region,
    RegionId,
    StoreId,
    StoreState,
)
from kvproto.pdpb import PeerStats, StoreStats
from placement_driver.cluster import Cluster
from placement_driver.operator_controller import OperatorController
from placement_driver.operators import Operator, OperatorTimeouts, in_joint
from placement_driver.regions import RegionRecord
from placement_driver.schedulers import SchedulerController
from placement_driver.storage import MemoryMetaStorage
from raft.types import ConfChange
from store_node import membership
from tests import factories

TiB = 1 << 40
DISCONNECT, DOWN = 10.0, 60.0  # store_disconnect_time, max_store_down_time
PLACEHOLDER = 1000


def key(region_id: int) -> bytes:
    return b"r%04d" % region_id


def peer_id(region_id: int, store_id: int) -> PeerId:
    return PeerId(region_id * 100 + store_id)


class MockCluster:
    def __init__(self, **config: object) -> None:
        """`config`: cluster config keys over the defaults."""
        self.now = 1000.0
        self.storage = MemoryMetaStorage()
        self.cluster = Cluster(
            self.storage,
            0.0,
            config_overrides={
                "store_disconnect_time": DISCONNECT,
                "max_store_down_time": DOWN,
                **config,
            },
        )
        self.controller = OperatorController(16)
        self.schedulers = SchedulerController()
        self._leaders: dict[RegionId, PeerId] = {}
        self._terms: dict[RegionId, int] = {}
        self._sizes: dict[RegionId, int] = {}

    # -- building ----------------------------------------------------------------

    def operators(
        self, *, history_size: int = 16, timeouts: OperatorTimeouts | None = None
    ) -> Self:
        """A fresh operator controller with this history size and these timeouts."""
        self.controller = OperatorController(history_size, timeouts)
        return self

    def store(
        self,
        store_id: int,
        *,
        state: StoreState = StoreState.UP,
        capacity: int = TiB,
        available: int = TiB // 2,
        busy: bool = False,
        heartbeat: bool = True,
    ) -> Self:
        """A store in `state` (Up, Disconnected and Down by the age of its
        last heartbeat; Offline and Tombstone set by an administrator)."""
        if not self.cluster.is_bootstrapped:
            placeholder = factories.region(
                PLACEHOLDER, peers=(factories.peer(PLACEHOLDER, store_id),)
            )
            self.cluster.bootstrap(factories.store(store_id), placeholder, 4242, now=self.now)
        else:
            self.cluster.put_store(factories.store(store_id), now=self.now)
        if heartbeat:
            age = {StoreState.DISCONNECTED: DISCONNECT, StoreState.DOWN: DOWN}.get(state, 0.0)
            stats = StoreStats(
                StoreId(store_id), capacity=capacity, available=available, is_busy=busy
            )
            self.cluster.store_heartbeat(stats, now=self.now - age)
        if state in (StoreState.OFFLINE, StoreState.TOMBSTONE):
            self.cluster.set_store_state(store_id, StoreState.OFFLINE, self.now)
        if state == StoreState.TOMBSTONE:
            self.cluster.set_store_state(store_id, StoreState.TOMBSTONE, self.now)
        self.cluster.update_store_states(self.now)
        return self

    def region(
        self,
        region_id: int,
        *,
        voters: Iterable[int] = (1,),
        learners: Iterable[int] = (),
        leader: int | None = None,
        pending: Iterable[int] = (),
        conf_ver: int = 1,
        version: int = 1,
        size: int = 0,
    ) -> Self:
        """A region with peers on these stores, reported by its leader
        (on store `leader`, default the first voter) at `now`; `pending`
        are stores whose peer is catching up; `size` its approximate size
        in bytes (reported from now on)."""
        voters, learners = tuple(voters), tuple(learners)
        peers = tuple(factories.peer(peer_id(region_id, s), s) for s in voters) + tuple(
            factories.learner(peer_id(region_id, s), s) for s in learners
        )
        region = factories.region(
            region_id,
            key(region_id),
            key(region_id + 1),
            conf_ver=conf_ver,
            version=version,
            peers=peers,
        )
        self._leaders[region.id] = peer_id(region_id, voters[0] if leader is None else leader)
        self._sizes[region.id] = size
        self.report(region, pending=[p for p in peers if p.store_id in set(pending)])
        return self

    def down(self, store_id: int) -> Self:
        """The store stopped heartbeating long ago: it is Down now."""
        stats = StoreStats(StoreId(store_id), capacity=TiB, available=TiB // 2)
        self.cluster.store_heartbeat(stats, now=self.now - DOWN)
        self.cluster.update_store_states(self.now)
        return self

    def tick(self, seconds: float) -> Self:
        """Let time pass; every store that is Up stays Up (it heartbeats)."""
        self.now += seconds
        for info in self.cluster.stores():
            if info.state == StoreState.UP and info.stats is not None:
                self.cluster.store_heartbeat(info.stats, now=self.now)
        self.cluster.update_store_states(self.now)
        return self

    # -- reading ----------------------------------------------------------------

    def record(self, region_id: int) -> RegionRecord:
        record = self.cluster.region_by_id(region_id)
        assert record is not None, f"region {region_id} is not known"
        return record

    def region_of(self, region_id: int) -> Region:
        return self.record(region_id).region

    def peer(self, region_id: int, store_id: int) -> Peer:
        p = self.region_of(region_id).peer_on_store(StoreId(store_id))
        assert p is not None, f"region {region_id} has no peer on store {store_id}"
        return p

    def operator(self, region_id: int) -> Operator | None:
        return self.controller.get(region_id)

    # -- reporting ----------------------------------------------------------------

    def report(
        self,
        region: Region,
        *,
        leader: int | None = None,
        pending: Iterable[Peer] = (),
        down: Iterable[Peer] = (),
    ) -> RegionRecord:
        """The leader (on store `leader`, default the last one if still a
        voter) reports `region` at `now`."""
        rid = region.id
        if leader is not None:
            on_store = region.peer_on_store(StoreId(leader))
            self._leaders[rid] = peer_id(rid, leader) if on_store is None else on_store.id
            self._terms[rid] = self._terms.get(rid, 1) + 1
        leader_peer = region.find_peer(self._leaders[rid])
        assert leader_peer is not None
        return self.cluster.region_heartbeat(
            pdpb.RegionHeartbeatRequest(
                pdpb.RequestHeader(self.cluster.cluster_id),
                region,
                leader_peer,
                term=self._terms.setdefault(rid, 1),
                approximate_size=self._sizes.get(rid, 0),
                pending_peers=tuple(pending),
                down_peers=tuple(PeerStats(p) for p in down),
            ),
            self.now,
        )

    def heartbeat(
        self,
        region: Region,
        *,
        leader: int | None = None,
        pending: Iterable[Peer] = (),
        down: Iterable[Peer] = (),
    ) -> pdpb.RegionHeartbeatResponse | None:
        """`report`, then what the PD answers (the operator hook)."""
        record = self.report(region, leader=leader, pending=pending, down=down)
        return self.controller.on_region_heartbeat(self.cluster, record, self.now)

    def patrol(self) -> list[Operator]:
        """One patrol; the operators it created."""
        return list(self.controller.patrol(self.cluster, self.now).created)

    def schedule(self) -> list[Operator]:
        """One run of the schedulers; the operators it created."""
        return self.schedulers.run(self.cluster, self.controller, self.now)

    def step(self, region_id: int) -> bool:
        """The region's leader heartbeats and carries out what the PD
        answers, as a store does: a conf change (a joint one left at once,
        a new learner caught up at once), a leader transfer; then reports
        the region. Whether it was told anything."""
        region = self.region_of(region_id)
        order = self.heartbeat(region)
        if order is None:
            return False
        if order.transfer_leader is not None:
            self.report(region, leader=order.transfer_leader.store_id)
        else:
            region = apply_order(region, order)
            if in_joint(region):
                region = leave_joint(region)
            self.report(region)
        return True

    def settle(self, rounds: int = 500) -> int:
        """Patrol, schedule and step every region with an operator, round
        after round, until no operator runs after a patrol and a run of the
        schedulers; the rounds it took."""
        for n in range(rounds):
            self.patrol()
            self.schedule()
            running = self.controller.running()
            if not running:
                return n
            for op in running:
                self.step(op.region_id)
        raise AssertionError(f"still running after {rounds} rounds: {self.controller.running()}")

    def leader_counts(self, stores: Iterable[int]) -> dict[int, int]:
        return {s: self.cluster.store_leader_count(s) for s in stores}

    def region_counts(self, stores: Iterable[int]) -> dict[int, int]:
        return {s: self.cluster.store_region_count(s) for s in stores}


# -- the store's side -------------------------------------------------------------------


class Refused(Exception):
    """The store would not carry out this order."""


def apply_order(region: Region, order: pdpb.RegionHeartbeatResponse | None) -> Region:
    """The region after its leader carries out a conf change `order` as the
    store does: the epoch must match on `conf_ver`, one change at a time
    (not while joint), several changes enter a joint configuration; the
    epoch is bumped by the rules of `kvproto.epoch`. Raises Refused."""
    assert order is not None, "no order"
    req = order.change_peer
    assert req is not None, f"not a conf change: {order}"
    assert order.region_epoch is not None and order.region_id == region.id
    if order.region_epoch.conf_ver != region.epoch.conf_ver:
        raise Refused(f"epoch {order.region_epoch} does not match {region.epoch}")
    if any(p.role in (PeerRole.INCOMING_VOTER, PeerRole.DEMOTING_VOTER) for p in region.peers):
        raise Refused("a conf change is pending (joint)")
    cc = membership.to_conf_change(req, b"")
    try:
        changed = membership.apply_to_region(region, cc, req)
    except Exception as e:
        raise Refused(str(e)) from e
    return changed.with_epoch(bumped(region.epoch, AdminCmdType.CHANGE_PEER))


def leave_joint(region: Region) -> Region:
    """The automatic leave of a joint configuration."""
    changed = membership.apply_to_region(region, ConfChange(), None)
    return changed.with_epoch(bumped(region.epoch, AdminCmdType.CHANGE_PEER))


def voters(region: Region) -> list[int]:
    """Store ids of the voters, sorted."""
    return sorted(p.store_id for p in region.peers if p.role == PeerRole.VOTER)


def learners(region: Region) -> list[int]:
    return sorted(p.store_id for p in region.peers if p.role == PeerRole.LEARNER)


def describe(op: Operator | None) -> list[str]:
    """Its steps as text (empty for None)."""
    return [] if op is None else [s.describe() for s in op.steps]

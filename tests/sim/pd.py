"""The PD in the simulation: the real pure core (`Cluster`, `PdService`, the
`OperatorController` with its replica checker) on in-memory storage, driven
by the simulation's clock.

It keeps what the PD process keeps: cluster metadata in `MemoryMetaStorage`
(durable), regions flushed every second (a PD crash loses the rest; the
stores' heartbeats tell it again), operators in memory only (a restart
forgets them). While it is down every call fails.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping

from kvproto.metapb import Peer, PeerId, PeerRole, Region, Store, StoreId, StoreState
from kvproto.raft_cmdpb import ChangePeer, ChangePeerType
from placement_driver.cluster import Cluster
from placement_driver.errors import PdRequestError
from placement_driver.operator_controller import OperatorController
from placement_driver.operators import (
    AddLearner,
    ChangePeers,
    Operator,
    OperatorKind,
    RemovePeer,
    Step,
    TransferLeader,
)
from placement_driver.service import PdService
from placement_driver.storage import MemoryMetaStorage
from tests.sim.world import World

log = logging.getLogger(__name__)

PD_CALL_DELAY = 0.0005


class SimPd:
    def __init__(self, world: World, config: Mapping[str, object]) -> None:
        self.world = world
        self.config = dict(config)
        self.storage = MemoryMetaStorage()
        self.rng = random.Random(world.rng.getrandbits(64))
        self.up = False
        self.incarnation = 0
        self.cluster: Cluster
        self.controller: OperatorController
        self.service: PdService
        self.restarts = 0

    def start(self) -> None:
        self.cluster = Cluster(self.storage, self.world.now, config_overrides=self.config)
        self.controller = OperatorController()
        self.service = PdService(self.cluster, self.rng, self.controller)
        self.up = True
        self.incarnation += 1
        self.world.at(1.0, self._patrol, self.incarnation)
        self.world.at(0.5, self._store_states, self.incarnation)
        self.world.at(1.0, self._flush, self.incarnation)

    def crash(self) -> None:
        """Unflushed regions and every operator are lost."""
        self.up = False
        self.incarnation += 1
        self.restarts += 1

    def bootstrap(self, store: Store, region: Region, others: list[Store]) -> None:
        self.cluster.bootstrap(store, region, self.rng.randrange(1, 2**63), self.world.now)
        for s in others:
            self.cluster.put_store(s, self.world.now)

    # -- calls -----------------------------------------------------------------

    def call(self, request: object, done: Callable[[object | None], None]) -> None:
        """Handle `request` after a network delay; `done` gets the response,
        or None if the PD is (or goes) down."""
        incarnation = self.incarnation

        def handle() -> None:
            if not self.up or self.incarnation != incarnation:
                done(None)
                return
            done(self.service.handle(request, self.world.now))

        self.world.at(PD_CALL_DELAY, handle)

    # -- what administrators and schedulers do ------------------------------------

    def order_split(self, region_id: int, key: bytes) -> bool:
        if not self.up:
            return False
        try:
            self.controller.split_region(self.cluster, region_id, (key,), self.world.now)
        except Exception as e:  # a stale region, a running operator: skip it
            self.world.log(f"pd: split of region {region_id} at {key!r} not ordered: {e}")
            return False
        return True

    def order_check(self, region_id: int) -> bool:
        """A consistency check of the region (the admin API's order)."""
        if not self.up:
            return False
        try:
            self.service.checks.request(self.cluster, region_id, self.world.now)
        except PdRequestError as e:  # no leader known yet, too many waiting
            self.world.log(f"pd: check of region {region_id} not ordered: {e}")
            return False
        return True

    def order_transfer(self, region_id: int, to_store: int) -> bool:
        if not self.up:
            return False
        record = self.cluster.region_by_id(region_id)
        if record is None:
            return False
        peer = record.region.peer_on_store(StoreId(to_store))
        if peer is None or peer.is_learner:
            return False
        op = Operator(
            record.region.id,
            "sim-transfer",
            OperatorKind.ADMIN,
            (TransferLeader(peer),),
            record.region.epoch,
        )
        try:
            self.controller.add(op, self.world.now)
        except Exception as e:
            self.world.log(f"pd: transfer of region {region_id} not ordered: {e}")
            return False
        return True

    def order_move(self, region_id: int, from_store: int, to_store: int) -> bool:
        """Move a voter of the region to another store, the way the replica
        checker replaces one (balance schedulers do the same)."""
        if not self.up:
            return False
        record = self.cluster.region_by_id(region_id)
        if record is None or record.leader is None:
            return False
        region = record.region
        voter = region.peer_on_store(StoreId(from_store))
        if (
            voter is None
            or voter.role != PeerRole.VOTER
            or region.peer_on_store(StoreId(to_store)) is not None
            or any(p.role != PeerRole.VOTER and p.role != PeerRole.LEARNER for p in region.peers)
        ):
            return False
        steps: list[Step] = []
        if record.leader.id == voter.id:
            others = [p for p in region.peers if p.id != voter.id and p.role == PeerRole.VOTER]
            if not others:
                return False
            steps.append(TransferLeader(others[0]))
        new = Peer(PeerId(self.cluster.alloc_ids(1)[0]), StoreId(to_store), PeerRole.LEARNER)
        demoted = Peer(voter.id, voter.store_id, PeerRole.LEARNER)
        steps += [
            AddLearner(new),
            ChangePeers(
                (
                    ChangePeer(ChangePeerType.ADD_VOTER, Peer(new.id, new.store_id)),
                    ChangePeer(ChangePeerType.ADD_LEARNER, demoted),
                )
            ),
            RemovePeer(demoted),
        ]
        op = Operator(region.id, "sim-move", OperatorKind.ADMIN, tuple(steps), region.epoch)
        try:
            self.controller.add(op, self.world.now)
        except Exception as e:
            self.world.log(f"pd: move of region {region_id} not ordered: {e}")
            return False
        return True

    def set_store_state(self, store_id: int, state: StoreState) -> bool:
        if not self.up:
            return False
        try:
            self.cluster.set_store_state(store_id, state, self.world.now)
        except Exception as e:
            self.world.log(f"pd: store {store_id} not made {state.name}: {e}")
            return False
        return True

    def regions(self) -> list[Region]:
        """The regions the PD knows of; none while it is down."""
        if not self.up:
            return []
        return [r.region for r in self.cluster.regions()]

    # -- periodic work ---------------------------------------------------------------

    def _patrol(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        self.controller.patrol(self.cluster, self.world.now)
        self.world.at(1.0, self._patrol, incarnation)

    def _store_states(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        self.cluster.update_store_states(self.world.now)
        self.world.at(0.5, self._store_states, incarnation)

    def _flush(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        self.cluster.flush_regions()
        self.world.at(1.0, self._flush, incarnation)

"""The administrator's operators: plans for one region ordered by hand
(the admin API's ``POST /operators``), pure like the replica checker and
judged and built as the checker's and the schedulers' are
(`region_check.RegionCheck`: health, the quorum simulation, moving a
voter).

    transfer-leader  to_store_id            TransferLeader to its voter there
    add-peer         store_id               AddLearner, PromoteLearner
    remove-peer      store_id               [TransferLeader away,] RemovePeer
    transfer-peer    from_store_id,         a voter: [TransferLeader away,]
                     to_store_id            AddLearner, ChangePeers (promote +
                                            demote, joint), RemovePeer; a
                                            learner: AddLearner, RemovePeer

(split-region is `OperatorController.split_region`.)

They are checked as the checker's are, and refused (`PdRequestError`)
otherwise: the region must have a known leader and not be in a joint
configuration; a store that gets a peer or the leadership must be Up;
one peer per store; every configuration the plan passes through keeps a
majority of healthy voters. A store that is not known is STORE_NOT_FOUND,
what the region's or the stores' state refuses is FAILED_PRECONDITION.
They are not limited by the schedule limits (an administrator's order),
but one region still runs one operator at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kvproto.metapb import Peer, PeerId, PeerRole, StoreId, StoreState
from kvproto.pdpb import PdErrorCode
from placement_driver.errors import PdRequestError, failed_precondition, invalid_argument
from placement_driver.operators import (
    AddLearner,
    Operator,
    OperatorKind,
    PromoteLearner,
    RemovePeer,
    Step,
    TransferLeader,
    in_joint,
)
from placement_driver.region_check import ClusterView, OpInfluence, RegionCheck
from placement_driver.regions import RegionRecord
from placement_driver.stores import StoreInfo

__all__ = ["ADMIN_OPERATORS", "AdminOperator", "plan_admin_operator"]


class _AdminPlanner(RegionCheck):
    def check_region(self) -> None:
        rid = self.region.id
        if self.record.leader is None:
            raise failed_precondition(f"region {rid} has no known leader yet")
        if in_joint(self.region):
            raise failed_precondition(
                f"region {rid} is in a joint configuration (its leader is leaving it)"
            )

    def check_known(self, store_id: StoreId) -> StoreInfo:
        info = self.view.find_store(store_id)
        if info is None:
            raise PdRequestError(PdErrorCode.STORE_NOT_FOUND, f"store {store_id} is not known")
        return info

    def check_target(self, store_id: StoreId) -> StoreInfo:
        """The store may get a peer or the leadership: known and Up."""
        info = self.check_known(store_id)
        if info.state != StoreState.UP:
            raise failed_precondition(
                f"store {store_id} is {info.state.name.capitalize()}: "
                "an operator puts peers and leaders on Up stores only"
            )
        return info

    def member_on(self, store_id: StoreId) -> Peer:
        peer = self.region.peer_on_store(store_id)
        if peer is None:
            self.check_known(store_id)
            raise failed_precondition(f"region {self.region.id} has no peer on store {store_id}")
        return peer

    def free_target(self, store_id: StoreId) -> StoreInfo:
        """The store may get a new peer of the region."""
        info = self.check_target(store_id)
        other = self.region.peer_on_store(store_id)
        if other is not None:
            raise failed_precondition(
                f"store {store_id} already holds peer {other.id} of region {self.region.id}"
            )
        return info

    def handoff(self, leaving: Peer) -> list[Step]:
        """The steps that move the leadership off `leaving` before a plan
        takes its vote (none if it does not lead); refused if no other
        healthy voter can take over."""
        leader = self.record.leader
        if leader is None or leader.id != leaving.id:
            return []
        new_leader = self.new_leader(leaving)
        if new_leader is None:
            raise failed_precondition(
                f"peer {leaving.id} leads region {self.region.id} "
                "and no other healthy voter on an Up store can take over"
            )
        return [TransferLeader(new_leader)]

    def operator(self, desc: str, steps: list[Step] | None) -> Operator:
        """The operator of `steps`, refused if they would leave the region
        without a healthy quorum (None: `move_voter` found they would)."""
        if steps is None or not self.keeps_quorum(steps):
            raise failed_precondition(
                f"{desc} would leave region {self.region.id} without a majority of healthy "
                "voters in one of its steps (voters are down, pending or on Down stores)"
            )
        return Operator(self.region.id, desc, OperatorKind.ADMIN, tuple(steps), self.region.epoch)

    def with_new_peer(
        self, desc: str, store: StoreInfo, plan: Callable[[Peer], list[Step]]
    ) -> Operator:
        """The plan checked on a placeholder peer first: a new id is taken
        only for a plan that is proposed."""
        self.operator(desc, plan(Peer(PeerId(0), store.id, PeerRole.LEARNER)))
        return self.operator(desc, plan(self.new_peer(store)))


def _transfer_leader(p: _AdminPlanner, to_store_id: StoreId) -> Operator:
    to = p.member_on(to_store_id)
    rid = p.region.id
    leader = p.record.leader
    if leader is not None and leader.id == to.id:
        raise failed_precondition(f"peer {to.id} on store {to_store_id} already leads region {rid}")
    if to.role != PeerRole.VOTER:
        raise failed_precondition(
            f"peer {to.id} on store {to_store_id} is a {to.role.name.lower()}, not a voter"
        )
    p.check_target(to_store_id)
    if not p.healthy(to):
        raise failed_precondition(
            f"peer {to.id} on store {to_store_id} is reported down or catching up"
        )
    return p.operator("transfer-leader", [TransferLeader(to)])


def _add_peer(p: _AdminPlanner, store_id: StoreId) -> Operator:
    store = p.free_target(store_id)
    return p.with_new_peer("add-peer", store, lambda new: [AddLearner(new), PromoteLearner(new)])


def _remove_peer(p: _AdminPlanner, store_id: StoreId) -> Operator:
    peer = p.member_on(store_id)
    return p.operator("remove-peer", [*p.handoff(peer), RemovePeer(peer)])


def _transfer_peer(p: _AdminPlanner, from_store_id: StoreId, to_store_id: StoreId) -> Operator:
    if from_store_id == to_store_id:
        raise invalid_argument(f"from and to are the same store ({to_store_id})")
    old = p.member_on(from_store_id)
    store = p.free_target(to_store_id)
    if old.is_learner:
        return p.with_new_peer(
            "transfer-peer", store, lambda new: [AddLearner(new), RemovePeer(old)]
        )
    p.handoff(old)  # refused here, with its reason, if nobody can take over
    return p.operator("transfer-peer", p.move_voter(old, store))


@dataclass(frozen=True, slots=True)
class AdminOperator:
    """One kind of administrator's operator: the store ids it takes (by
    their names in the request) and its planner."""

    store_fields: tuple[str, ...]
    plan: Callable[..., Operator]


ADMIN_OPERATORS: Final = {
    "transfer-leader": AdminOperator(("to_store_id",), _transfer_leader),
    "transfer-peer": AdminOperator(("from_store_id", "to_store_id"), _transfer_peer),
    "add-peer": AdminOperator(("store_id",), _add_peer),
    "remove-peer": AdminOperator(("store_id",), _remove_peer),
}


def plan_admin_operator(
    view: ClusterView,
    record: RegionRecord,
    name: str,
    store_ids: dict[str, int],
    influence: OpInfluence | None = None,
) -> Operator:
    """The operator `name` (a key of ADMIN_OPERATORS) for the region, with
    its store ids by field name (not started); raises PdRequestError if
    it is refused. `influence` (the running operators') orders the
    candidates to take the leadership over, as the checker's does."""
    kind = ADMIN_OPERATORS[name]
    if set(store_ids) != set(kind.store_fields):
        raise ValueError(f"{name} takes {kind.store_fields}, got {sorted(store_ids)}")
    planner = _AdminPlanner(view, record, influence or OpInfluence())
    planner.check_region()
    return kind.plan(planner, **{k: StoreId(v) for k, v in store_ids.items()})

"""What the replica checker and the balance schedulers judge alike about one
region in a cluster view: which stores may take a new peer, which peers are
healthy, whether a plan keeps a healthy quorum at every step, and the steps
that move a voter to another store. Pure: no I/O, no clock, no randomness.

A voter is healthy when its store is known and not Down or Tombstone (an
Offline store still serves until it is emptied; a Disconnected one has
missed a few heartbeats only), the leader does not report it down and it is
not pending (catching up). `keeps_quorum` requires a majority of healthy
voters in every configuration a plan passes through, after each of its
steps (both halves of a joint one); a learner the plan adds counts as
healthy once promoted, since its AddLearner step finishes only when it has
caught up.

A store accepts a new peer when it is Up, known from a store heartbeat, not
busy, its used ratio at most LOW_SPACE_RATIO, with fewer than
`max_snapshot_count` snapshots on their way in (operators that still have
to add a learner there) and fewer than `max_pending_peer_count` pending
peers.

`OpInfluence` is what running operators are about to do to the stores, so
that planners do not send every region to the same store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from kvproto.metapb import Peer, PeerId, PeerRole, StoreId, StoreState
from kvproto.raft_cmdpb import ChangePeer, ChangePeerType
from placement_driver.config import ClusterConfig
from placement_driver.operators import (
    AddLearner,
    ChangePeers,
    PromoteLearner,
    RemovePeer,
    Step,
    TransferLeader,
)
from placement_driver.regions import RegionRecord
from placement_driver.stores import StoreInfo

__all__ = [
    "DEAD_STATES",
    "LOW_SPACE_RATIO",
    "VACATE_STATES",
    "ClusterView",
    "OpInfluence",
    "RegionCheck",
    "accepts_peers",
]

# A store whose used ratio (1 - available / capacity) is above this gets no
# new peers (TiKV PD's low-space-ratio default).
LOW_SPACE_RATIO: Final = 0.8
# Peers on stores in these states are moved elsewhere.
VACATE_STATES = frozenset({StoreState.DOWN, StoreState.OFFLINE, StoreState.TOMBSTONE})
# Voters on stores in these states cannot vote.
DEAD_STATES = frozenset({StoreState.DOWN, StoreState.TOMBSTONE})


class ClusterView(Protocol):
    """What checkers and schedulers read of the cluster (`Cluster` is one)."""

    @property
    def config(self) -> ClusterConfig: ...

    def stores(self, *, exclude_tombstone: bool = False) -> list[StoreInfo]: ...

    def find_store(self, store_id: int) -> StoreInfo | None: ...

    def store_region_count(self, store_id: int) -> int: ...

    def store_region_size(self, store_id: int) -> int: ...

    def store_leader_count(self, store_id: int) -> int: ...

    def store_pending_peer_count(self, store_id: int) -> int: ...

    def alloc_ids(self, count: int = 1) -> range: ...


@dataclass(slots=True)
class OpInfluence:
    """What running operators are about to do to stores, per store: the
    change in region count (a learner still to add: +1, a peer still to
    remove: -1) and in region size (the same, weighted by the region's
    `RegionStat.weight`), the snapshots still to come (one per learner
    still to add), and the change in leader count (a leader transfer still
    to come: +1 on its target, -1 on the region's current leader)."""

    region_delta: Counter[StoreId] = field(default_factory=Counter)
    snapshots_in: Counter[StoreId] = field(default_factory=Counter)
    size_delta: Counter[StoreId] = field(default_factory=Counter)
    leader_delta: Counter[StoreId] = field(default_factory=Counter)

    def add(self, steps: Iterable[Step], record: RegionRecord | None = None) -> None:
        """Count `steps` of an operator on `record`'s region (without the
        record: region counts and snapshots only)."""
        weight = 0 if record is None else record.stat.weight
        leader = None if record is None or record.leader is None else record.leader.store_id
        for step in steps:
            if isinstance(step, AddLearner):
                self.region_delta[step.peer.store_id] += 1
                self.snapshots_in[step.peer.store_id] += 1
                self.size_delta[step.peer.store_id] += weight
            elif isinstance(step, RemovePeer):
                self.region_delta[step.peer.store_id] -= 1
                self.size_delta[step.peer.store_id] -= weight
            elif isinstance(step, TransferLeader) and leader is not None:
                self.leader_delta[step.to.store_id] += 1
                self.leader_delta[leader] -= 1
                leader = step.to.store_id


def accepts_peers(view: ClusterView, influence: OpInfluence, info: StoreInfo) -> bool:
    """Whether the store may take a new peer (of any region) now."""
    config = view.config
    stats = info.stats
    if info.state != StoreState.UP or stats is None or stats.is_busy:
        return False
    if stats.capacity > 0 and stats.available < stats.capacity * (1 - LOW_SPACE_RATIO):
        return False
    snapshots = max(influence.snapshots_in[info.id], stats.receiving_snap_count)
    if snapshots >= config.max_snapshot_count:
        return False
    return view.store_pending_peer_count(info.id) < config.max_pending_peer_count


class RegionCheck:
    """One region in a cluster view, with the influence of the running
    operators: the judgments the replica checker and the schedulers share."""

    def __init__(
        self,
        view: ClusterView,
        record: RegionRecord,
        influence: OpInfluence,
        *,
        no_leaders: Collection[StoreId] = frozenset(),
    ) -> None:
        """`no_leaders`: stores the leadership must not be moved to (those
        an evict-leader scheduler empties)."""
        self.view = view
        self.record = record
        self.region = record.region
        self.influence = influence
        self.config = view.config
        self.no_leaders = no_leaders

    # -- stores ------------------------------------------------------------------

    def state(self, store_id: StoreId) -> StoreState:
        info = self.view.find_store(store_id)
        return StoreState.TOMBSTONE if info is None else info.state

    def regions_on(self, store_id: StoreId) -> int:
        return self.view.store_region_count(store_id) + self.influence.region_delta[store_id]

    def to_vacate(self, peer: Peer) -> bool:
        return self.state(peer.store_id) in VACATE_STATES

    def new_homes(self) -> list[StoreInfo]:
        """The stores that may take a new peer of the region (none there yet)."""
        taken = {p.store_id for p in self.region.peers}
        return [
            s
            for s in self.view.stores()
            if s.id not in taken and accepts_peers(self.view, self.influence, s)
        ]

    def fill_order(self, peer: Peer) -> tuple[int, int]:
        """Smaller is the emptier store."""
        return (self.regions_on(peer.store_id), peer.store_id)

    # -- peers -------------------------------------------------------------------

    def is_down(self, peer: Peer) -> bool:
        return any(d.peer.id == peer.id for d in self.record.stat.down_peers)

    def healthy(self, peer: Peer) -> bool:
        """Whether the peer can acknowledge the leader's appends now."""
        return (
            self.state(peer.store_id) not in DEAD_STATES
            and not self.is_down(peer)
            and not self.record.stat.is_pending(peer.id)
        )

    def has_quorum(self) -> bool:
        """Whether the healthy voters are a majority: else the region cannot
        commit a conf change or take a new leader."""
        voters = [p for p in self.region.peers if p.role == PeerRole.VOTER]
        return 2 * sum(self.healthy(v) for v in voters) > len(voters)

    def healthy_voters(self) -> list[Peer]:
        """The healthy voters on Up stores: those fit to lead."""
        return [
            p
            for p in self.region.peers
            if p.role == PeerRole.VOTER
            and self.healthy(p)
            and self.state(p.store_id) == StoreState.UP
        ]

    def new_leader(self, leaving: Peer) -> Peer | None:
        """The healthy voter on an Up store to lead instead of `leaving`."""
        candidates = [
            p
            for p in self.healthy_voters()
            if p.id != leaving.id and p.store_id not in self.no_leaders
        ]
        return min(candidates, key=self.fill_order, default=None)

    def new_peer(self, store: StoreInfo) -> Peer:
        (peer_id,) = self.view.alloc_ids(1)
        return Peer(PeerId(peer_id), store.id, PeerRole.LEARNER)

    # -- plans -------------------------------------------------------------------

    def keeps_quorum(self, steps: Sequence[Step]) -> bool:
        """Whether a majority of the voters is healthy in every configuration
        the steps pass through: a voter removed or demoted while others are
        down could leave a group that cannot commit, not even the change
        that would repair it."""
        # Peer id -> healthy, for the voters and the learners as the steps go.
        voters = {p.id: self.healthy(p) for p in self.region.peers if p.role == PeerRole.VOTER}
        learners = {p.id: self.healthy(p) for p in self.region.peers if p.is_learner}

        def change(config: dict[PeerId, bool], kind: ChangePeerType, peer_id: PeerId) -> None:
            """`config` (the voters) and `learners` after one change."""
            if kind == ChangePeerType.ADD_VOTER:
                if peer_id not in config:
                    config[peer_id] = learners.pop(peer_id, False)
            elif kind == ChangePeerType.ADD_LEARNER:
                learners[peer_id] = config.pop(peer_id, learners.get(peer_id, False))
            else:
                config.pop(peer_id, None)
                learners.pop(peer_id, None)

        for step in steps:
            if isinstance(step, AddLearner):
                # Healthy by the time anything promotes it: the step is done
                # only once the learner has caught up.
                learners[step.peer.id] = True
            elif isinstance(step, PromoteLearner):
                change(voters, ChangePeerType.ADD_VOTER, step.peer.id)
            elif isinstance(step, RemovePeer):
                change(voters, ChangePeerType.REMOVE, step.peer.id)
            elif isinstance(step, ChangePeers):
                # Joint: the outgoing half is `voters` as they were, checked
                # already; the incoming half must hold a majority too.
                incoming = dict(voters)
                for c in step.changes:
                    change(incoming, c.change_type, c.peer.id)
                voters = incoming
            if 2 * sum(voters.values()) <= len(voters):
                return False
        return True

    def replacement(self, voter: Peer, new: Peer, *, add: bool) -> list[Step]:
        """The steps that put learner `new` (added first if `add`) in the
        place of `voter`: promote it and demote `voter` at once (joint, so
        the voter count never drops), then remove `voter`."""
        demoted = Peer(voter.id, voter.store_id, PeerRole.LEARNER)
        swap = ChangePeers(
            (
                ChangePeer(ChangePeerType.ADD_VOTER, Peer(new.id, new.store_id)),
                ChangePeer(ChangePeerType.ADD_LEARNER, demoted),
            )
        )
        return [AddLearner(new), swap, RemovePeer(demoted)] if add else [swap, RemovePeer(demoted)]

    def move_voter(self, voter: Peer, to: Peer | StoreInfo) -> list[Step] | None:
        """The steps that put a voter on `to` in the place of `voter`: a
        learner of the region to promote, or a store to add a new learner
        on first; after a transfer of the leadership away if `voter` leads.
        None if no healthy voter can take over or a step would leave the
        healthy voters no majority. A new peer's id is taken only for a plan
        that is returned."""
        steps: list[Step] = []
        leader = self.record.leader
        if leader is not None and voter.id == leader.id:
            new_leader = self.new_leader(voter)
            if new_leader is None:
                return None
            steps.append(TransferLeader(new_leader))
        add = isinstance(to, StoreInfo)
        new = Peer(PeerId(0), to.id, PeerRole.LEARNER) if isinstance(to, StoreInfo) else to
        if not self.keeps_quorum(steps + self.replacement(voter, new, add=add)):
            return None
        if isinstance(to, StoreInfo):
            new = self.new_peer(to)
        return steps + self.replacement(voter, new, add=add)

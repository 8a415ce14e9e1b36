"""Leader lease reads (store_node.lease): a leader whose heartbeat round was
acknowledged answers reads without another round until its lease ends; a
leader transfer, a conf change and a split suspend the lease, and a round
started before the suspension does not bring it back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kvproto.metapb import PeerId
from kvproto.raft_cmdpb import ChangePeerType
from kvproto.raft_serverpb import RaftMessage
from raft.types import MessageType
from store_node.config import CoreConfig
from store_node.lease import Lease, lease_duration
from store_node.peer import ReadPermit
from tests.factories import peer
from tests.store_node.harness import CoreCluster, bootstrapped

LEASE = 0.9
CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=2, lease_seconds=LEASE)


@pytest.fixture
def c(tmp_path: Path) -> CoreCluster:
    cluster = bootstrapped(tmp_path, [1, 2, 3], CONFIG)
    assert cluster.leader_of(1) is not None
    return cluster


class Wire:
    """Records the heartbeats the leader sends; holds back acknowledgements
    while `hold` is set."""

    def __init__(self, c: CoreCluster) -> None:
        self.heartbeats = 0
        self.hold = False
        self.held: list[RaftMessage] = []
        c.drop = self._see

    def _see(self, m: RaftMessage) -> bool:
        if m.message.type == MessageType.HEARTBEAT:
            self.heartbeats += 1
        if self.hold and m.message.type == MessageType.HEARTBEAT_RESPONSE:
            self.held.append(m)
            return True
        return False


def read(c: CoreCluster, token: str) -> object:
    """A read of region 1 at its leader; its answer, or None if it waits."""
    store = c.leader_of(1)
    assert store is not None
    assert c.cores[store[0]].read(token, c.context(1), [b"k"]) is None
    c.stabilize()
    reply = c.replies.pop(token, None)
    return None if reply is None else reply.value


def leader_lease(c: CoreCluster) -> Lease:
    found = c.leader_of(1)
    assert found is not None
    return c.cores[found[0]].peers[1].lease


def test_a_read_index_round_grants_the_lease_and_later_reads_need_no_round(
    c: CoreCluster,
) -> None:
    wire = Wire(c)
    c.now = 100.0
    assert isinstance(read(c, "first"), ReadPermit)
    assert wire.heartbeats == 2  # the ReadIndex round, to both followers
    assert leader_lease(c).until == pytest.approx(100.0 + LEASE)
    c.now = 100.3
    assert isinstance(read(c, "second"), ReadPermit)
    assert wire.heartbeats == 2
    store = c.leader_of(1)
    assert store is not None
    assert c.cores[store[0]].stats["lease_reads"] == 1


def test_within_the_lease_a_read_is_granted_at_admission_without_a_round(
    c: CoreCluster,
) -> None:
    wire = Wire(c)
    c.now = 100.0
    read(c, "first")
    store = c.leader_of(1)
    assert store is not None
    core = c.cores[store[0]]
    # The local reader: the permit comes back from `read` itself, nothing
    # is queued and no round is due for it.
    permit = core.read("local", c.context(1), [b"k"], now=100.3)
    assert isinstance(permit, ReadPermit)
    assert not core.has_work()
    assert core.stats["lease_reads"] == 1
    assert wire.heartbeats == 2
    # Outside the lease it is queued for a round instead.
    assert core.read("late", c.context(1), [b"k"], now=100.0 + LEASE) is None
    assert core.has_work()


def test_after_the_lease_ends_a_read_takes_a_round_again(c: CoreCluster) -> None:
    wire = Wire(c)
    c.now = 100.0
    read(c, "first")
    c.now = 100.0 + LEASE
    assert isinstance(read(c, "late"), ReadPermit)
    assert wire.heartbeats == 4


def test_a_read_in_the_second_half_of_the_lease_renews_it(c: CoreCluster) -> None:
    wire = Wire(c)
    c.now = 100.0
    read(c, "first")
    c.now = 100.6
    assert isinstance(read(c, "renewing"), ReadPermit)
    assert wire.heartbeats == 4  # answered from the lease, and a renewal round
    assert leader_lease(c).until == pytest.approx(100.6 + LEASE)


def test_without_a_lease_duration_every_read_takes_a_round(tmp_path: Path) -> None:
    c = bootstrapped(tmp_path, [1, 2, 3], CoreConfig(election_ticks=10, heartbeat_ticks=2))
    wire = Wire(c)
    for i in range(3):
        assert isinstance(read(c, f"r{i}"), ReadPermit)
    assert wire.heartbeats == 6


def test_a_leader_transfer_suspends_the_lease(c: CoreCluster) -> None:
    wire = Wire(c)
    c.now = 100.0
    read(c, "first")
    found = c.leader_of(1)
    assert found is not None
    store, meta = found
    target = next(p for p in c.cores[store].peers[1].region.peers if p.id != meta.id)
    # The transferee hears nothing: the transfer stays under way.
    c.drop = lambda m: m.to_peer.id == target.id
    c.cores[store].transfer_leader(1, PeerId(target.id))
    c.stabilize()
    assert c.cores[store].peers[1].node.transferring_leadership
    c.drop = wire._see
    c.now = 100.1
    # Not from the lease (a transfer's vote is granted despite it), neither
    # at admission nor in the round.
    assert c.cores[store].read("during", c.context(1), [b"k"], now=100.1) is None
    c.stabilize()
    assert c.cores[store].stats["lease_reads"] == 0
    assert not leader_lease(c).valid(100.1, c.cores[store].peers[1].node.term)


def test_a_round_started_before_a_conf_change_does_not_renew_the_lease(
    c: CoreCluster,
) -> None:
    wire = Wire(c)
    c.now = 100.0
    wire.hold = True
    found = c.leader_of(1)
    assert found is not None
    store = found[0]
    assert c.cores[store].read("r", c.context(1), [b"k"]) is None
    c.stabilize()
    assert wire.held, "the round's acknowledgements were held back"
    wire.hold = False
    c.change_peer(ChangePeerType.ADD_LEARNER, peer(99, 9))
    for m in wire.held:
        c.cores[m.to_peer.store_id].step_raft(m)
    c.stabilize()
    assert isinstance(c.replies.pop("r").value, ReadPermit)
    core = c.cores[store]
    assert not core.peers[1].lease.valid(100.1, core.peers[1].node.term)


def test_a_split_suspends_the_lease(c: CoreCluster) -> None:
    c.now = 100.0
    read(c, "first")
    found = c.leader_of(1)
    assert found is not None
    store = found[0]
    core = c.cores[store]
    region = core.peers[1].region
    ids = [(c.alloc(), tuple(c.alloc() for _ in region.peers))]
    assert core.propose_split("split", 1, region.epoch, (b"m",), ids) is None
    c.stabilize()
    assert not core.peers[1].lease.valid(100.1, core.peers[1].node.term)


# -- the lease itself ---------------------------------------------------------


def test_lease_is_renewed_only_by_rounds_of_its_generation() -> None:
    lease = Lease(1.0)
    generation = lease.generation
    lease.renew(10.0, 3, generation)
    assert lease.valid(10.5, 3)
    lease.suspend()
    lease.renew(10.2, 3, generation)
    assert not lease.valid(10.5, 3)
    lease.renew(10.4, 3, lease.generation)
    assert lease.valid(11.3, 3)
    assert not lease.valid(11.4, 3)


def test_lease_is_valid_only_in_its_term_and_never_moves_back() -> None:
    lease = Lease(1.0)
    lease.renew(10.0, 3, 0)
    assert not lease.valid(10.5, 4)
    lease.renew(9.0, 3, 0)  # an older round answered late
    assert lease.until == 11.0
    lease.renew(9.0, 4, 0)  # a new term starts from its own rounds
    assert lease.valid(9.5, 4)
    assert not lease.valid(9.5, 3)


def test_lease_duration_is_the_minimum_election_timeout_less_the_margin() -> None:
    assert lease_duration(10, 0.1, 0.2) == pytest.approx(0.7)
    assert lease_duration(10, 0.01, 0.2) == 0.0
    assert Lease(0.0).until == -math.inf

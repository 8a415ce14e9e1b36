"""One test per rule of the Raft paper (Ongaro and Ousterhout, "In Search of
an Understandable Consensus Algorithm", §5), in the spirit of etcd's
raft_paper_test.go, written against the public driver (`RaftNode`).

PreVote and CheckQuorum are off here: they are extensions (thesis §9.6)
with their own scenario files; these tests check the rules of the paper.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable

import pytest

from raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RaftNode,
    Role,
)
from tests.raft.helpers import write_ready

MT = MessageType
ELECTION = 10


class BootStorage(MemoryStorage):
    """A MemoryStorage whose log starts at index 1 under a given config
    (MemoryStorage takes its config from a snapshot, which cannot be at 0)."""

    def __init__(self, cs: ConfState) -> None:
        super().__init__()
        self._boot_cs = cs

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._boot_cs


def node(
    node_id: int,
    voters: Iterable[int] = (1, 2, 3),
    terms: Iterable[int] = (),
    term: int = 0,
    vote: int = 0,
    commit: int = 0,
    learners: Iterable[int] = (),
    seed: int | None = None,
) -> RaftNode:
    """A node whose log holds one entry per term in `terms`, from index 1."""
    storage = BootStorage(ConfState(voters=tuple(sorted(voters)), learners=tuple(learners)))
    ents = [Entry(term=t, index=i, data=b"") for i, t in enumerate(terms, start=1)]
    storage.append(ents)
    storage.set_hard_state(HardState(term=term, vote=vote, commit=commit))
    cfg = Config(
        id=node_id,
        election_ticks=ELECTION,
        heartbeat_ticks=1,
        pre_vote=False,
        check_quorum=False,
    )
    rng = random.Random(seed if seed is not None else node_id)
    return RaftNode(cfg, storage, rng)


def storage_of(n: RaftNode) -> MemoryStorage:
    s = n.raft.log.storage
    assert isinstance(s, MemoryStorage)
    return s


def handle(n: RaftNode) -> list[Message]:
    """Handle one Ready per the driver contract; return what it sends."""
    if not n.has_ready():
        return []
    rd = n.ready()
    write_ready(storage_of(n), rd)
    n.advance(rd)
    return list(rd.all_messages())


def sent(n: RaftNode, *types: MessageType) -> list[Message]:
    return [m for m in handle(n) if not types or m.type in types]


def tick_until_campaign(n: RaftNode) -> None:
    for _ in range(2 * ELECTION):
        n.tick()
        if n.role != Role.FOLLOWER:
            return
    raise AssertionError("no campaign within two election timeouts")


class Cluster:
    """Nodes joined by a lossless network, optionally with links cut."""

    def __init__(self, nodes: Iterable[RaftNode]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self.queue: list[Message] = []
        self.cut: set[int] = set()

    def step(self, m: Message) -> None:
        self.nodes[m.to].step(m)

    def stabilize(
        self,
        drop: Callable[[Message], bool] = lambda m: False,
        rewrite: Callable[[Message], Message] = lambda m: m,
    ) -> None:
        for _ in range(10_000):
            for n in self.nodes.values():
                self.queue.extend(handle(n))
            if not self.queue:
                return
            msgs, self.queue = self.queue, []
            for m in msgs:
                if m.to in self.nodes and not drop(m) and not ({m.to, m.from_} & self.cut):
                    self.step(rewrite(m))
        raise AssertionError("cluster did not settle")

    def elect(self, leader: int) -> None:
        self.nodes[leader].campaign()
        self.stabilize()
        assert self.nodes[leader].role == Role.LEADER


def restart(c: Cluster, node_id: int) -> None:
    """The node loses its volatile state and starts again from its storage."""
    old = c.nodes[node_id]
    c.nodes[node_id] = RaftNode(old.raft.cfg, storage_of(old), random.Random(node_id))


def strip_entries(pred: Callable[[Entry], bool]) -> Callable[[Message], Message]:
    """A network that cuts each append short before the first entry matching
    `pred` (as if those entries had not fitted into the message)."""

    def rewrite(m: Message) -> Message:
        keep: list[Entry] = []
        for e in m.entries:
            if pred(e):
                break
            keep.append(e)
        return dataclasses.replace(m, entries=tuple(keep))

    return rewrite


def elected(voters: Iterable[int] = (1, 2, 3), leader: int = 1) -> Cluster:
    ids = tuple(voters)
    c = Cluster(node(i, ids) for i in ids)
    c.elect(leader)
    return c


def committed_data(n: RaftNode) -> list[bytes]:
    s = storage_of(n)
    ents = s.entries(s.first_index(), n.commit_index + 1)
    return [e.data for e in ents if e.data]


# -- §5.1 Raft basics: terms ------------------------------------------------------


def test_a_node_starts_as_a_follower() -> None:
    n = node(1)
    assert n.role == Role.FOLLOWER
    assert n.term == 0


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_a_node_seeing_a_higher_term_adopts_it_and_becomes_follower(role: Role) -> None:
    n = node(1, voters=(1, 2, 3))
    if role != Role.FOLLOWER:
        n.campaign()  # candidate at term 1
    if role == Role.LEADER:
        n.step(Message(type=MT.VOTE_RESPONSE, to=1, from_=2, term=1))
    assert n.role == role
    n.step(Message(type=MT.APPEND, to=1, from_=2, term=5))
    assert n.role == Role.FOLLOWER
    assert n.term == 5
    assert n.leader_id == 2


def test_a_message_of_a_stale_term_is_ignored() -> None:
    n = node(1, terms=[2], term=2)
    n.step(Message(type=MT.APPEND, to=1, from_=2, term=1, log_term=2, index=1, commit=1))
    assert n.commit_index == 0
    assert n.term == 2
    # Without PreVote and CheckQuorum not even a hint of the newer term goes
    # back (with them, a bare response carrying the term does).
    assert sent(n) == []


# -- §5.2 Leader election -----------------------------------------------------------


def test_a_leader_sends_heartbeats_every_heartbeat_interval() -> None:
    c = elected()
    leader = c.nodes[1]
    handle(leader)
    leader.tick()
    beats = sent(leader, MT.HEARTBEAT)
    assert sorted(m.to for m in beats) == [2, 3]
    assert all(m.term == leader.term for m in beats)


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE])
def test_an_election_timeout_starts_an_election(role: Role) -> None:
    n = node(1, voters=(1, 2, 3))
    if role == Role.CANDIDATE:
        n.campaign()
        handle(n)
    term = n.term
    for _ in range(2 * ELECTION):  # a randomized timeout is below 2 * ELECTION
        n.tick()
        if n.term != term:
            break
    assert n.role == Role.CANDIDATE
    assert n.term == term + 1
    assert n.hard_state().vote == 1
    votes = sent(n, MT.VOTE)
    assert sorted(m.to for m in votes) == [2, 3]
    assert all(m.term == term + 1 for m in votes)


@pytest.mark.parametrize(
    ("size", "grants", "rejects", "role"),
    [
        (1, [], [], Role.LEADER),
        (3, [2, 3], [], Role.LEADER),
        (3, [2], [], Role.LEADER),
        (5, [2, 3, 4, 5], [], Role.LEADER),
        (5, [2, 3], [], Role.LEADER),
        (5, [2], [], Role.CANDIDATE),
        (5, [2], [3, 4], Role.CANDIDATE),  # 2 of 5 each way: still open
        (5, [2], [3, 4, 5], Role.FOLLOWER),
        (3, [], [2, 3], Role.FOLLOWER),
    ],
)
def test_a_candidate_wins_with_a_majority_and_loses_without_one(
    size: int, grants: list[int], rejects: list[int], role: Role
) -> None:
    voters = tuple(range(1, size + 1))
    n = node(1, voters=voters)
    n.campaign()
    handle(n)
    for v in grants:
        n.step(Message(type=MT.VOTE_RESPONSE, to=1, from_=v, term=1))
    for v in rejects:
        n.step(Message(type=MT.VOTE_RESPONSE, to=1, from_=v, term=1, reject=True))
    assert n.role == role
    assert n.term == 1


@pytest.mark.parametrize(
    ("vote", "candidate", "granted"),
    [(0, 2, True), (0, 3, True), (2, 2, True), (3, 3, True), (2, 3, False), (3, 2, False)],
)
def test_a_voter_grants_at_most_one_vote_per_term(vote: int, candidate: int, granted: bool) -> None:
    n = node(1, term=1, vote=vote)
    n.step(Message(type=MT.VOTE, to=1, from_=candidate, term=1))
    (resp,) = sent(n, MT.VOTE_RESPONSE)
    assert resp.reject == (not granted)
    assert n.hard_state().vote == (candidate if granted else vote)


@pytest.mark.parametrize("term", [1, 2])
def test_a_candidate_hearing_from_a_leader_of_its_term_or_newer_steps_down(term: int) -> None:
    n = node(1)
    n.campaign()  # term 1
    handle(n)
    n.step(Message(type=MT.APPEND, to=1, from_=2, term=term))
    assert n.role == Role.FOLLOWER
    assert n.term == term
    assert n.leader_id == 2


def test_election_timeouts_are_randomized_within_one_to_two_timeouts() -> None:
    seen = set()
    for seed in range(50):
        n = node(1, seed=seed)
        ticks = 0
        while n.role == Role.FOLLOWER:
            n.tick()
            ticks += 1
        assert ELECTION <= ticks < 2 * ELECTION
        seen.add(ticks)
    assert len(seen) > 1


# -- §5.3 Log replication -------------------------------------------------------------


def test_a_leader_appends_a_proposal_and_sends_it_to_every_follower() -> None:
    c = elected()
    leader = c.nodes[1]
    index = leader.propose(b"x")
    assert index == leader.last_index == 2
    apps = sent(leader, MT.APPEND)
    assert sorted(m.to for m in apps) == [2, 3]
    for m in apps:
        assert (m.index, m.log_term) == (1, 1)  # the entry before the new one
        assert [(e.term, e.index, e.data) for e in m.entries] == [(1, 2, b"x")]
        assert m.commit == 1


def test_a_leader_commits_an_entry_once_a_majority_stored_it() -> None:
    c = elected()
    leader = c.nodes[1]
    leader.propose(b"x")
    c.stabilize(drop=lambda m: m.to == 3 or m.from_ == 3)
    assert leader.commit_index == 2
    assert committed_data(leader) == [b"x"]


@pytest.mark.parametrize(
    ("size", "acks", "committed"),
    [(1, [], True), (3, [], False), (3, [2], True), (5, [2], False), (5, [2, 3], True)],
)
def test_a_leader_counts_replicas_including_its_own_log(
    size: int, acks: list[int], committed: bool
) -> None:
    voters = tuple(range(1, size + 1))
    c = elected(voters)
    leader = c.nodes[1]
    index = leader.propose(b"x")
    handle(leader)  # the leader's own write
    for v in acks:
        leader.step(Message(type=MT.APPEND_RESPONSE, to=1, from_=v, term=leader.term, index=index))
    assert (leader.commit_index >= index) == committed


def test_committing_an_entry_commits_every_entry_before_it() -> None:
    # 1 is elected over a log of older-term entries; committing its own empty
    # entry commits them too (nothing of an older term is committed alone).
    c = Cluster([node(1, terms=[1, 1, 2], term=2), node(2, terms=[1], term=2), node(3, term=2)])
    c.elect(1)
    assert c.nodes[1].commit_index == 4
    assert c.nodes[2].commit_index == 4
    assert storage_of(c.nodes[3]).last_index() == 4


def test_a_follower_applies_entries_the_leader_reports_committed() -> None:
    c = elected()
    c.nodes[1].propose(b"x")
    c.nodes[1].propose(b"y")
    c.stabilize()
    for i in (2, 3):
        assert committed_data(c.nodes[i]) == [b"x", b"y"]
        assert c.nodes[i].applied_index == 3


@pytest.mark.parametrize(
    ("prev_term", "prev_index", "accepted", "hint"),
    [
        (0, 0, True, 0),  # the empty prefix always matches
        (1, 1, True, 0),
        (2, 2, True, 0),
        (1, 2, False, 1),  # the term at 2 differs: hint 1, the last with term <= 1
        (3, 3, False, 2),  # beyond our log: hint our last index
    ],
)
def test_a_follower_rejects_an_append_whose_previous_entry_does_not_match(
    prev_term: int, prev_index: int, accepted: bool, hint: int
) -> None:
    n = node(1, terms=[1, 2], term=2)
    n.step(Message(type=MT.APPEND, to=1, from_=2, term=2, log_term=prev_term, index=prev_index))
    (resp,) = sent(n, MT.APPEND_RESPONSE)
    assert resp.reject == (not accepted)
    if not accepted:
        assert resp.index == prev_index
        assert resp.reject_hint == hint


@pytest.mark.parametrize(
    ("prev", "entries", "result"),
    [
        ((2, 2), [(3, 3)], [1, 2, 3]),  # appended after a match
        ((1, 1), [(3, 2), (4, 3)], [1, 3, 4]),  # conflicting entry replaced
        ((0, 0), [(1, 1)], [1, 2]),  # already present: nothing changes
        ((0, 0), [(1, 1), (2, 2), (3, 3)], [1, 2, 3]),
    ],
)
def test_a_follower_replaces_conflicting_entries_and_keeps_matching_ones(
    prev: tuple[int, int], entries: list[tuple[int, int]], result: list[int]
) -> None:
    n = node(1, terms=[1, 2], term=3)
    ents = tuple(Entry(term=t, index=i) for t, i in entries)
    n.step(
        Message(
            type=MT.APPEND, to=1, from_=2, term=3, log_term=prev[0], index=prev[1], entries=ents
        )
    )
    handle(n)
    s = storage_of(n)
    assert [e.term for e in s.entries(1, s.last_index() + 1)] == result


# Figure 7 of the paper: the leader of term 8 and six possible followers.
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("follower", sorted(FIG7_FOLLOWERS))
def test_a_leader_brings_any_follower_log_of_figure_7_in_line_with_its_own(follower: str) -> None:
    lead = node(1, terms=FIG7_LEADER, term=7, commit=0)
    fterms = FIG7_FOLLOWERS[follower]
    foll = node(2, terms=fterms, term=max(fterms))
    c = Cluster([lead, foll, node(3)])
    c.cut = {3}
    lead.campaign()  # term 8
    handle(lead)
    # 3 (cut off) votes for 1; 2 may or may not (d has a newer log).
    lead.step(Message(type=MT.VOTE_RESPONSE, to=1, from_=3, term=8))
    assert lead.role == Role.LEADER
    c.stabilize()
    ls, fs = storage_of(lead), storage_of(foll)
    assert [e.term for e in fs.entries(1, fs.last_index() + 1)] == [*FIG7_LEADER, 8]
    assert [e.term for e in ls.entries(1, ls.last_index() + 1)] == [*FIG7_LEADER, 8]
    assert foll.commit_index == lead.commit_index == 11


# -- §5.4.1 Election restriction --------------------------------------------------


@pytest.mark.parametrize(
    ("cand_last_term", "cand_last_index", "granted"),
    [
        (2, 2, True),  # same last term, same length
        (2, 3, True),  # same last term, longer
        (3, 1, True),  # newer last term, shorter
        (2, 1, False),  # same last term, shorter
        (1, 5, False),  # older last term, longer
    ],
)
def test_a_voter_denies_a_candidate_whose_log_is_less_up_to_date(
    cand_last_term: int, cand_last_index: int, granted: bool
) -> None:
    n = node(1, terms=[1, 2], term=2)
    n.step(
        Message(type=MT.VOTE, to=1, from_=2, term=3, log_term=cand_last_term, index=cand_last_index)
    )
    (resp,) = sent(n, MT.VOTE_RESPONSE)
    assert resp.reject == (not granted)


# -- §5.4.2 Committing entries from previous terms ------------------------------------


def test_a_leader_never_commits_an_older_term_entry_by_counting_replicas() -> None:
    # Leader of term 3 with entries of terms 1 and 2 that a majority holds.
    lead = node(1, terms=[1, 2], term=2)
    lead.campaign()  # term 3
    handle(lead)
    lead.step(Message(type=MT.VOTE_RESPONSE, to=1, from_=2, term=3))
    assert lead.role == Role.LEADER
    handle(lead)  # persists the empty entry 3/3
    lead.step(Message(type=MT.APPEND_RESPONSE, to=1, from_=2, term=3, index=2))
    assert lead.commit_index == 0  # 2 is on a majority but of term 2
    lead.step(Message(type=MT.APPEND_RESPONSE, to=1, from_=2, term=3, index=3))
    assert lead.commit_index == 3  # its own term's entry commits, and all before


def test_figure_8_an_older_term_entry_on_a_majority_is_not_committed_and_may_be_overwritten() -> (
    None
):
    c = Cluster(node(i, voters=(1, 2, 3, 4, 5)) for i in range(1, 6))
    c.elect(1)  # term 1; its empty entry 1/1 is committed everywhere
    # (a) S1 replicates a, at 1/2, to S2 only.
    c.cut = {3, 4, 5}
    c.nodes[1].propose(b"a")
    c.stabilize()
    assert c.nodes[1].commit_index == 1
    # (b) S1 crashes. S5 is elected for term 2 by S3 and S4, appends 2/2 (its
    # empty entry) and b at 2/3, and crashes before sending them.
    c.cut = {1, 2}
    c.nodes[5].campaign()
    c.stabilize(drop=lambda m: m.from_ == 5 and m.type == MT.APPEND)
    assert c.nodes[5].role == Role.LEADER and c.nodes[5].term == 2
    c.nodes[5].propose(b"b")
    handle(c.nodes[5])
    c.queue.clear()
    restart(c, 5)
    restart(c, 1)
    # (c) S1 restarts and is elected for term 3 by S2 and S3 (its first try,
    # for term 2, fails: S3 voted for S5 then). It brings S3 up to date, but
    # its own entry 3/3 reaches nobody: 1/2 is stored on S1, S2 and S3, a
    # majority, and S1 knows it. It is of term 1, so S1 does not commit it.
    c.cut = {4, 5}
    no_term_3 = strip_entries(lambda e: e.term == 3)
    c.nodes[1].campaign()
    c.stabilize(rewrite=no_term_3)
    c.nodes[1].campaign()
    c.stabilize(rewrite=no_term_3)
    s1 = c.nodes[1]
    assert s1.role == Role.LEADER and s1.term == 3
    assert [s1.raft.trk.progress[i].match for i in (1, 2, 3)] == [3, 2, 2]
    assert s1.commit_index == 1
    # (d) S1 crashes again. S5 is elected for term 4 by S2, S3 and S4 (its
    # last term, 2, beats their 1) and overwrites 1/2 everywhere: had S1
    # committed a, a committed entry would now be lost.
    c.cut = {1}
    c.nodes[5].campaign()
    c.stabilize()
    c.nodes[5].campaign()
    c.stabilize()
    assert c.nodes[5].role == Role.LEADER and c.nodes[5].term == 4
    for i in (2, 3, 4, 5):
        assert committed_data(c.nodes[i]) == [b"b"]
        assert storage_of(c.nodes[i]).term(2) == 2


# -- §5.5 Follower and candidate crashes ----------------------------------------------


def test_a_leader_retries_appends_to_a_crashed_follower_and_appends_are_idempotent() -> None:
    c = elected()
    c.nodes[1].propose(b"x")
    c.stabilize(drop=lambda m: m.to == 3)  # 3 is down: it misses x
    # 3 restarts from its storage; the leader's next heartbeat finds it behind.
    restart(c, 3)
    c.nodes[1].tick()
    c.stabilize()
    assert committed_data(c.nodes[3]) == [b"x"]
    # The same append delivered twice changes nothing.
    s3 = storage_of(c.nodes[3])
    before = s3.entries(1, s3.last_index() + 1)
    dup = Message(
        type=MT.APPEND,
        to=3,
        from_=1,
        term=c.nodes[1].term,
        log_term=1,
        index=1,
        entries=tuple(before[1:]),
        commit=2,
    )
    c.nodes[3].step(dup)
    c.nodes[3].step(dup)
    (r1, r2) = sent(c.nodes[3], MT.APPEND_RESPONSE)
    assert not r1.reject and not r2.reject and r1.index == r2.index == 2
    assert s3.entries(1, s3.last_index() + 1) == before

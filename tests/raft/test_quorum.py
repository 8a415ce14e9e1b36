"""Quorum arithmetic (raft.quorum) against a deliberately simple model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from raft.quorum import INFINITE_INDEX, JointConfig, MajorityConfig, VoteResult

ids = st.frozensets(st.integers(1, 7), max_size=7)
acks = st.dictionaries(st.integers(1, 9), st.integers(0, 20), max_size=9)
votes = st.dictionaries(st.integers(1, 9), st.booleans(), max_size=9)


def model_committed(voters: frozenset[int], acked: dict[int, int]) -> int:
    """The largest index that a majority of `voters` acknowledged."""
    if not voters:
        return INFINITE_INDEX
    need = len(voters) // 2 + 1
    candidates = {0} | {acked.get(v, 0) for v in voters}
    return max(i for i in candidates if sum(acked.get(v, 0) >= i for v in voters) >= need)


def model_vote(voters: frozenset[int], vs: dict[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    need = len(voters) // 2 + 1
    yes = sum(1 for v in voters if vs.get(v) is True)
    undecided = sum(1 for v in voters if v not in vs)
    if yes >= need:
        return VoteResult.WON
    if yes + undecided >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


@given(ids, acks)
def test_the_majority_commit_index_is_the_largest_index_a_majority_acknowledged(
    voters: frozenset[int], acked: dict[int, int]
) -> None:
    assert MajorityConfig(voters).committed_index(acked) == model_committed(voters, acked)


@given(ids, ids, acks)
def test_a_joint_config_commits_what_both_majorities_committed(
    incoming: frozenset[int], outgoing: frozenset[int], acked: dict[int, int]
) -> None:
    joint = JointConfig(MajorityConfig(incoming), MajorityConfig(outgoing))
    expected = min(model_committed(incoming, acked), model_committed(outgoing, acked))
    assert joint.committed_index(acked) == expected


@given(ids, votes)
def test_a_majority_vote_is_won_lost_or_pending_as_counted(
    voters: frozenset[int], vs: dict[int, bool]
) -> None:
    assert MajorityConfig(voters).vote_result(vs) == model_vote(voters, vs)


@given(ids, ids, votes)
def test_a_joint_vote_needs_both_majorities(
    incoming: frozenset[int], outgoing: frozenset[int], vs: dict[int, bool]
) -> None:
    r1, r2 = model_vote(incoming, vs), model_vote(outgoing, vs)
    if VoteResult.LOST in (r1, r2):
        expected = VoteResult.LOST
    elif r1 == r2 == VoteResult.WON:
        expected = VoteResult.WON
    else:
        expected = VoteResult.PENDING
    joint = JointConfig(MajorityConfig(incoming), MajorityConfig(outgoing))
    assert joint.vote_result(vs) == expected


@given(ids, acks, votes)
def test_a_joint_config_with_an_empty_half_behaves_like_the_other_half(
    voters: frozenset[int], acked: dict[int, int], vs: dict[int, bool]
) -> None:
    single = MajorityConfig(voters)
    joint = JointConfig(single, MajorityConfig())
    assert not joint.is_joint
    assert joint.committed_index(acked) == single.committed_index(acked)
    assert joint.vote_result(vs) == single.vote_result(vs)


def test_commit_index_examples() -> None:
    three = MajorityConfig.of([1, 2, 3])
    assert three.committed_index({1: 5, 2: 3, 3: 1}) == 3
    assert three.committed_index({1: 5}) == 0  # missing voters acknowledged nothing
    assert three.committed_index({1: 5, 2: 5, 4: 9}) == 5  # 4 is not a voter
    four = MajorityConfig.of([1, 2, 3, 4])
    assert four.committed_index({1: 9, 2: 8, 3: 2, 4: 1}) == 2  # needs 3 of 4
    joint = JointConfig(MajorityConfig.of([1, 2, 4]), three)
    assert joint.committed_index({1: 7, 4: 7, 2: 1, 3: 1}) == 1  # old half lags


def test_vote_examples() -> None:
    three = MajorityConfig.of([1, 2, 3])
    assert three.vote_result({1: True}) == VoteResult.PENDING
    assert three.vote_result({1: True, 2: True}) == VoteResult.WON
    assert three.vote_result({1: True, 2: False, 3: False}) == VoteResult.LOST
    assert three.vote_result({1: False, 2: False}) == VoteResult.LOST
    assert MajorityConfig().vote_result({}) == VoteResult.WON

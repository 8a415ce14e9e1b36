"""Membership changes (raft.confchange): simple versus joint changes, refused
changes, and restoring a configuration from a ConfState."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft import ConfChangeError, ConfChangeSingle, ConfChangeType, ConfState
from raft.confchange import check_invariants, enter_joint, leave_joint, restore, simple
from raft.tracker import ProgressTracker

V, L, R = ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE_NODE
LAST = 10


def tracker(cs: ConfState) -> ProgressTracker:
    trk = ProgressTracker(8)
    trk.config, trk.progress = restore(cs, 8, 0, LAST)
    return trk


def ccs(spec: str) -> list[ConfChangeSingle]:
    """ "v4 l5 r2" -> the changes."""
    kinds = {"v": V, "l": L, "r": R}
    return [ConfChangeSingle(kinds[t[0]], int(t[1:])) for t in spec.split()]


def apply(trk: ProgressTracker, result: tuple[object, object]) -> ConfState:
    trk.config, trk.progress = result  # type: ignore[assignment]
    return trk.conf_state()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("v4", ConfState(voters=(1, 2, 3, 4))),
        ("l4", ConfState(voters=(1, 2, 3), learners=(4,))),
        ("r3", ConfState(voters=(1, 2))),
        ("l3", ConfState(voters=(1, 2), learners=(3,))),  # demotion of one voter
        ("l4 l5 v4", ConfState(voters=(1, 2, 3, 4), learners=(5,))),  # one voter touched
        ("r9", ConfState(voters=(1, 2, 3))),  # removing a non-member: no-op
    ],
)
def test_a_simple_change_touches_at_most_one_voter(spec: str, expected: ConfState) -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    assert apply(trk, simple(trk, LAST, ccs(spec))) == expected


def test_a_new_member_is_probed_from_the_last_index_and_counts_as_active() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    apply(trk, simple(trk, LAST, ccs("l4")))
    pr = trk.progress[4]
    assert (pr.match, pr.next, pr.is_learner, pr.recent_active) == (0, LAST, True, True)


def test_promoting_a_learner_keeps_its_progress() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3), learners=(4,)))
    trk.progress[4].maybe_update(9)
    apply(trk, simple(trk, LAST, ccs("v4")))
    assert trk.progress[4].match == 9 and not trk.progress[4].is_learner


@pytest.mark.parametrize(
    ("start", "spec", "error"),
    [
        (ConfState(voters=(1, 2, 3)), "v4 v5", "more than one voter"),
        (ConfState(voters=(1, 2, 3)), "r1 r2", "more than one voter"),
        (ConfState(voters=(1, 2, 3)), "v4 r3", "more than one voter"),
        (ConfState(voters=(1,)), "r1", "removed all voters"),
        (ConfState(voters=(1, 2), voters_outgoing=(1, 3)), "v4", "joint"),
    ],
)
def test_an_invalid_simple_change_is_refused_and_changes_nothing(
    start: ConfState, spec: str, error: str
) -> None:
    trk = tracker(start)
    before_cfg, before_prs = trk.config, dict(trk.progress)
    with pytest.raises(ConfChangeError, match=error):
        simple(trk, LAST, ccs(spec))
    assert trk.config is before_cfg and trk.progress == before_prs


def test_entering_a_joint_config_keeps_the_old_voters_as_the_outgoing_half() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    cs = apply(trk, enter_joint(trk, LAST, True, ccs("v4 r3")))
    assert cs == ConfState(voters=(1, 2, 4), voters_outgoing=(1, 2, 3), auto_leave=True)
    assert 3 in trk.progress  # still needed for the outgoing majority
    cs = apply(trk, leave_joint(trk, LAST))
    assert cs == ConfState(voters=(1, 2, 4))
    assert sorted(trk.progress) == [1, 2, 4]


def test_a_voter_demoted_in_a_joint_config_becomes_a_learner_on_leaving() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    cs = apply(trk, enter_joint(trk, LAST, False, ccs("l3 v4")))
    assert cs == ConfState(voters=(1, 2, 4), voters_outgoing=(1, 2, 3), learners_next=(3,))
    assert not trk.progress[3].is_learner  # still votes in the outgoing half
    cs = apply(trk, leave_joint(trk, LAST))
    assert cs == ConfState(voters=(1, 2, 4), learners=(3,))
    assert trk.progress[3].is_learner


@pytest.mark.parametrize(
    ("start", "error"),
    [
        (ConfState(voters=(1, 2), voters_outgoing=(1, 3)), "already joint"),
        (ConfState(), "zero-voter"),
    ],
)
def test_entering_a_joint_config_is_refused_when_joint_or_empty(
    start: ConfState, error: str
) -> None:
    trk = tracker(start)
    with pytest.raises(ConfChangeError, match=error):
        enter_joint(trk, LAST, True, ccs("v4"))


def test_leaving_a_joint_config_is_refused_when_not_joint() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    with pytest.raises(ConfChangeError, match="non-joint"):
        leave_joint(trk, LAST)


def test_a_joint_change_removing_every_new_voter_is_refused() -> None:
    trk = tracker(ConfState(voters=(1, 2)))
    with pytest.raises(ConfChangeError, match="removed all voters"):
        enter_joint(trk, LAST, True, ccs("r1 r2"))


@pytest.mark.parametrize(
    "cs",
    [
        ConfState(),
        ConfState(voters=(1,)),
        ConfState(voters=(1, 2, 3), learners=(4, 5)),
        ConfState(voters=(1, 2, 4), voters_outgoing=(1, 2, 3), auto_leave=True),
        ConfState(voters=(1, 2, 4), voters_outgoing=(1, 2, 3), learners_next=(3,)),
        ConfState(voters=(4,), voters_outgoing=(1, 2, 3), learners=(5,), learners_next=(1,)),
    ],
)
def test_a_config_restored_from_its_conf_state_is_the_same_config(cs: ConfState) -> None:
    cfg, prs = restore(cs, 8, 0, LAST)
    assert cfg.conf_state() == cs
    check_invariants(cfg, prs)
    assert sorted(prs) == list(cs.all_ids())


def test_restoring_an_inconsistent_conf_state_is_refused() -> None:
    with pytest.raises(ConfChangeError):
        restore(ConfState(voters=(1,), learners_next=(2,)), 8, 0, LAST)
    with pytest.raises(ConfChangeError):
        restore(ConfState(learners=(2,)), 8, 0, LAST)
    with pytest.raises(AssertionError):
        restore(ConfState(voters=(1, 2), learners=(2,)), 8, 0, LAST)


# -- property: any sequence of accepted changes keeps the invariants ------------------

change = st.tuples(st.sampled_from([V, L, R]), st.integers(1, 6)).map(
    lambda t: ConfChangeSingle(t[0], t[1])
)
no_changes: list[ConfChangeSingle] = []
step: st.SearchStrategy[tuple[str, list[ConfChangeSingle]]] = st.one_of(
    st.tuples(st.just("simple"), st.lists(change, min_size=1, max_size=2)),
    st.tuples(st.just("joint"), st.lists(change, min_size=1, max_size=4)),
    st.tuples(st.just("leave"), st.just(no_changes)),
)


@given(st.lists(step, max_size=12))
def test_every_accepted_change_keeps_the_invariants_and_survives_a_restore(
    steps: list[tuple[str, list[ConfChangeSingle]]],
) -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    for kind, changes in steps:
        before = trk.conf_state()
        try:
            if kind == "simple":
                result = simple(trk, LAST, changes)
            elif kind == "joint":
                result = enter_joint(trk, LAST, False, changes)
            else:
                result = leave_joint(trk, LAST)
        except ConfChangeError:
            assert trk.conf_state() == before
            continue
        cs = apply(trk, result)
        check_invariants(trk.config, trk.progress)
        assert cs.voters, "a config always keeps a voter"
        assert sorted(trk.progress) == list(cs.all_ids())
        if kind == "simple":
            assert len(set(before.voters) ^ set(cs.voters)) <= 1
        cfg, _ = restore(cs, 8, 0, LAST)
        assert cfg.conf_state() == cs

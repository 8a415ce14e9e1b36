"""The region-epoch rules: one test per rule, and the table pinned."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvproto import epoch
from kvproto.epoch import (
    ADMIN_CMD_EPOCH_RULES,
    INITIAL_EPOCH,
    NORMAL_REQUEST_RULE,
    AdminCmdType,
    EpochRule,
    bumped,
    check_request_epoch,
    is_newer,
    is_stale,
    loses_to_overlap,
)
from kvproto.metapb import RegionEpoch
from tests.factories import region

E = RegionEpoch
REGION = region(1, conf_ver=5, version=7, stores=())


def test_the_rule_table_is_exactly_the_pinned_one() -> None:
    # If this fails, read the comment above ADMIN_CMD_EPOCH_RULES: rows are
    # never changed, a new behaviour gets a new command type.
    assert dict(ADMIN_CMD_EPOCH_RULES) == {
        AdminCmdType.CHANGE_PEER: EpochRule(False, True, False, True),
        AdminCmdType.BATCH_SPLIT: EpochRule(True, True, True, False),
        AdminCmdType.TRANSFER_LEADER: EpochRule(True, True, False, False),
        AdminCmdType.COMPACT_LOG: EpochRule(False, False, False, False),
        AdminCmdType.PREPARE_MERGE: EpochRule(True, True, True, True),
        AdminCmdType.COMMIT_MERGE: EpochRule(True, True, True, False),
        AdminCmdType.ROLLBACK_MERGE: EpochRule(True, True, True, False),
        AdminCmdType.COMPUTE_HASH: EpochRule(False, False, False, False),
        AdminCmdType.VERIFY_HASH: EpochRule(False, False, False, False),
    }
    assert EpochRule(True, False, False, False) == NORMAL_REQUEST_RULE
    assert {int(c) for c in AdminCmdType} == set(range(1, 10))


def test_every_admin_command_has_a_rule() -> None:
    assert set(ADMIN_CMD_EPOCH_RULES) == set(AdminCmdType)


def test_normal_requests_check_version_only() -> None:
    assert check_request_epoch(E(5, 7), REGION, None)
    assert check_request_epoch(E(1, 7), REGION, None)  # a conf change does not matter
    assert not check_request_epoch(E(5, 6), REGION, None)  # split since
    assert not check_request_epoch(E(5, 8), REGION, None)  # ahead of this replica


def test_change_peer_checks_conf_ver_only() -> None:
    assert check_request_epoch(E(5, 1), REGION, AdminCmdType.CHANGE_PEER)
    assert not check_request_epoch(E(4, 7), REGION, AdminCmdType.CHANGE_PEER)
    assert not check_request_epoch(E(6, 7), REGION, AdminCmdType.CHANGE_PEER)


@pytest.mark.parametrize(
    "cmd", [AdminCmdType.BATCH_SPLIT, AdminCmdType.TRANSFER_LEADER, AdminCmdType.PREPARE_MERGE]
)
def test_split_transfer_and_merge_check_both_counters(cmd: AdminCmdType) -> None:
    assert check_request_epoch(E(5, 7), REGION, cmd)
    assert not check_request_epoch(E(4, 7), REGION, cmd)
    assert not check_request_epoch(E(5, 6), REGION, cmd)


def test_compact_log_checks_nothing() -> None:
    assert check_request_epoch(E(0, 0), REGION, AdminCmdType.COMPACT_LOG)


def test_bumps_follow_the_table() -> None:
    assert bumped(E(5, 7), AdminCmdType.CHANGE_PEER) == E(6, 7)
    assert bumped(E(5, 7), AdminCmdType.BATCH_SPLIT) == E(5, 8)
    assert bumped(E(5, 7), AdminCmdType.TRANSFER_LEADER) == E(5, 7)
    assert bumped(E(5, 7), AdminCmdType.COMPACT_LOG) == E(5, 7)
    assert bumped(E(5, 7), AdminCmdType.PREPARE_MERGE) == E(6, 8)
    assert bumped(E(5, 7), AdminCmdType.COMMIT_MERGE) == E(5, 8)


def test_batch_split_into_n_plus_one_regions_moves_version_by_n() -> None:
    assert bumped(E(5, 7), AdminCmdType.BATCH_SPLIT, count=3) == E(5, 10)
    with pytest.raises(ValueError, match="count must be >= 1"):
        bumped(E(5, 7), AdminCmdType.BATCH_SPLIT, count=0)


def test_stale_means_behind_on_either_counter() -> None:
    assert is_stale(E(4, 7), E(5, 7))
    assert is_stale(E(5, 6), E(5, 7))
    assert is_stale(E(9, 6), E(5, 7))
    assert not is_stale(E(5, 7), E(5, 7))
    assert not is_stale(E(6, 8), E(5, 7))


def test_newer_means_not_behind_and_ahead_on_one() -> None:
    assert is_newer(E(6, 7), E(5, 7))
    assert is_newer(E(5, 8), E(5, 7))
    assert not is_newer(E(5, 7), E(5, 7))
    assert not is_newer(E(6, 6), E(5, 7))  # incomparable: neither wins
    assert not is_newer(E(5, 7), E(6, 6))


def test_a_report_loses_to_an_overlapping_region_only_on_version() -> None:
    assert loses_to_overlap(E(9, 3), E(1, 4))
    assert not loses_to_overlap(E(1, 4), E(9, 4))


def test_initial_epoch() -> None:
    assert E(conf_ver=1, version=1) == INITIAL_EPOCH
    assert epoch.rule_for(None) is NORMAL_REQUEST_RULE


epochs = st.builds(E, st.integers(0, 20), st.integers(0, 20))


@given(epochs, st.sampled_from(list(AdminCmdType)), st.integers(1, 5))
def test_applying_a_command_never_makes_the_epoch_stale(
    e: RegionEpoch, cmd: AdminCmdType, count: int
) -> None:
    after = bumped(e, cmd, count)
    assert not is_stale(after, e)
    rule = ADMIN_CMD_EPOCH_RULES[cmd]
    assert is_newer(after, e) == (rule.bump_version or rule.bump_conf_ver)


@given(epochs, epochs)
def test_newer_is_antisymmetric_and_implies_the_other_is_stale(
    a: RegionEpoch, b: RegionEpoch
) -> None:
    assert not (is_newer(a, b) and is_newer(b, a))
    if is_newer(a, b):
        assert is_stale(b, a)

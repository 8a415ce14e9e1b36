"""The region-epoch rules, in one place for the store, the PD and the client.

A region epoch has two counters: `version` grows when the key range changes
(split, merge), `conf_ver` when the membership changes. A request carries the
epoch its sender believes in; a store checks it before proposing and again
before applying, and refuses a mismatch with `EpochNotMatch`.

Pure functions of values: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Final

from kvproto.metapb import Region, RegionEpoch

# The epoch of the first region of a cluster (TiKV starts both at 1 too).
INITIAL_EPOCH: Final = RegionEpoch(conf_ver=1, version=1)


class AdminCmdType(IntEnum):
    """Admin commands proposed through a region's Raft log.

    On the wire and in the log: values are never reused or renumbered.
    """

    CHANGE_PEER = 1
    BATCH_SPLIT = 2
    TRANSFER_LEADER = 3
    COMPACT_LOG = 4
    # Region merge is not built yet; its rules are fixed now with the others
    # so that they never have to change once it is.
    PREPARE_MERGE = 5
    COMMIT_MERGE = 6
    ROLLBACK_MERGE = 7
    COMPUTE_HASH = 8
    VERIFY_HASH = 9


@dataclass(frozen=True, slots=True)
class EpochRule:
    """Which counters a command checks before it runs, and bumps when applied."""

    check_version: bool
    check_conf_ver: bool
    bump_version: bool
    bump_conf_ver: bool


# WARNING: the rules below MUST NOT CHANGE. Every replica re-applies the same
# log with them, and the "is this proposal still valid" checks made by peers
# of different code versions depend on them agreeing; changing one silently
# corrupts regions on upgrade. To change a behaviour, add a NEW command type
# with its own rule and stop proposing the old one; never edit or delete a
# row. (This is TiKV's AdminCmdEpochState table, row for row.)
#
# Why each row is what it is:
# * CHANGE_PEER checks conf_ver only: a membership change computed from a
#   stale peer list must not apply; the range does not matter to it.
# * BATCH_SPLIT checks both: the new regions copy the peer list, so a split
#   planned against a stale membership would create peers on wrong stores.
# * TRANSFER_LEADER checks both: the target peer must still be a member and
#   the leader the client meant to move must still own the same range.
# * COMPACT_LOG is local bookkeeping that any epoch can run.
# * COMPUTE_HASH and VERIFY_HASH check nothing: every replica applies them at
#   the same index, so each hashes the region as it is there, whatever the
#   epoch when the check was proposed.
ADMIN_CMD_EPOCH_RULES: Final = MappingProxyType(
    {
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
)

# Normal reads and writes (WARNING: MUST NOT CHANGE either) check `version`
# only: a key's region changes with the range, not with the membership, so a
# conf change must not make every client in flight refresh its cache.
NORMAL_REQUEST_RULE: Final = EpochRule(True, False, False, False)


def rule_for(cmd: AdminCmdType | None) -> EpochRule:
    """The rule of an admin command, or of a normal request for None."""
    return NORMAL_REQUEST_RULE if cmd is None else ADMIN_CMD_EPOCH_RULES[cmd]


def check_request_epoch(
    request_epoch: RegionEpoch, region: Region, cmd: AdminCmdType | None
) -> bool:
    """Whether a request carrying `request_epoch` may run on `region`.

    Each counter the rule checks must be EQUAL to the region's, not merely
    not behind: a request ahead of this replica (the client saw a split this
    follower has not applied yet) must not read a stale view either.
    """
    rule = rule_for(cmd)
    current = region.epoch
    if rule.check_version and request_epoch.version != current.version:
        return False
    return not (rule.check_conf_ver and request_epoch.conf_ver != current.conf_ver)


def bumped(epoch: RegionEpoch, cmd: AdminCmdType, count: int = 1) -> RegionEpoch:
    """The epoch after applying `cmd`.

    `count` is how far each bumped counter moves: a BATCH_SPLIT into n + 1
    regions moves `version` by n (TiKV does the same), so a batch split
    ends where n single splits would, and regions from either path compare
    correctly in the PD. Every region the split produces takes that epoch.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rule = ADMIN_CMD_EPOCH_RULES[cmd]
    return RegionEpoch(
        conf_ver=epoch.conf_ver + (count if rule.bump_conf_ver else 0),
        version=epoch.version + (count if rule.bump_version else 0),
    )


def is_stale(epoch: RegionEpoch, current: RegionEpoch) -> bool:
    """Whether `epoch` is behind `current` on either counter (so whatever
    carries it describes an older state of the region)."""
    return epoch.version < current.version or epoch.conf_ver < current.conf_ver


def is_newer(a: RegionEpoch, b: RegionEpoch) -> bool:
    """Whether `a` is ahead of `b`: not behind on either counter and ahead on
    at least one. The PD's "newest epoch wins" rule for two reports of the
    same region: a report replaces the stored one iff it is not stale."""
    return not is_stale(a, b) and a != b


def loses_to_overlap(epoch: RegionEpoch, overlapping: RegionEpoch) -> bool:
    """Whether a report of one region is stale against a DIFFERENT region
    whose range overlaps it: only `version` orders ranges, so the report
    loses iff its version is behind (the PD then ignores it)."""
    return epoch.version < overlapping.version

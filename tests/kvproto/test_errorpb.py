"""Region errors describe themselves in one line and are all wire values."""

from __future__ import annotations

import typing

from kvproto import codec
from kvproto.errorpb import (
    DiskFull,
    EpochNotMatch,
    KeyNotInRegion,
    NotLeader,
    RegionError,
    RegionNotFound,
    ServerIsBusy,
    StaleCommand,
    StoreNotMatch,
    UndeterminedResult,
)
from kvproto.metapb import RegionId, StoreId
from tests.factories import peer, region


def test_each_region_error_describes_itself_in_one_line() -> None:
    cases = {
        NotLeader(RegionId(1), peer(4, 2)): "region 1: not leader (try peer 4 on store 2)",
        NotLeader(RegionId(1)): "region 1: not leader (leader unknown)",
        EpochNotMatch(
            (region(2, b"a", version=5, stores=()),)
        ): "epoch not match (current: 2@v5/c1)",
        EpochNotMatch(): "epoch not match (current: none)",
        RegionNotFound(RegionId(3)): "region 3 not found on this store",
        KeyNotInRegion(b"z", RegionId(2), b"a", b"m"): "key b'z' not in region 2 [b'a', b'm')",
        KeyNotInRegion(b"", RegionId(2), b"", b""): "key '' not in region 2 ['', +inf)",
        ServerIsBusy("apply queue full", 50): "server is busy: apply queue full (retry in 50 ms)",
        StaleCommand(): "stale command",
        UndeterminedResult(): "result undetermined: the command may have been applied",
        DiskFull("1MiB free"): "disk full (1MiB free): writes refused",
        DiskFull(): "disk full: writes refused",
        StoreNotMatch(StoreId(1), StoreId(2)): "store not match: request for store 1, "
        "this is store 2",
    }
    for error, text in cases.items():
        assert error.describe() == text
        assert str(error) == text
        assert "\n" not in text


def test_every_region_error_is_registered_in_the_errorpb_block() -> None:
    tags = {codec.tag_of(cls) for cls in typing.get_args(RegionError)}
    assert len(tags) == len(typing.get_args(RegionError))
    assert all(40 <= t < 60 for t in tags)

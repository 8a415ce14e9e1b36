"""`shardkv ctl region check` and `region checks` against a live PD whose
stores are fakes (tests/placement_driver/fake_stores.py): the fakes report
the digests the test sets for each store when the PD orders a check.
(Against real stores: tests/cluster/test_consistency.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from kvproto.epoch import AdminCmdType, bumped
from kvproto.metapb import RegionId
from shardkv.__main__ import main
from tests.client.test_ctl import TIMEOUT, Ctl, columns
from tests.factories import peer
from tests.placement_driver.fake_stores import admin_cluster

OTHER = b"\x22" * 16


@pytest.fixture
async def ctl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Ctl]:
    """As test_ctl's: a PD with four fake stores."""
    async with admin_cluster(tmp_path / "pd") as (pd, fake):
        yield Ctl(pd, fake, capsys)


async def three_replicas(ctl: Ctl) -> int:
    """The first region, with voters on the first three stores."""
    fake = ctl.fake
    rid = min(fake.regions)
    fr = fake.regions[RegionId(rid)]
    region = fr.region
    for s in fake.stores[1:3]:
        region = region.with_peer(peer(rid * 10 + s, s))
    fr.region = region.with_epoch(bumped(region.epoch, AdminCmdType.CHANGE_PEER, 2))
    await fake.heartbeat(rid)
    return rid


async def test_region_check_waits_for_every_replica_and_prints_the_verdict(ctl: Ctl) -> None:
    fake = ctl.fake
    s1, s2, s3, _ = fake.stores
    with trio.fail_after(TIMEOUT):
        rid = await three_replicas(ctl)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.run)

            head, header, *rows = await ctl.ok("region", "check", str(rid))
            assert head.startswith(f"region {rid}: consistency check ")
            assert head.endswith(": match: every replica holds the same data")
            assert columns(header) == ["STORE", "DIGEST"]
            assert [columns(r) for r in rows] == [[str(s), "11" * 16] for s in (s1, s2, s3)]

            fake.digests[s3] = OTHER
            assert await ctl("region", "check", str(rid)) == 1
            head, _, *rows = ctl.out.splitlines()
            assert head.endswith(f"MISMATCH: store {s3} differ"), head
            assert columns(rows[2]) == [str(s3), "22" * 16, "differs"]
            assert ctl.err == ""

            assert await ctl("--json", "region", "check", str(rid)) == 1
            doc = json.loads(ctl.out)
            assert (doc["state"], doc["differing"], doc["missing"]) == ("mismatch", [s3], [])

            # A replica that never answers: the verdict as it stands at --wait.
            fake.silent.add(s2)
            del fake.digests[s3]
            assert await ctl("region", "check", str(rid), "--wait", "1") == 1
            head = ctl.out.splitlines()[0]
            assert head.endswith(f"pending, alike so far; no answer yet from store {s2}"), head

            header, *rows = await ctl.ok("region", "checks")
            assert columns(header)[:6] == [
                "REGION",
                "CHECK",
                "INDEX",
                "STATE",
                "DIFFERING",
                "MISSING",
            ]
            assert [columns(r)[3:6] for r in rows] == [["pending", "-", str(s2)]]
            none = await ctl.ok("region", "checks", "--state", "mismatch")
            assert none[1:] == ["(none)"]
            nursery.cancel_scope.cancel()


async def test_region_check_refusals_are_one_error_line(ctl: Ctl) -> None:
    with trio.fail_after(TIMEOUT):
        assert await ctl.fails("region", "check", "99") == "region 99 not found"


@pytest.mark.parametrize(
    "args",
    [
        ["region", "check"],
        ["region", "check", "0"],
        ["region", "check", "1", "--wait", "-1"],
        ["region", "checks", "--state", "odd"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ctl", "--pd-http", "http://127.0.0.1:1", *args])
    assert info.value.code == 2
    assert "usage: shardkv ctl" in capsys.readouterr().err

"""`shardkv ctl` against a live PD: an in-process `PdServer` on an
ephemeral 127.0.0.1 port whose stores are fakes (`FakeStores`: heartbeats
that carry out the steps they are answered with). `shardkv ctl` is
blocking (urllib), so each run goes to a worker thread while the PD keeps
serving in the trio loop.

The scheduler commands also run against a small fake of the scheduler
API's contract (tests/client/test_ctl_schedulers.py).

Rules: loopback only, port 0; every test runs under `trio.fail_after`;
tests await conditions (`FakeStores.wait_until`), never sleep.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from client.ctl import DEFAULT_PD_HTTP, PD_HTTP_ENV
from kvproto.metapb import PeerRole, StoreState
from placement_driver.server import PdServer
from shardkv.__main__ import main
from tests.placement_driver.fake_stores import FakeStores, admin_cluster

TIMEOUT = 30


@dataclass(slots=True)
class Ctl:
    """`shardkv ctl` at one PD, run in a thread; `out`/`err` hold what the
    last run printed."""

    pd: PdServer
    fake: FakeStores
    capsys: pytest.CaptureFixture[str]
    token_file: Path | None = None
    out: str = ""
    err: str = ""

    async def __call__(self, *args: str) -> int:
        argv = ["ctl", "--pd-http", self.pd.addresses.http_url, "--timeout", "10"]
        if self.token_file is not None:
            argv += ["--token-file", str(self.token_file)]
        self.capsys.readouterr()
        code: int = await trio.to_thread.run_sync(main, [*argv, *args])
        self.out, self.err = self.capsys.readouterr()
        return code

    async def json(self, *args: str) -> Any:
        assert await self("--json", *args) == 0, self.err
        return json.loads(self.out)

    async def ok(self, *args: str) -> list[str]:
        """Run it, expecting success; the lines printed."""
        assert await self(*args) == 0, self.err
        assert self.err == ""
        return self.out.splitlines()

    async def fails(self, *args: str) -> str:
        """Run it, expecting exit status 1; the one error line."""
        assert await self(*args) == 1, self.out
        assert self.out == "" and self.err.count("\n") == 1, self.err
        assert self.err.startswith("error: ")
        return self.err.removeprefix("error: ").rstrip("\n")


@pytest.fixture
async def ctl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Ctl]:
    """A PD with four fake stores; the first region has one voter, on the
    first store."""
    async with admin_cluster(tmp_path / "pd") as (pd, fake):
        yield Ctl(pd, fake, capsys)


def columns(line: str) -> list[str]:
    return line.split()


async def test_reads_print_tables_and_json(ctl: Ctl) -> None:
    pd, fake = ctl.pd, ctl.fake
    s1, s2, _, _ = fake.stores
    with trio.fail_after(TIMEOUT):
        # Two regions, split at "m".
        pd.split_region(min(fake.regions), (b"m",))
        await fake.heartbeat(min(fake.regions))
        left, right = sorted(fake.regions)

        assert await ctl.ok("cluster") == [
            f"cluster id:   {pd.cluster.cluster_id}",
            "bootstrapped: yes",
            "stores:       4",
            "regions:      2",
            "max replicas: 3",
        ]
        assert (await ctl.json("cluster"))["region_count"] == 2

        header, *rows = await ctl.ok("store", "list")
        assert columns(header)[:4] == ["ID", "ADDRESS", "STATE", "REGIONS"]
        assert [columns(r)[0] for r in rows] == [str(s) for s in fake.stores]
        assert all(columns(r)[2] == "Up" for r in rows)
        # Columns are aligned: every row's state starts under STATE.
        at = header.index("STATE")
        assert all(r[at:].startswith("Up") for r in rows)
        assert (await ctl.json("store", "list"))["count"] == 4
        shown = await ctl.ok("store", "show", str(s2))
        assert f"id:              {s2}" in shown and "state:           Up" in shown
        assert (await ctl.json("store", "show", str(s2)))["id"] == s2

        header, *rows = await ctl.ok("region", "list")
        assert columns(header) == ["ID", "START", "END", "EPOCH", "LEADER", "PEERS", "SIZE", "KEYS"]
        assert [columns(r)[:3] for r in rows] == [
            [str(left), "(min)", "m"],
            [str(right), "m", "(max)"],
        ]
        shown = await ctl.ok("region", "show", str(right))
        assert "range:          [m, (max))" in shown
        assert (await ctl.json("region", "key", "zebra"))["id"] == right
        assert (await ctl.ok("region", "key", "--hex", "00"))[0] == f"id:             {left}"
        assert len((await ctl.json("region", "store", str(s1)))["regions"]) == 2
        assert await ctl.ok("region", "store", str(s2)) == [
            "ID  START  END  EPOCH  LEADER  PEERS  SIZE  KEYS",
            "(none)",
        ]

        *listing, finished = await ctl.ok("operator", "list")
        assert listing == [
            "running:",
            "REGION  NAME  BY  STATUS  STEP  SECONDS",
            "(none)",
            "",
            "finished (oldest first):",
            "REGION  NAME          BY     STATUS   STEP  SECONDS",
        ]
        assert columns(finished)[:-1] == [str(left), "split-region", "admin", "success", "-"]
        assert (await ctl.json("operator", "list"))["count"] == 0
        config = await ctl.ok("config", "show")
        assert "max_replicas = 3" in config and 'max_store_down_time = "2h"' in config
        # --json may follow the command too.
        assert await ctl("config", "show", "--json") == 0
        assert json.loads(ctl.out)["max_replicas"] == 3


def voters(fake: FakeStores, region_id: int) -> set[int]:
    return {p.store_id for p in fake.region(region_id).peers if p.role == PeerRole.VOTER}


async def test_orders_start_operators_drain_stores_and_set_the_config(ctl: Ctl) -> None:
    pd, fake = ctl.pd, ctl.fake
    s1, s2, s3, s4 = fake.stores
    rid = min(fake.regions)
    controller = pd.operator_controller

    async def finished() -> None:
        await fake.wait_until(lambda: controller.get(rid) is None)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.run)
            lines = await ctl.ok("operator", "add", "add-peer", str(rid), str(s2))
            assert lines[0] == f"started add-peer on region {rid}:"
            assert lines[1].startswith("  1. add learner peer ") and lines[1].endswith(
                f"store {s2}"
            )
            assert lines[-1] == f"follow it: shardkv ctl operator show {rid}"
            await finished()
            shown = await ctl.ok("operator", "show", str(rid))
            assert "status:      success" in shown
            assert [line.split()[0] for line in shown[-2:]] == ["done", "done"]
            assert voters(fake, rid) == {s1, s2}

            op = await ctl.json("operator", "add", "transfer-leader", str(rid), str(s2))
            assert (op["desc"], op["status"]) == ("transfer-leader", "running")
            await finished()
            assert fake.regions[rid].leader_peer.store_id == s2

            await ctl.ok("operator", "add", "transfer-peer", str(rid), str(s1), str(s3))
            await finished()
            assert voters(fake, rid) == {s2, s3}
            await ctl.ok("operator", "add", "remove-peer", str(rid), str(s3))
            await finished()
            assert voters(fake, rid) == {s2}
            await ctl.ok("operator", "add", "split", str(rid), "g", "t")
            await finished()
            assert len(fake.regions) == 3
            await ctl.ok("operator", "add", "split", "--hex", str(rid), "01")
            await finished()
            assert len(fake.regions) == 4
            nursery.cancel_scope.cancel()

        # An operator that no heartbeat carries out is canceled by hand.
        await ctl.ok("operator", "add", "add-peer", str(rid), str(s4))
        assert await ctl.ok("operator", "remove", str(rid)) == [
            f"canceled the add-peer operator of region {rid}"
        ]
        assert controller.get(rid) is None

        # A store is drained, buried once empty (a patrol), then taken off the list.
        assert await ctl.ok("store", "offline", str(s4)) == [
            (
                f"store {s4} is Offline: its replicas move to other stores, and it becomes "
                f"Tombstone once empty (follow it: shardkv ctl store show {s4})"
            )
        ]
        assert pd.patrol().buried == (s4,)
        assert await ctl.ok("store", "remove-tombstone", str(s4)) == [
            f"store {s4} (127.0.0.1:{20160 + s4}) removed"  # tests.factories.store's address
        ]
        assert (await ctl.json("store", "list"))["count"] == 3
        assert pd.cluster.find_store(s4) is None
        assert await ctl.ok("store", "remove-tombstone") == ["no Tombstone store to remove"]

        assert await ctl.ok("config", "set", "max_store_down_time", "90m") == [
            'max_store_down_time = "90m"'
        ]
        assert (await ctl.json("config", "set", "max_replicas", "2"))["max_replicas"] == 2
        assert pd.cluster.config.max_replicas == 2
        assert pd.cluster.get_store(s1).state == StoreState.UP


async def test_failures_print_the_servers_reason_and_exit_1(ctl: Ctl) -> None:
    s1, s2, s3, _ = ctl.fake.stores
    rid = min(ctl.fake.regions)
    with trio.fail_after(TIMEOUT):
        assert await ctl.fails("region", "show", "999") == "region 999 not found"
        assert await ctl.fails("store", "show", "999") == "store 999 not found"
        assert await ctl.fails("operator", "remove", str(rid)) == (
            f"no operator is running for region {rid}"
        )
        reason = await ctl.fails("operator", "add", "add-peer", str(rid), str(s1))
        assert f"store {s1} already holds peer" in reason
        reason = await ctl.fails("config", "set", "max_replica", "5")
        assert reason.startswith("unknown config key 'max_replica'")
        reason = await ctl.fails("config", "set", "max_replicas", "many")
        assert reason.startswith("bad value for max_replicas")
        # The cluster's state refuses: three stores must stay Up.
        await ctl.ok("store", "offline", str(s3))
        assert "other stores are Up" in await ctl.fails("store", "offline", str(s2))
        assert "only a Tombstone store" in await ctl.fails("store", "remove-tombstone", str(s2))


def test_an_unreachable_pd_is_named_in_the_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["ctl", "--pd-http", "http://127.0.0.1:1", "store", "list"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: cannot reach the PD admin API at http://127.0.0.1:1 (connection refused); "
        "is the PD running there? Give its HTTP address with --pd-http or SHARDKV_PD_HTTP\n"
    )
    # The address comes from the environment when not given, and the scheme
    # may be left out.
    monkeypatch.setenv(PD_HTTP_ENV, "127.0.0.1:2")
    assert main(["ctl", "cluster"]) == 1
    assert "at http://127.0.0.1:2 (connection refused)" in capsys.readouterr().err
    monkeypatch.delenv(PD_HTTP_ENV)
    assert DEFAULT_PD_HTTP == "http://127.0.0.1:2380"  # `shardkv pd --http` default


@pytest.mark.parametrize(
    "args",
    [
        ["store", "show", "x"],
        ["store", "show", "0"],
        ["operator", "add", "transfer-peer", "1", "2"],
        ["operator", "add", "teleport", "1"],
        ["scheduler", "pause", "balance-leader", "-1"],
        ["region"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ctl", "--pd-http", "http://127.0.0.1:1", *args])
    assert info.value.code == 2
    assert "usage: shardkv ctl" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pd-http", "ftp://x:1", "cluster"], "--pd-http must be http://HOST:PORT"),
        (["--pd-http", "127.0.0.1", "cluster"], "--pd-http must be http://HOST:PORT"),
        (["region", "key", "--hex", "zz"], "KEY is not hex"),
    ],
)
def test_bad_arguments_found_after_parsing_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ctl", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardkv ctl: ") and message in err and err.count("\n") == 1


def test_every_level_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    for path in [
        [],
        ["store"],
        ["store", "offline"],
        ["region", "key"],
        ["operator"],
        ["operator", "add"],
        ["operator", "add", "split"],
        ["scheduler"],
        ["scheduler", "add"],
        ["config", "set"],
    ]:
        with pytest.raises(SystemExit) as info:
            main(["ctl", *path, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: shardkv ctl") and len(out.splitlines()) > 4, path


async def test_orders_need_the_token_file_of_a_pd_with_an_admin_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    with trio.fail_after(TIMEOUT):
        async with admin_cluster(tmp_path / "pd", 1, admin_token_file=token) as (pd, fake):
            ctl = Ctl(pd, fake, capsys)
            await ctl.ok("store", "list")  # reads are open
            reason = await ctl.fails("config", "set", "max_replicas", "1")
            assert reason.startswith("POST needs the admin token")
            assert "--token-file FILE" in reason
            wrong = tmp_path / "wrong"
            wrong.write_text("guess")
            ctl.token_file = wrong
            assert await ctl.fails("config", "set", "max_replicas", "1") == "wrong admin token"
            ctl.token_file = token
            assert await ctl.ok("config", "set", "max_replicas", "1") == ["max_replicas = 1"]
            ctl.token_file = tmp_path / "missing"
            assert (await ctl.fails("cluster")).startswith("cannot read the token file")


async def test_scheduler_commands_against_the_pd(ctl: Ctl) -> None:
    s2 = ctl.fake.stores[1]
    evict = f"evict-leader-{s2}"

    async def listed() -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in (await ctl.json("scheduler", "list"))["schedulers"]}

    with trio.fail_after(TIMEOUT):
        header, *rows = await ctl.ok("scheduler", "list")
        assert columns(header) == ["NAME", "STORE", "RESUMES", "IN", "OPERATORS"]
        assert [columns(r)[0] for r in rows] == ["balance-leader", "balance-region"]
        assert await ctl.ok("scheduler", "add", "evict-leader", "--store", str(s2)) == [
            f"added scheduler {evict}"
        ]
        assert (await listed())[evict]["store_id"] == s2
        assert await ctl.ok("scheduler", "pause", "balance-leader", "60") == [
            "paused scheduler balance-leader for 60 s"
        ]
        assert 0 < (await listed())["balance-leader"]["paused_until"] <= 60
        assert await ctl.ok("scheduler", "resume", "balance-leader") == [
            "resumed scheduler balance-leader"
        ]
        assert (await listed())["balance-leader"]["paused_until"] is None
        assert await ctl.ok("scheduler", "remove", evict) == [f"removed scheduler {evict}"]
        assert evict not in await listed()
        assert evict in await ctl.fails("scheduler", "remove", evict)
        assert "already exists" in await ctl.fails("scheduler", "add", "balance-leader")
        assert "unknown scheduler" in await ctl.fails("scheduler", "add", "shuffle-region")

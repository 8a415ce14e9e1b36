"""`shardkv kv`, run in-process against the fake cluster on loopback.

Rules: loopback only (port 0), every command bounded by `--timeout`, no
sleeps.
"""

from __future__ import annotations

import pytest

from shardkv.__main__ import main
from tests.client.fakes import tcp_cluster


def kv(pd: str, *args: str) -> int:
    return main(["kv", "--pd", pd, "--timeout", "10", *args])


def test_put_get_delete_scan_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    with tcp_cluster([b"m"]) as c:
        pd = c.pd_address
        assert kv(pd, "put", "greeting", "héllo") == 0
        assert kv(pd, "put", "zebra", "stripes") == 0
        assert kv(pd, "get", "greeting") == 0
        assert capsys.readouterr().out == "héllo\n"
        assert kv(pd, "scan") == 0
        assert capsys.readouterr().out == "greeting\théllo\nzebra\tstripes\n"
        assert kv(pd, "scan", "--start", "h", "--reverse", "--limit", "1") == 0
        assert capsys.readouterr().out == "zebra\tstripes\n"
        assert kv(pd, "scan", "--end", "h", "--keys-only") == 0
        assert capsys.readouterr().out == "greeting\n"
        assert kv(pd, "delete", "greeting") == 0
        assert kv(pd, "get", "greeting") == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == "shardkv kv: get greeting: not found\n"
        assert c.cluster.data == {b"zebra": b"stripes"}


def test_hex_in_and_out_and_undecodable_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    with tcp_cluster() as c:
        pd = c.pd_address
        assert main(["kv", "--pd", pd, "--hex", "put", "00ff", "c3a9"]) == 0
        assert c.cluster.data == {b"\x00\xff": b"\xc3\xa9"}
        assert main(["kv", "--pd", pd, "--hex", "get", "00ff"]) == 0
        assert capsys.readouterr().out == "c3a9\n"
        c.cluster.data[b"tab\tkey"] = b"\xff"
        assert kv(pd, "scan") == 0
        assert capsys.readouterr().out == "hex:00ff\té\nhex:746162096b6579\thex:ff\n"


def test_failures_print_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kv", "--pd", "127.0.0.1:1", "--timeout", "0.3", "get", "k"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("shardkv kv: get b'k': PD unavailable")
    with tcp_cluster() as c:
        assert kv(c.pd_address, "put", "k" * 100, "v") == 1
        assert "key_too_large" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--hex", "get", "zz"],
        ["get", ""],
        ["scan", "--limit", "0"],
        ["scan", "--start", "b", "--end", "a"],
        ["--timeout", "0", "get", "k"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kv", "--pd", "127.0.0.1:1", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardkv kv: ") and err.count("\n") == 1


def test_a_bad_pd_address_and_missing_arguments_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["kv", "--pd", "nowhere", "get", "k"]) == 2
    assert "bad address" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["kv", "get"])
    assert info.value.code == 2

"""The command lines LocalCluster gives its stores (no process started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardkv.local_cluster import LocalCluster


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_by_default_every_store_is_on_127_0_0_1_without_advertise(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, stores=2)
    for spec in cluster.store_specs:
        args = spec.child.args
        assert flag(args, "--listen") == spec.address
        assert spec.address.startswith("127.0.0.1:")
        assert spec.status_address.startswith("127.0.0.1:")
        assert "--advertise" not in args


def test_hosts_give_each_store_its_own_listen_advertise_and_status_host(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, stores=2, hosts=("127.0.0.2", "127.0.0.3"))
    assert cluster.pd_address.startswith("127.0.0.1:")
    for spec, host in zip(cluster.store_specs, ("127.0.0.2", "127.0.0.3"), strict=True):
        args = spec.child.args
        assert spec.address.startswith(host + ":")
        assert flag(args, "--listen") == flag(args, "--advertise") == spec.address
        assert flag(args, "--status") == spec.status_address
        assert spec.status_address.startswith(host + ":")
        assert flag(args, "--pd") == cluster.pd_address
        assert flag(args, "--source-host") == host  # its peers see it come from there
    # A changed listen address is advertised too (the playground keeps ports).
    spec = cluster.store_specs[0]
    spec.set_address("--listen", "127.0.0.2:20160")
    assert flag(spec.child.args, "--advertise") == "127.0.0.2:20160" == spec.address


def test_a_store_beyond_the_hosts_needs_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 stores need as many hosts"):
        LocalCluster(tmp_path, stores=3, hosts=("127.0.0.2", "127.0.0.3"))
    cluster = LocalCluster(tmp_path, stores=1, hosts=("127.0.0.2",))
    with pytest.raises(ValueError, match="no host for store 2"):
        cluster.add_store()
    spec = cluster.add_store("127.0.0.5")
    assert spec.address.startswith("127.0.0.5:")
    assert flag(spec.child.args, "--advertise") == spec.address

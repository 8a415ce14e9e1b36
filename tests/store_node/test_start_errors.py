"""A store that cannot start says why in one line (a start error, exit 1,
or a config error, exit 2): never a traceback, never a store that runs but
cannot be reached."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import trio

from placement_driver.testing import open_pd
from plumbing.config_file import ConfigError, load
from store_node import cli
from store_node.config import StoreConfig
from store_node.node import ListenAddressError
from store_node.replace import AddressTakenError
from tests.store_node.test_node import running_store, store_config


async def test_a_taken_listen_address_is_a_clear_start_error(tmp_path: Path) -> None:
    with trio.fail_after(30):
        taken = trio.socket.socket()
        with taken:
            await taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            async with open_pd(tmp_path / "pd") as pd:
                cfg = store_config(tmp_path, "s1", pd.addresses.rpc)
                cfg = dataclasses.replace(cfg, listen=f"127.0.0.1:{port}")
                with pytest.RaisesGroup(
                    pytest.RaisesExc(ListenAddressError, match=f"127.0.0.1:{port}.*in use"),
                    flatten_subgroups=True,
                ):
                    async with running_store(cfg):
                        pass


async def test_an_address_another_store_registered_is_refused_at_start(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with open_pd(tmp_path / "pd") as pd:
            first = store_config(tmp_path, "s1", pd.addresses.rpc)
            async with running_store(first) as (_, info):
                second = dataclasses.replace(
                    store_config(tmp_path, "s2", pd.addresses.rpc), advertise=info.address
                )
                with pytest.RaisesGroup(
                    pytest.RaisesExc(
                        AddressTakenError,
                        match=f"is store {info.store_id}'s .*--replace-store {info.store_id}",
                    ),
                    flatten_subgroups=True,
                ):
                    async with running_store(second):
                        pass


async def test_a_wiped_store_at_its_old_address_exits_1_saying_how_to_replace_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(30):
        async with open_pd(tmp_path / "pd") as pd:
            first = store_config(tmp_path, "s1", pd.addresses.rpc)
            async with running_store(first) as (_, info):
                pass
            shutil.rmtree(first.data_dir)
            assert await cli._serve(dataclasses.replace(first, listen=info.address)) == 1
    err = capsys.readouterr().err
    assert err == (
        f"shardkv store: address {info.address} is store {info.store_id}'s (up), and this "
        f"data directory holds no store. If store {info.store_id} lost its data, start this "
        f"store with --replace-store {info.store_id} to join in its place (store "
        f"{info.store_id} becomes a Tombstone and its replicas are re-created); otherwise "
        "give this store another address (--advertise)\n"
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:20160", "[::]:20160"])
def test_listening_on_every_interface_needs_an_advertised_address(listen: str) -> None:
    with pytest.raises(ConfigError, match="set advertise"):
        load(StoreConfig, overrides={"data_dir": "d", "pd": "127.0.0.1:1", "listen": listen})
    cfg = load(
        StoreConfig,
        overrides={"data_dir": "d", "pd": "127.0.0.1:1", "listen": listen, "advertise": "h:1"},
    )
    assert cfg.advertise == "h:1"

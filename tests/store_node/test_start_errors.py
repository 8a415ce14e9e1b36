"""A store that cannot start says why in one line (a start error, exit 1,
or a config error, exit 2): never a traceback, never a store that runs but
cannot be reached."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio

from placement_driver.testing import open_pd
from plumbing.config_file import ConfigError, load
from store_node.config import StoreConfig
from store_node.node import ListenAddressError, RegistrationRefusedError
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
                    pytest.RaisesExc(RegistrationRefusedError, match="duplicate_store_address"),
                    flatten_subgroups=True,
                ):
                    async with running_store(second):
                        pass


@pytest.mark.parametrize("listen", ["0.0.0.0:20160", "[::]:20160"])
def test_listening_on_every_interface_needs_an_advertised_address(listen: str) -> None:
    with pytest.raises(ConfigError, match="set advertise"):
        load(StoreConfig, overrides={"data_dir": "d", "pd": "127.0.0.1:1", "listen": listen})
    cfg = load(
        StoreConfig,
        overrides={"data_dir": "d", "pd": "127.0.0.1:1", "listen": listen, "advertise": "h:1"},
    )
    assert cfg.advertise == "h:1"

"""Test rules for tests/placement_driver (trio tests run in trio_mode):

* Network tests use loopback only (127.0.0.1, port 0) and run under a
  `trio.fail_after` bound.
* Anything timing-bound (store state transitions) runs under
  `autojump_clock`, and then talks to the PD over in-memory streams
  (`connect_in_memory`), never sockets: virtual time would jump while the
  kernel moves bytes.
* No test sleeps to wait for something it can await; `trio.sleep` under the
  MockClock is how a test lets virtual time pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio.testing

from kvproto.rpc import connect
from placement_driver.server import PdServer
from placement_driver.testing import open_pd
from tests.placement_driver.helpers import PdCaller


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # Jump to the next deadline as soon as every task is blocked.
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
async def pd(tmp_path: Path) -> AsyncIterator[PdServer]:
    """A running PD on a fresh data directory (ids in blocks of 10, so that
    tests cross block boundaries)."""
    async with open_pd(tmp_path / "pd", id_alloc_step=10, seed=7) as server:
        yield server


@pytest.fixture
async def caller(pd: PdServer) -> AsyncIterator[PdCaller]:
    """A PdCaller over TCP to `pd`."""
    async with connect(pd.addresses.rpc, connect_timeout=5) as conn:
        yield PdCaller(conn)

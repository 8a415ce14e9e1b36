"""Test rules for tests/client (trio tests run in trio_mode):

* Network tests use loopback only (127.0.0.1, port 0) and run under a
  `trio.fail_after` bound.
* Everything timing-bound (deadlines, retries, backoff, timeouts) runs on
  in-memory streams (`fakes.MemoryNet`) under `autojump_clock`, so virtual
  time passes instantly and deterministically; real sockets are never
  mixed with the autojump clock.
* No test sleeps to wait for something it can await.
* Randomness is seeded (`random.Random(seed)` into the client).

A test of the async client asks for the fixture `h`: a fake cluster and a
client of it, the whole test bounded by FAKE_CLUSTER_LIMIT; a mark says
what differs from the default cluster (one region on stores 1, 2, 3):

    @pytest.mark.cluster([b"g", b"p"], config=ClientConfig(timeout=3.0))
    async def test_it(autojump_clock: trio.testing.MockClock, h: Harness) -> None:

(pytest-trio takes the clock only from the test's own arguments, so the
test names `autojump_clock` itself.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from tests.client.fakes import Harness, fake_cluster

# Virtual seconds a test with the `h` fixture may take, setup and teardown
# included: a test that hangs fails with trio.TooSlowError.
FAKE_CLUSTER_LIMIT = 60


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster(split_keys=(), *, store_ids=None, config=None, seed=7): the fake cluster "
        "of the `h` fixture (tests/client/fakes/harness.py: fake_cluster)",
    )


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # Jump to the next deadline as soon as every task is blocked.
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The fake cluster the test's `cluster` mark describes, and a client of
    it; the test fails with trio.TooSlowError after FAKE_CLUSTER_LIMIT."""
    mark = request.node.get_closest_marker("cluster")
    args, kwargs = (mark.args, mark.kwargs) if mark is not None else ((), {})
    with trio.fail_after(FAKE_CLUSTER_LIMIT):
        async with fake_cluster(*args, **kwargs) as harness:
            yield harness

"""Test rules for tests/client (trio tests run in trio_mode):

* Network tests use loopback only (127.0.0.1, port 0) and run under a
  `trio.fail_after` bound.
* Everything timing-bound (deadlines, retries, backoff, timeouts) runs on
  in-memory streams (`fakes.MemoryNet`) under `autojump_clock`, so virtual
  time passes instantly and deterministically; real sockets are never
  mixed with the autojump clock.
* No test sleeps to wait for something it can await.
* Randomness is seeded (`random.Random(seed)` into the client).
"""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # Jump to the next deadline as soon as every task is blocked.
    return trio.testing.MockClock(autojump_threshold=0)

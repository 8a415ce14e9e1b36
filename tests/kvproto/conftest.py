"""Test rules for tests/kvproto (trio tests run in trio_mode):

* Network tests use loopback only (127.0.0.1, port 0) and run under a
  `trio.fail_after` bound.
* Anything timing-bound (timeouts, backoff) runs on in-memory streams under
  `autojump_clock`, so virtual time passes instantly and deterministically.
  (A real socket under an autojump clock would let virtual time jump while
  the kernel moves bytes, so the two are never mixed.)
* No test sleeps to wait for something it can await.
"""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # Jump to the next deadline as soon as every task is blocked.
    return trio.testing.MockClock(autojump_threshold=0)

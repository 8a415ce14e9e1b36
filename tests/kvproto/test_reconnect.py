"""ReconnectingConnection: lazy connect, jittered exponential backoff, fail
fast while backing off, reconnect after a loss.

In-memory streams under the autojump clock, with a seeded random.Random.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from kvproto.rpc import Echo, RpcConnectionLostError, RpcUnavailableError
from kvproto.rpc.reconnect import Backoff, ReconnectingConnection, open_reconnecting
from tests.kvproto.rpc_helpers import Hold, MemoryNetwork, Service


class FlakyNetwork(MemoryNetwork):
    """Refuses the first `failures` connection attempts, then connects."""

    def __init__(self, service: Service, nursery: trio.Nursery, failures: int) -> None:
        super().__init__(service.server(), nursery)
        self.failures = failures
        self.gate: trio.Event | None = None

    async def open_stream(self, address: str) -> trio.abc.Stream:
        if self.gate is not None:
            await self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            self.attempts += 1
            raise ConnectionRefusedError(111, "Connection refused")
        return await super().open_stream(address)


@given(
    failures=st.integers(1, 200),
    seed=st.integers(0, 2**32),
    initial=st.floats(0.001, 1),
    multiplier=st.floats(1, 4),
    max_delay=st.floats(0.001, 60),
    jitter=st.floats(0, 1),
)
def test_backoff_delay_stays_within_its_jitter_band(
    failures: int, seed: int, initial: float, multiplier: float, max_delay: float, jitter: float
) -> None:
    backoff = Backoff(initial, multiplier, max_delay, jitter)
    base = min(max_delay, initial * multiplier ** min(failures - 1, 64))
    delay = backoff.delay(failures, random.Random(seed))
    assert (1 - jitter) * base - 1e-12 <= delay <= base + 1e-12


def test_backoff_grows_exponentially_up_to_its_cap_without_jitter() -> None:
    backoff = Backoff(initial=0.1, multiplier=2, max_delay=1.0, jitter=0)
    rng = random.Random(0)
    delays = [backoff.delay(n, rng) for n in range(1, 8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert backoff.delay(10_000, rng) == 1.0


async def test_connects_lazily_on_the_first_call(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = FlakyNetwork(Service(), nursery, failures=0)
    conn = ReconnectingConnection("store-1", nursery, open_stream=network.opener)
    assert network.attempts == 0 and not conn.connected
    with trio.fail_after(60):
        assert await conn.call(Echo(b"hi")) == Echo(b"hi")
        assert await conn.call(Echo(b"again")) == Echo(b"again")
    assert network.attempts == 1 and conn.connected
    await conn.aclose()


async def test_failed_attempts_back_off_with_jitter_and_fail_fast_meanwhile(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = FlakyNetwork(Service(), nursery, failures=3)
    backoff = Backoff(initial=0.1, multiplier=2, max_delay=10, jitter=0.5)
    conn = ReconnectingConnection(
        "store-1", nursery, backoff=backoff, rng=random.Random(7), open_stream=network.opener
    )
    expected = random.Random(7)
    with trio.fail_after(60):
        for failures in (1, 2, 3):
            now = trio.current_time()
            with pytest.raises(RpcUnavailableError, match="refused"):
                await conn.call(Echo(b"x"))
            assert conn.failures == failures
            assert conn.retry_at - now == pytest.approx(backoff.delay(failures, expected))
            # Until then calls fail at once, without a connection attempt.
            attempts = network.attempts
            with pytest.raises(RpcUnavailableError, match="backing off"):
                await conn.call(Echo(b"x"))
            assert network.attempts == attempts
            assert trio.current_time() == now
            await trio.sleep_until(conn.retry_at)
        assert await conn.call(Echo(b"up")) == Echo(b"up")
    assert conn.failures == 0
    assert network.attempts == 4
    await conn.aclose()


async def test_reconnects_at_once_after_the_connection_is_lost(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    service = Service()
    network = FlakyNetwork(service, nursery, failures=0)
    with trio.fail_after(60):
        async with open_reconnecting("store-1", open_stream=network.opener) as conn:
            async with trio.open_nursery() as calls:

                async def cut_when_held() -> None:
                    await service.wait_running(1)
                    await network.server_streams[-1].aclose()

                calls.start_soon(cut_when_held)
                with pytest.raises(RpcConnectionLostError):
                    await conn.call(Hold(1))
            assert await conn.call(Echo(b"back")) == Echo(b"back")
    assert network.attempts == 2


async def test_concurrent_callers_share_one_connection_attempt(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = FlakyNetwork(Service(), nursery, failures=0)
    network.gate = trio.Event()
    conn = ReconnectingConnection("store-1", nursery, open_stream=network.opener)
    answers: list[object] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as calls:
            for i in range(5):

                async def call(i: int = i) -> None:
                    answers.append(await conn.call(Echo(b"%d" % i)))

                calls.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            network.gate.set()
    assert sorted(answers, key=repr) == [Echo(b"%d" % i) for i in range(5)]
    assert network.attempts == 1
    await conn.aclose()


async def test_caller_timeout_during_a_slow_connect_is_unavailable_without_backoff(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = FlakyNetwork(Service(), nursery, failures=0)
    network.gate = trio.Event()
    conn = ReconnectingConnection("store-1", nursery, open_stream=network.opener)
    with trio.fail_after(60):
        with pytest.raises(RpcUnavailableError, match="within the timeout"):
            await conn.call(Echo(b"x"), timeout=1)
        # The address is not to blame: no backoff, the next call connects.
        assert conn.failures == 0
        network.gate.set()
        assert await conn.call(Echo(b"y"), timeout=1) == Echo(b"y")
    await conn.aclose()


async def test_connect_timeout_counts_as_a_failed_attempt(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = FlakyNetwork(Service(), nursery, failures=0)
    network.gate = trio.Event()  # never set: connecting hangs
    conn = ReconnectingConnection("store-1", nursery, connect_timeout=2, open_stream=network.opener)
    with trio.fail_after(60), pytest.raises(RpcUnavailableError, match="within 2"):
        await conn.call(Echo(b"x"))
    assert conn.failures == 1


async def test_closed_connection_refuses_calls(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = FlakyNetwork(Service(), nursery, failures=0)
    conn = ReconnectingConnection("store-1", nursery, open_stream=network.opener)
    with trio.fail_after(60):
        await conn.send_oneway(Echo(b"x"))  # one-way types need no handler to be sent
        await conn.aclose()
        with pytest.raises(RpcUnavailableError, match="closed"):
            await conn.call(Echo(b"x"))
        with pytest.raises(RpcUnavailableError, match="closed"):
            await conn.send_oneway(Echo(b"x"))


async def test_exceptions_from_the_body_of_open_reconnecting_are_not_wrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60), pytest.raises(KeyError):
        async with open_reconnecting("store-1"):
            raise KeyError("mine")

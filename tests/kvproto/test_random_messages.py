"""The port fuzzers' seeded message generator makes valid messages of
every registered type (so its mutations start from frames the ports know)."""

from __future__ import annotations

import random

import pytest

from kvproto import codec
from kvproto.codec import dumps, loads
from tests.kvproto.random_messages import random_message  # registers every type


@pytest.mark.parametrize("cls", list(codec.registered_types().values()), ids=lambda c: c.__name__)
def test_random_messages_of_every_type_round_trip(cls: type) -> None:
    rng = random.Random(cls.__qualname__)
    made = [random_message(cls, rng) for _ in range(20)]
    values = [m for m in made if m is not None]
    assert values, f"no valid {cls.__qualname__} drawn"
    for value in values:
        assert loads(dumps(value)) == value

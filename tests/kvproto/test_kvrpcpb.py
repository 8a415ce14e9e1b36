"""The read modes on the wire (kvproto.kvrpcpb): their fields travel at the
end of the read requests and responses (defaults when not given), and the
codec refuses a consistency it does not know. Every registered type's round
trip, these fields included, is tests/kvproto/test_codec.py's."""

from __future__ import annotations

import cbor2
import pytest

from kvproto import kvrpcpb as kv
from kvproto.codec import DecodeError, dumps, loads
from tests.factories import region

REGION = region(1)
CTX = kv.Context(REGION.id, REGION.epoch, REGION.peers[0])

REQUESTS = [
    kv.RawGetRequest(CTX, b"k"),
    kv.RawBatchGetRequest(CTX, (b"a", b"b")),
    kv.RawScanRequest(CTX, b"a", b"z", 10),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: type(r).__name__)
def test_a_read_request_is_strong_unless_it_says_otherwise(req: object) -> None:
    assert req.consistency == kv.Consistency.STRONG  # type: ignore[attr-defined]
    assert req.max_staleness_ms == 0  # type: ignore[attr-defined]
    wire = cbor2.loads(dumps(req))
    # The two new fields travel last.
    assert wire[-2:] == [0, 0]


def test_the_read_mode_and_the_staleness_round_trip() -> None:
    req = kv.RawScanRequest(
        CTX, b"a", b"z", 10, consistency=kv.Consistency.STALE, max_staleness_ms=5000
    )
    back = loads(dumps(req))
    assert back == req and back.consistency is kv.Consistency.STALE
    for resp in (
        kv.RawGetResponse(value=b"v", staleness_ms=1234),
        kv.RawBatchGetResponse(pairs=((b"k", b"v"),), staleness_ms=7),
        kv.RawScanResponse(pairs=(), staleness_ms=1),
    ):
        assert loads(dumps(resp)) == resp


def test_an_unknown_consistency_is_refused_by_the_codec() -> None:
    wire = cbor2.loads(dumps(kv.RawGetRequest(CTX, b"k", kv.Consistency.FOLLOWER)))
    wire[-2] = 9
    with pytest.raises(DecodeError, match="Consistency"):
        loads(cbor2.dumps(wire))


def test_a_request_without_the_new_fields_is_refused() -> None:
    # Positional arrays of exact arity (kvproto.codec): no schema evolution,
    # so a sender and a receiver must both have the read-mode fields.
    wire = cbor2.loads(dumps(kv.RawGetRequest(CTX, b"k")))
    with pytest.raises(DecodeError, match="fields"):
        loads(cbor2.dumps(wire[:-2]))

"""Every cluster config value has a type and a range, checked before it is
stored, over RPC (SetConfig) and HTTP (POST /config) alike; a value stored
out of range (by an older PD) is refused key by key when the PD loads it.

Issue 15, finding 2: SetConfig took a `region_max_size` of 40 nines; every
store heartbeat answer then carried a CBOR bignum, which the stores refuse,
so every store's heartbeat failed until someone set the value back.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import typing

import pytest

from kvproto import codec, pdpb
from kvproto.pdpb import PdErrorCode
from placement_driver.cluster import Cluster
from placement_driver.config import CLUSTER_KEYS, ClusterConfig
from placement_driver.http_api import API_PREFIX, AdminApi
from placement_driver.service import PdService
from placement_driver.storage import MemoryMetaStorage
from tests.factories import peer, region, store

H = pdpb.RequestHeader()  # before bootstrap: no cluster id yet
FORTY_NINES = "9" * 40
HINTS = typing.get_type_hints(ClusterConfig)
FIELDS = {f.name: f for f in dataclasses.fields(ClusterConfig)}
NUMERIC_KEYS = [name for name in CLUSTER_KEYS if HINTS[name] in (int, float)]
INT_KEYS = [name for name in CLUSTER_KEYS if HINTS[name] is int]


def bootstrapped_service(storage: MemoryMetaStorage) -> PdService:
    service = PdService(Cluster(storage, 0.0), random.Random(1))
    service.handle(pdpb.BootstrapRequest(H, store(1), region(1, peers=(peer(100, 1),))), now=0.0)
    return service


def header(service: PdService) -> pdpb.RequestHeader:
    """A header naming the service's cluster, as every request after
    bootstrap must."""
    return pdpb.RequestHeader(service.cluster.cluster_id)


def heartbeat_answer(service: PdService) -> pdpb.StoreHeartbeatResponse:
    """The answer to store 1's heartbeat, as the store decodes it."""
    answer = service.handle(
        pdpb.StoreHeartbeatRequest(header(service), pdpb.StoreStats(store_id=1)), now=1.0
    )
    assert isinstance(answer, pdpb.StoreHeartbeatResponse)
    decoded = codec.loads(codec.dumps(answer), pdpb.StoreHeartbeatResponse)
    assert decoded == answer
    return decoded


@pytest.mark.parametrize("name", NUMERIC_KEYS)
def test_every_numeric_key_has_a_range_inside_64_bits(name: str) -> None:
    lo, hi = FIELDS[name].metadata["min"], FIELDS[name].metadata["max"]
    assert lo is not None and hi is not None, f"{name} needs a min and a max"
    assert -(2**63) <= lo <= hi < 2**63


def over_the_maximum(name: str) -> list[str]:
    hi = FIELDS[name].metadata["max"]
    values = [FORTY_NINES, str(2**64), "9" * 5000]
    if HINTS[name] is int:
        values.append(str(int(hi) + 1))
    return values


@pytest.mark.parametrize("name", NUMERIC_KEYS)
def test_set_config_over_rpc_refuses_a_value_out_of_range_and_stores_nothing(name: str) -> None:
    storage = MemoryMetaStorage()
    service = bootstrapped_service(storage)
    before, stored = service.cluster.config, dict(storage.meta.config)
    for value in over_the_maximum(name):
        answer = service.handle(
            pdpb.SetConfigRequest(header(service), (pdpb.ConfigItem(name, value),)), now=1.0
        )
        assert isinstance(answer, pdpb.SetConfigResponse)
        error = answer.header.error
        assert error is not None and error.code == PdErrorCode.INVALID_ARGUMENT, value[:50]
        assert name in error.message and len(error.message) < 300
    assert service.cluster.config == before
    assert storage.meta.config == stored
    assert heartbeat_answer(service).region_max_size == before.region_max_size


@pytest.mark.parametrize("name", NUMERIC_KEYS)
def test_post_config_over_http_refuses_a_value_out_of_range_and_stores_nothing(
    name: str,
) -> None:
    storage = MemoryMetaStorage()
    service = bootstrapped_service(storage)
    api = AdminApi(service.cluster, lambda: 1.0)
    before, stored = service.cluster.config, dict(storage.meta.config)
    for value in over_the_maximum(name):
        # (A JSON number of 5,000 digits is test_http_robustness's.)
        as_number = [f'{{"{name}": {value}}}'] if len(value) < 100 else []
        for body in [*as_number, f'{{"{name}": "{value}"}}']:
            status, document = api.respond("POST", f"{API_PREFIX}/config".encode(), body.encode())
            assert status == 400, (body[:60], document)
            assert len(document["error"]) < 300
    assert service.cluster.config == before
    assert storage.meta.config == stored


def test_the_answer_to_a_store_heartbeat_stays_decodable_after_a_refused_set() -> None:
    service = bootstrapped_service(MemoryMetaStorage())
    service.handle(
        pdpb.SetConfigRequest(header(service), (pdpb.ConfigItem("region_max_size", FORTY_NINES),)),
        now=1.0,
    )
    assert heartbeat_answer(service).region_max_size == 96 << 20


def test_values_in_range_are_still_taken() -> None:
    service = bootstrapped_service(MemoryMetaStorage())
    items = (
        pdpb.ConfigItem("region_max_size", "1TiB"),
        pdpb.ConfigItem("region_max_keys", str(2**40)),
        pdpb.ConfigItem("region_schedule_limit", str(2**20)),
    )
    answer = service.handle(pdpb.SetConfigRequest(header(service), items), now=1.0)
    assert isinstance(answer, pdpb.SetConfigResponse) and answer.header.error is None
    assert heartbeat_answer(service).region_max_keys == 2**40


def test_a_stored_value_out_of_range_is_refused_at_load_key_by_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = MemoryMetaStorage()
    bootstrapped_service(storage)
    # As an older PD left it: one key out of range, the others fine.
    storage.meta.config.update(
        region_max_size=FORTY_NINES, max_replicas="5", leader_schedule_limit=str(2**64)
    )
    with caplog.at_level(logging.ERROR):
        service = PdService(Cluster(storage, 0.0), random.Random(1))
    config = service.cluster.config
    assert config.region_max_size == ClusterConfig().region_max_size
    assert config.leader_schedule_limit == ClusterConfig().leader_schedule_limit
    assert config.max_replicas == 5  # the other stored keys are kept
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "region_max_size" in logged and "leader_schedule_limit" in logged
    assert "96MiB" in logged
    # What is stored is what runs now, so the next load is clean.
    assert storage.meta.config["region_max_size"] == "96MiB"
    assert heartbeat_answer(service).region_max_size == 96 << 20

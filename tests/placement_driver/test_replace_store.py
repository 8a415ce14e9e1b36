"""Replacing a store whose data was lost (`Cluster.replace_store`, the
ReplaceStore RPC): the refusals, the replacement, its persistence, and the
replica checker re-creating the lost store's peers. Pure core on in-memory
storage, explicit time (`MockCluster`), but for the LMDB round trip."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvproto import pdpb
from kvproto.metapb import StoreId, StoreState
from kvproto.pdpb import PdErrorCode
from placement_driver.cluster import Cluster
from placement_driver.errors import PdRequestError
from placement_driver.http_json import store_json
from placement_driver.regions import Flow
from placement_driver.service import PdService
from placement_driver.storage import LmdbMetaStorage
from tests.factories import peer, region, store
from tests.placement_driver.mock_cluster import DISCONNECT, MockCluster, TiB, voters

LOST = 3  # the store whose data was lost


def lost_store_cluster() -> tuple[MockCluster, int]:
    """Stores 1-3 with regions 1-4 on all three, store 3 silent for longer
    than store_disconnect_time (its process stopped, its disk lost); and
    the id a fresh store got from the allocator."""
    mc = MockCluster().store(1).store(2).store(LOST)
    for r in range(1, 5):
        mc.region(r, voters=(1, 2, LOST), leader=1 + r % 2)
    mc.tick(1.0)
    info = mc.cluster.get_store(LOST)
    assert info.stats is not None
    mc.cluster.store_heartbeat(info.stats, now=mc.now - DISCONNECT)
    mc.cluster.update_store_states(mc.now)
    (new_id,) = mc.cluster.alloc_ids(1)
    return mc, new_id


def at_lost_address(store_id: int) -> pdpb.Store:
    return store(store_id, address=store(LOST).address)


def refused(code: PdErrorCode, match: str) -> pytest.RaisesExc[PdRequestError]:
    return pytest.raises(PdRequestError, match=match, check=lambda e: e.code == code)


def test_a_replacement_tombstones_the_lost_store_and_frees_its_address() -> None:
    mc, new_id = lost_store_cluster()
    assert mc.cluster.get_store(LOST).state == StoreState.DISCONNECTED
    info = mc.cluster.replace_store(at_lost_address(new_id), LOST, mc.now)
    assert (info.id, info.address, info.state) == (new_id, store(LOST).address, StoreState.UP)
    assert mc.cluster.get_store(LOST).state == StoreState.TOMBSTONE
    assert mc.cluster.store_replacement(LOST) == (None, new_id)
    assert mc.cluster.store_replacement(new_id) == (LOST, None)
    # Its id stays refused; its address is the new store's.
    with refused(PdErrorCode.STORE_TOMBSTONE, "tombstone"):
        mc.cluster.put_store(store(LOST), mc.now)
    with refused(PdErrorCode.DUPLICATE_STORE_ADDRESS, f"used by store {new_id}"):
        mc.cluster.put_store(at_lost_address(mc.cluster.alloc_ids(1)[0]), mc.now)
    doc = store_json(info, mc.now, Flow(), mc.cluster.store_replacement(new_id))
    assert (doc["replaces"], doc["replaced_by"]) == (LOST, None)


def test_the_replica_checker_recreates_the_lost_peers_on_the_new_store() -> None:
    mc, new_id = lost_store_cluster()
    assert mc.patrol() == []  # three healthy enough voters, nowhere to go
    mc.cluster.replace_store(at_lost_address(new_id), LOST, mc.now)
    stats = pdpb.StoreStats(StoreId(new_id), capacity=TiB, available=TiB // 2)
    mc.cluster.store_heartbeat(stats, mc.now)
    mc.settle()
    for r in range(1, 5):
        assert voters(mc.region_of(r)) == [1, 2, new_id]
    assert mc.cluster.store_region_count(LOST) == 0


def test_a_repeated_replacement_is_accepted_and_changes_nothing() -> None:
    mc, new_id = lost_store_cluster()
    mc.cluster.replace_store(at_lost_address(new_id), LOST, mc.now)
    writes = mc.storage.writes
    again = mc.cluster.replace_store(at_lost_address(new_id), LOST, mc.now + 1)
    assert again.id == new_id and mc.storage.writes == writes


@pytest.mark.parametrize(
    ("setup", "code", "match"),
    [
        ("heartbeating", PdErrorCode.FAILED_PRECONDITION, "may be alive .*last heartbeat"),
        ("other address", PdErrorCode.INVALID_ARGUMENT, "is at 127.0.0.1:20163, not at"),
        ("unknown", PdErrorCode.STORE_NOT_FOUND, "store 77 is not known"),
        ("tombstone", PdErrorCode.FAILED_PRECONDITION, "already a Tombstone"),
        ("replaced", PdErrorCode.FAILED_PRECONDITION, "already replaced by store"),
        ("not new", PdErrorCode.INVALID_ARGUMENT, "store 2 is not a new store"),
        ("not allocated", PdErrorCode.INVALID_ARGUMENT, "not allocated"),
    ],
)
def test_a_refused_replacement_changes_nothing(setup: str, code: PdErrorCode, match: str) -> None:
    mc, new_id = lost_store_cluster()
    c = mc.cluster
    replaced, new = LOST, at_lost_address(new_id)
    if setup == "heartbeating":
        c.store_heartbeat(pdpb.StoreStats(StoreId(LOST)), mc.now - DISCONNECT + 0.5)
    elif setup == "other address":
        new = store(new_id, address="127.0.0.1:9999")
    elif setup == "unknown":
        replaced = 77
    elif setup == "tombstone":
        mc.store(4)
        c.set_store_state(LOST, StoreState.OFFLINE, mc.now)
        c.get_store(LOST).operator_state = StoreState.TOMBSTONE
        c.update_store_states(mc.now)
    elif setup == "replaced":
        c.replace_store(new, LOST, mc.now)
        new = at_lost_address(c.alloc_ids(1)[0])
    elif setup == "not new":
        new = at_lost_address(2)
    elif setup == "not allocated":
        new = at_lost_address(new_id + 1000)
    before = [(s.id, s.state, s.address) for s in c.stores()]
    writes = mc.storage.writes
    with refused(code, match):
        c.replace_store(new, replaced, mc.now)
    assert [(s.id, s.state, s.address) for s in c.stores()] == before
    assert mc.storage.writes == writes


def test_a_store_the_pd_has_not_heard_from_since_it_started_is_not_replaced_yet() -> None:
    """After a PD restart every store gets a full grace period: the PD
    cannot tell a live store from a dead one before it."""
    mc, new_id = lost_store_cluster()
    restarted = Cluster(mc.storage, now=500.0, config_overrides={"store_disconnect_time": 10})
    with refused(PdErrorCode.FAILED_PRECONDITION, "has not heard from it yet"):
        restarted.replace_store(at_lost_address(new_id), LOST, now=505.0)
    restarted.replace_store(at_lost_address(new_id), LOST, now=510.0)
    assert restarted.get_store(LOST).state == StoreState.TOMBSTONE


def test_the_replacement_survives_a_pd_restart(tmp_path: Path) -> None:
    overrides = {"store_disconnect_time": 10, "max_store_down_time": 60}
    with LmdbMetaStorage(tmp_path / "pd") as storage:
        c = Cluster(storage, 0.0, config_overrides=overrides)
        c.bootstrap(store(1), region(1, peers=(peer(100, 1),)), 4242, now=0.0)
        c.ids.skip_past(LOST)
        for s in (2, LOST):
            c.put_store(store(s), now=0.0)
        (new_id,) = c.alloc_ids(1)
        c.replace_store(at_lost_address(new_id), LOST, now=11.0)
    with LmdbMetaStorage(tmp_path / "pd") as storage:
        assert storage.load().replaced_stores == {LOST: new_id}
        c = Cluster(storage, 0.0)
        assert c.get_store(LOST).state == StoreState.TOMBSTONE
        assert c.get_store(new_id).address == store(LOST).address
        assert c.store_replacement(LOST) == (None, new_id)
        assert c.store_replacement(new_id) == (LOST, None)


def test_the_rpc_answers_a_refusal_in_the_header() -> None:
    mc, new_id = lost_store_cluster()
    service = PdService(mc.cluster, rng=random.Random(1))
    header = pdpb.RequestHeader(mc.cluster.cluster_id)
    new = at_lost_address(new_id)
    answer = service.handle(pdpb.ReplaceStoreRequest(header, new, StoreId(77)), mc.now)
    assert isinstance(answer, pdpb.ReplaceStoreResponse)
    assert answer.header.error is not None
    assert answer.header.error.code == PdErrorCode.STORE_NOT_FOUND
    answer = service.handle(pdpb.ReplaceStoreRequest(header, new, StoreId(LOST)), mc.now)
    assert answer == pdpb.ReplaceStoreResponse(pdpb.ResponseHeader(mc.cluster.cluster_id))

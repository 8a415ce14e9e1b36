"""The pure PD core (`Cluster`) on in-memory storage: no trio, explicit time."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvproto import pdpb
from kvproto.metapb import PeerId, Region, RegionId, StoreId, StoreState
from kvproto.pdpb import PdErrorCode, StoreStats
from placement_driver.cluster import Cluster
from placement_driver.config import ConfigError
from placement_driver.errors import PdRequestError
from placement_driver.regions import REPORTED_FIELDS, Flow
from placement_driver.storage import MemoryMetaStorage
from tests.factories import learner, peer, region, store

CLUSTER_ID = 4242
SHORT = {"store_disconnect_time": 10, "max_store_down_time": 60}
ONE = (peer(100, 1),)  # the peer of the region the cluster is bootstrapped with
THREE = (*ONE, peer(101, 2), peer(102, 3))


def new_cluster(storage: MemoryMetaStorage | None = None, now: float = 0.0) -> Cluster:
    return Cluster(storage or MemoryMetaStorage(), now, config_overrides=SHORT, id_alloc_step=10)


def bootstrapped(storage: MemoryMetaStorage | None = None, stores: int = 3) -> Cluster:
    """Stores 1..stores (ids skipped past by bootstrap), region 1 covering
    everything with peer 100 on store 1."""
    c = new_cluster(storage)
    c.bootstrap(store(1), region(1, peers=ONE), CLUSTER_ID, now=0.0)
    c.ids.skip_past(stores)
    for s in range(2, stores + 1):
        c.put_store(store(s), now=0.0)
    return c


H = pdpb.RequestHeader()
Request = pdpb.RegionHeartbeatRequest


def report(r: Region, leader: int | None = None, term: int = 1, **fields: int | float) -> Request:
    leader_peer = r.peers[0] if leader is None else r.find_peer(PeerId(leader))
    return Request(H, r, leader_peer, term=term, **fields)  # type: ignore[arg-type]


def refused(code: PdErrorCode) -> pytest.RaisesExc[PdRequestError]:
    return pytest.raises(PdRequestError, check=lambda e: e.code == code)


# -- bootstrap and ids -----------------------------------------------------------------


def test_bootstrap_is_accepted_once() -> None:
    c = new_cluster()
    assert not c.is_bootstrapped
    c.bootstrap(store(1), region(1, peers=ONE), CLUSTER_ID, now=0.0)
    assert c.cluster_id == CLUSTER_ID
    assert c.get_store(1).state == StoreState.UP
    record = c.get_region(b"anything")
    assert record is not None and record.region.id == 1 and record.leader is None
    with refused(PdErrorCode.ALREADY_BOOTSTRAPPED):
        c.bootstrap(store(2), region(2, peers=(peer(101, 2),)), 99, now=0.0)
    assert c.cluster_id == CLUSTER_ID


@pytest.mark.parametrize(
    ("first_store", "first_region", "message"),
    [
        (store(1), region(1, b"", b"m", peers=ONE), "whole key space"),
        (store(1), region(1, b"a", b"", peers=ONE), "whole key space"),
        (store(1), region(1, peers=(peer(100, 1), peer(101, 2))), "one peer"),
        (store(1), region(1, peers=(peer(100, 2),)), "not on store 1"),
        (store(1), region(0, peers=ONE), "region id must be > 0"),
        (store(0), region(1, peers=(peer(100, 0),)), "store id must be > 0"),
        (store(1, address="nowhere"), region(1, peers=ONE), "bad address"),
        (store(1), region(1, peers=(peer(0, 1),)), "peer and store ids must be > 0"),
    ],
)
def test_a_bad_bootstrap_is_refused_and_changes_nothing(
    first_store: object, first_region: Region, message: str
) -> None:
    storage = MemoryMetaStorage()
    c = new_cluster(storage)
    with pytest.raises(PdRequestError, match=message) as info:
        c.bootstrap(first_store, first_region, CLUSTER_ID, now=0.0)  # type: ignore[arg-type]
    assert info.value.code == PdErrorCode.INVALID_ARGUMENT
    assert not c.is_bootstrapped and storage.meta.cluster_id == 0


def test_a_learner_cannot_bootstrap_the_cluster() -> None:
    r = region(1, peers=(learner(100, 1),))
    with refused(PdErrorCode.INVALID_ARGUMENT):
        new_cluster().bootstrap(store(1), r, CLUSTER_ID, now=0.0)


def test_ids_chosen_by_the_bootstrap_request_are_never_allocated() -> None:
    c = new_cluster()
    c.bootstrap(store(7), region(5, peers=(peer(31, 7),)), CLUSTER_ID, now=0.0)
    assert min(c.alloc_ids(3)) > 31


def test_a_failed_write_leaves_the_cluster_unbootstrapped() -> None:
    storage = MemoryMetaStorage()
    c = new_cluster(storage)
    storage.fail_writes = True
    with pytest.raises(OSError, match="injected write failure"):
        c.bootstrap(store(1), region(1, peers=ONE), CLUSTER_ID, now=0.0)
    assert not c.is_bootstrapped
    storage.fail_writes = False
    c.bootstrap(store(1), region(1, peers=ONE), CLUSTER_ID, now=0.0)
    assert c.is_bootstrapped


# -- stores -------------------------------------------------------------------------


def test_a_store_id_must_come_from_the_allocator() -> None:
    c = bootstrapped(stores=1)
    with pytest.raises(PdRequestError, match="not allocated"):
        c.put_store(store(500), now=0.0)
    (new_id,) = c.alloc_ids(1)
    c.put_store(store(new_id), now=0.0)
    assert c.get_store(new_id).address == store(new_id).address


def test_an_address_of_another_live_store_is_refused() -> None:
    c = bootstrapped(stores=2)
    with refused(PdErrorCode.DUPLICATE_STORE_ADDRESS):
        c.put_store(store(2, address=store(1).address), now=0.0)
    # Once store 1 is a tombstone its address is free again.
    c.get_store(1).operator_state = StoreState.TOMBSTONE
    c.update_store_states(now=0.0)
    c.put_store(store(2, address=store(1).address), now=0.0)
    assert c.get_store(2).address == store(1).address


def test_put_store_ignores_the_state_it_carries_and_refuses_tombstones() -> None:
    storage = MemoryMetaStorage()
    c = bootstrapped(storage, stores=2)
    c.put_store(store(2, state=StoreState.TOMBSTONE), now=0.0)
    assert c.get_store(2).state == StoreState.UP
    c.get_store(2).operator_state = StoreState.TOMBSTONE
    c.update_store_states(now=0.0)
    with refused(PdErrorCode.STORE_TOMBSTONE):
        c.put_store(store(2), now=0.0)
    with refused(PdErrorCode.STORE_TOMBSTONE):
        c.store_heartbeat(StoreStats(StoreId(2)), now=0.0)


def test_store_states_follow_the_heartbeat_age() -> None:
    c = bootstrapped(stores=1)  # store_disconnect_time 10 s, max_store_down_time 60 s
    c.store_heartbeat(StoreStats(StoreId(1), capacity=100, available=40), now=5.0)
    assert c.next_store_state_change(now=5.0) == 15.0
    assert c.update_store_states(now=14.9) == []
    [change] = c.update_store_states(now=15.0)
    assert (change.old, change.new) == (StoreState.UP, StoreState.DISCONNECTED)
    assert c.next_store_state_change(now=15.0) == 65.0
    [change] = c.update_store_states(now=65.0)
    assert change.new == StoreState.DOWN
    assert c.next_store_state_change(now=65.0) is None
    c.store_heartbeat(StoreStats(StoreId(1)), now=100.0)
    assert c.get_store(1).state == StoreState.UP


def test_operator_states_are_kept_whatever_the_heartbeats_say() -> None:
    c = bootstrapped(stores=2)
    c.get_store(2).operator_state = StoreState.OFFLINE
    c.update_store_states(now=1000.0)
    assert c.get_store(2).state == StoreState.OFFLINE
    c.store_heartbeat(StoreStats(StoreId(2)), now=1001.0)
    assert c.get_store(2).state == StoreState.OFFLINE
    assert c.get_store(2).persisted().state == StoreState.OFFLINE


def test_a_heartbeat_from_an_unknown_store_is_refused() -> None:
    with refused(PdErrorCode.STORE_NOT_FOUND):
        bootstrapped().store_heartbeat(StoreStats(StoreId(77)), now=0.0)


# -- region heartbeats -----------------------------------------------------------------


def test_a_split_replaces_the_old_region_in_either_report_order() -> None:
    for left_first in (True, False):
        c = bootstrapped()
        c.region_heartbeat(report(region(1, peers=THREE)), now=1.0)
        left = region(1, b"", b"m", version=2, peers=THREE)
        right = region(2, b"m", b"", version=2, peers=(peer(200, 1), peer(201, 2), peer(202, 3)))
        for r in (left, right) if left_first else (right, left):
            c.region_heartbeat(report(r), now=2.0)
        assert [rec.region for rec in c.regions()] == [left, right]
        assert c.get_region(b"z").region == right  # type: ignore[union-attr]


def test_an_older_epoch_of_the_same_region_is_ignored() -> None:
    c = bootstrapped()
    current = region(1, version=3, conf_ver=4, peers=THREE)
    c.region_heartbeat(report(current), now=1.0)
    for stale in (
        region(1, version=2, conf_ver=4, peers=THREE),
        region(1, version=3, conf_ver=3, peers=THREE),
    ):
        with refused(PdErrorCode.STALE_REGION):
            c.region_heartbeat(report(stale), now=2.0)
    assert c.get_region_by_id(1).region == current  # type: ignore[union-attr]


def test_a_report_older_than_a_region_it_overlaps_is_ignored() -> None:
    c = bootstrapped()
    c.region_heartbeat(report(region(1, b"", b"m", version=2, peers=THREE)), now=1.0)
    c.region_heartbeat(report(region(2, b"m", b"", version=2, peers=THREE)), now=1.0)
    # A late report of region 1 from before the split (version 1) overlaps
    # region 2 (version 2): stale.
    with refused(PdErrorCode.STALE_REGION):
        c.region_heartbeat(report(region(1, version=1, peers=THREE)), now=2.0)
    assert [r.region.id for r in c.regions()] == [1, 2]


def test_a_newer_region_replaces_every_region_it_overlaps() -> None:
    c = bootstrapped()
    c.region_heartbeat(report(region(1, b"", b"g", version=2, peers=THREE)), now=1.0)
    c.region_heartbeat(report(region(2, b"g", b"p", version=2, peers=THREE)), now=1.0)
    c.region_heartbeat(report(region(3, b"p", b"", version=2, peers=THREE)), now=1.0)
    # Region 2 merged its neighbours (version 4): they are gone.
    c.region_heartbeat(report(region(2, b"", b"", version=4, peers=THREE)), now=2.0)
    assert [r.region.id for r in c.regions()] == [2]


def test_a_report_from_an_older_leader_term_is_ignored() -> None:
    c = bootstrapped()
    r = region(1, peers=THREE)
    c.region_heartbeat(report(r, leader=101, term=7), now=1.0)
    with refused(PdErrorCode.STALE_REGION):
        c.region_heartbeat(report(r, leader=100, term=6), now=2.0)
    assert c.get_region_by_id(1).leader.id == 101  # type: ignore[union-attr]
    c.region_heartbeat(report(r, leader=102, term=8), now=3.0)
    assert c.get_region_by_id(1).leader.id == 102  # type: ignore[union-attr]


def test_a_heartbeat_keeps_the_latest_statistics() -> None:
    c = bootstrapped()
    rec = c.region_heartbeat(
        report(region(1, peers=THREE), approximate_size=5 << 20, approximate_keys=1000), now=4.0
    )
    assert rec.stat.approximate_size == 5 << 20
    assert rec.stat.approximate_keys == 1000
    assert rec.stat.last_heartbeat == 4.0


def test_every_field_a_region_heartbeat_reports_is_kept() -> None:
    """RegionStat has every field of the request but its header and region,
    under the same name: a field added to the wire is added there too."""
    wire = [f.name for f in dataclasses.fields(Request)]
    assert wire[:2] == ["header", "region"] and wire[2:] == list(REPORTED_FIELDS)
    c = bootstrapped()
    r = region(1, peers=THREE)
    rep = Request(
        H,
        r,
        r.peers[1],
        term=2,
        approximate_size=3,
        approximate_keys=4,
        down_peers=(pdpb.PeerStats(r.peers[2], 5),),
        pending_peers=(r.peers[0],),
        written_bytes=6,
        written_keys=7,
        read_bytes=8,
        read_keys=9,
        interval_seconds=2.0,
    )
    rec = c.region_heartbeat(rep, now=8.0)
    assert [getattr(rec.stat, f) for f in REPORTED_FIELDS] == [getattr(rep, f) for f in wire[2:]]
    assert rec.stat.last_heartbeat == 8.0
    assert rec.stat.flow == Flow(3.0, 3.5, 4.0, 4.5)


@pytest.mark.parametrize(
    ("rep", "code"),
    [
        (Request(H, region(1, peers=THREE), peer(999, 1)), "INVALID_ARGUMENT"),
        (Request(H, region(1, peers=THREE), peer(100, 2)), "INVALID_ARGUMENT"),
        (Request(H, region(1, peers=THREE), None), "INVALID_ARGUMENT"),  # type: ignore[arg-type]
        (report(region(1, b"k", b"c", peers=THREE)), "INVALID_ARGUMENT"),
        (report(region(1, peers=(peer(100, 1), peer(101, 1)))), "INVALID_ARGUMENT"),
        (report(region(1, peers=(peer(100, 1), peer(100, 2)))), "INVALID_ARGUMENT"),
        (report(region(1, peers=(peer(100, 9),))), "STORE_NOT_FOUND"),
        (report(region(1, peers=THREE), approximate_size=-1), "INVALID_ARGUMENT"),
        (report(region(1, peers=THREE), written_bytes=-1), "INVALID_ARGUMENT"),
        (report(region(1, peers=THREE), read_keys=-1), "INVALID_ARGUMENT"),
        (report(region(1, peers=THREE), interval_seconds=-1.0), "INVALID_ARGUMENT"),
        (report(region(1, peers=THREE), interval_seconds=math.nan), "INVALID_ARGUMENT"),
        (report(region(1, peers=THREE), interval_seconds=math.inf), "INVALID_ARGUMENT"),
        # Down and pending peers must be members, as the region lists them.
        (
            report(region(1, peers=THREE), down_peers=(pdpb.PeerStats(peer(999, 2), 5),)),
            "INVALID_ARGUMENT",
        ),
        (
            report(region(1, peers=THREE), down_peers=(pdpb.PeerStats(peer(101, 3), 5),)),
            "INVALID_ARGUMENT",
        ),
        (report(region(1, peers=THREE), pending_peers=(peer(998, 3),)), "INVALID_ARGUMENT"),
    ],
)
def test_a_malformed_region_heartbeat_is_refused(rep: Request, code: str) -> None:
    c = bootstrapped()
    with refused(PdErrorCode[code]):
        c.region_heartbeat(rep, now=1.0)
    assert [r.region for r in c.regions()] == [region(1, peers=ONE)]


def test_region_queries_need_a_bootstrapped_cluster() -> None:
    c = new_cluster()
    with refused(PdErrorCode.NOT_BOOTSTRAPPED):
        c.get_region(b"a")
    with refused(PdErrorCode.NOT_BOOTSTRAPPED):
        c.region_heartbeat(report(region(1, peers=ONE)), now=0.0)


# -- splits ---------------------------------------------------------------------------


def test_ask_batch_split_hands_out_a_region_id_and_peer_ids_per_new_region() -> None:
    c = bootstrapped()
    r = region(1, peers=THREE)
    c.region_heartbeat(report(r), now=1.0)
    ids = c.ask_batch_split(r, 3)
    assert len(ids) == 3 and all(len(s.new_peer_ids) == 3 for s in ids)
    every = [s.new_region_id for s in ids] + [p for s in ids for p in s.new_peer_ids]
    assert len(set(every)) == 12 and min(every) > 100  # past the bootstrap ids


def test_ask_batch_split_refuses_unknown_and_stale_regions() -> None:
    c = bootstrapped()
    c.region_heartbeat(report(region(1, version=2, peers=THREE)), now=1.0)
    with refused(PdErrorCode.REGION_NOT_FOUND):
        c.ask_batch_split(region(9, peers=THREE), 1)
    with refused(PdErrorCode.STALE_REGION):
        c.ask_batch_split(region(1, version=1, peers=THREE), 1)
    with refused(PdErrorCode.INVALID_ARGUMENT):
        c.ask_batch_split(region(1, version=2, peers=THREE), 0)


def test_report_batch_split_learns_the_new_regions_and_keeps_the_leader() -> None:
    c = bootstrapped()
    c.region_heartbeat(report(region(1, peers=THREE), leader=101), now=1.0)
    left = region(1, b"", b"k", version=2, peers=THREE)
    right = region(5, b"k", b"", version=2, peers=(peer(50, 1), peer(51, 2), peer(52, 3)))
    assert c.report_batch_split([left, right], now=2.0) == 2
    assert c.get_region(b"a").leader.id == 101  # type: ignore[union-attr]
    assert c.get_region(b"z").region == right  # type: ignore[union-attr]
    assert c.get_region(b"z").leader is None  # type: ignore[union-attr]
    # Reported again later (stale now that region 1 moved on): skipped.
    c.region_heartbeat(report(region(1, b"", b"c", version=3, peers=THREE)), now=3.0)
    assert c.report_batch_split([left, right], now=4.0) == 1  # only region 5 again


def test_report_batch_split_needs_adjacent_regions() -> None:
    c = bootstrapped()
    with refused(PdErrorCode.INVALID_ARGUMENT):
        c.report_batch_split([region(1, b"", b"k", version=2, peers=ONE)], now=1.0)
    with refused(PdErrorCode.INVALID_ARGUMENT):
        c.report_batch_split(
            [
                region(1, b"", b"k", version=2, peers=ONE),
                region(5, b"m", b"", version=2, peers=ONE),
            ],
            now=1.0,
        )


def test_report_batch_split_from_a_removed_store_is_refused() -> None:
    c = bootstrapped(stores=4)
    c.set_store_state(4, StoreState.OFFLINE, now=1.0)
    c.set_store_state(4, StoreState.TOMBSTONE, now=1.0)
    # Store 4's process, removed but still running on old data, splits its
    # old copy of region 1: the PD must not replace region 1 with regions on
    # a removed store.
    left = region(1, b"", b"k", version=2, peers=(peer(140, 4),))
    right = region(5, b"k", b"", version=2, peers=(peer(50, 4),))
    with refused(PdErrorCode.STORE_TOMBSTONE):
        c.report_batch_split([left, right], now=2.0)
    assert [r.region for r in c.regions()] == [region(1, peers=ONE)]


# -- config ---------------------------------------------------------------------------


def test_set_config_is_all_or_nothing_and_persisted_first() -> None:
    storage = MemoryMetaStorage()
    c = bootstrapped(storage)
    with refused(PdErrorCode.INVALID_ARGUMENT):
        c.set_config({"max_replicas": "5", "region_max_keys": "many"})
    with refused(PdErrorCode.UNKNOWN_CONFIG):
        c.set_config({"max_replicas": "5", "max_replica": "5"})
    with refused(PdErrorCode.UNKNOWN_CONFIG):
        c.set_config({"listen": "127.0.0.1:1"})
    assert c.config.max_replicas == 3
    storage.fail_writes = True
    with pytest.raises(OSError, match="injected write failure"):
        c.set_config({"max_replicas": "5"})
    assert c.config.max_replicas == 3
    storage.fail_writes = False
    c.set_config({"max_replicas": "5", "region_max_size": "1GiB"})
    assert storage.meta.config["max_replicas"] == "5"
    assert storage.meta.config["region_max_size"] == "1GiB"


def test_overrides_win_over_the_stored_config_and_unnamed_keys_keep_it() -> None:
    storage = MemoryMetaStorage()
    c = new_cluster(storage)
    c.set_config({"max_replicas": "5", "region_max_keys": "77"})
    again = Cluster(storage, 0.0, config_overrides={"region_max_keys": 88})
    assert (again.config.max_replicas, again.config.region_max_keys) == (5, 88)
    assert storage.meta.config["region_max_keys"] == "88"


def test_overrides_that_break_a_rule_with_the_stored_config_are_refused() -> None:
    storage = MemoryMetaStorage()
    new_cluster(storage).set_config({"max_store_down_time": "1m"})
    with pytest.raises(ConfigError, match="store_disconnect_time must be shorter"):
        Cluster(storage, 0.0, config_overrides={"store_disconnect_time": "2m"})


# -- persistence ------------------------------------------------------------------------


def test_a_reloaded_cluster_has_its_stores_regions_ids_and_config() -> None:
    storage = MemoryMetaStorage()
    c = bootstrapped(storage)
    c.set_config({"max_replicas": "5"})
    left = region(1, b"", b"k", version=2, peers=THREE)
    right = region(2, b"k", b"", version=2, peers=THREE)
    for r in (left, right):
        c.region_heartbeat(report(r), now=1.0)
    assert c.flush_regions() == 2
    last_id = max(c.alloc_ids(4))

    again = new_cluster(storage, now=50.0)
    assert again.cluster_id == CLUSTER_ID
    assert [s.id for s in again.stores()] == [1, 2, 3]
    assert all(s.state == StoreState.UP for s in again.stores())  # a fresh grace period
    assert [r.region for r in again.regions()] == [left, right]
    assert min(again.alloc_ids(1)) > last_id
    assert again.config.max_replicas == 5


def test_region_flushes_write_changes_and_delete_replaced_regions() -> None:
    storage = MemoryMetaStorage()
    c = bootstrapped(storage)
    c.region_heartbeat(report(region(1, b"", b"k", version=2, peers=THREE)), now=1.0)
    c.region_heartbeat(report(region(2, b"k", b"", version=2, peers=THREE)), now=1.0)
    c.flush_regions()
    writes = storage.writes
    c.region_heartbeat(report(region(2, b"k", b"", version=2, peers=THREE)), now=2.0)
    assert c.flush_regions() == 0 and storage.writes == writes  # nothing changed
    c.region_heartbeat(report(region(2, b"", b"", version=3, peers=THREE)), now=3.0)
    storage.fail_writes = True
    with pytest.raises(OSError, match="injected write failure"):
        c.flush_regions()
    storage.fail_writes = False
    assert c.flush_regions() == 2  # region 2 written, region 1 deleted
    assert storage.meta.regions == [region(2, b"", b"", version=3, peers=THREE)]


def test_overlapping_stored_regions_keep_the_newest() -> None:
    storage = MemoryMetaStorage()
    bootstrapped(storage)
    storage.meta.regions = [
        region(1, version=1, peers=THREE),
        region(2, b"k", b"", version=2, peers=THREE),
    ]
    c = new_cluster(storage)
    assert [r.region.id for r in c.regions()] == [2]
    assert RegionId(1) not in {r.region.id for r in c.regions()}


# -- per-store counts and administrators' store states --------------------------------


def check_store_counts(c: Cluster) -> None:
    """The incremental counts and flows equal a count over the region tree."""
    for s in c.stores():
        peers = sum(1 for r in c.regions() if r.region.peer_on_store(s.id) is not None)
        pending = sum(1 for r in c.regions() for p in r.stat.pending_peers if p.store_id == s.id)
        assert (c.store_region_count(s.id), c.store_pending_peer_count(s.id)) == (
            peers,
            pending,
        ), s.id
        led = [r.stat.flow for r in c.regions() if r.leader and r.leader.store_id == s.id]
        assert c.store_leader_flow(s.id) == Flow.total(led), s.id


def test_store_counts_follow_the_region_tree() -> None:
    c = bootstrapped()
    # The first region on three stores, store 3's peer catching up.
    whole = region(1, peers=THREE)
    c.region_heartbeat(report(whole, pending_peers=(whole.peers[2],)), now=1.0)  # type: ignore[arg-type]
    check_store_counts(c)
    assert c.store_region_count(3) == 1 and c.store_pending_peer_count(3) == 1
    # A split, reported by the store: two regions per store, the left keeps its stat.
    left = region(1, b"", b"m", version=2, peers=THREE)
    right = region(2, b"m", b"", version=2, peers=(peer(200, 1), peer(201, 2)))
    c.report_batch_split([left, right], now=2.0)
    check_store_counts(c)
    assert [c.store_region_count(s) for s in (1, 2, 3)] == [2, 2, 1]
    # Store 3's peer caught up; the right region loses store 2's peer.
    c.region_heartbeat(report(left), now=3.0)
    c.region_heartbeat(
        report(region(2, b"m", b"", version=2, conf_ver=2, peers=(peer(200, 1),))), 3.0
    )
    check_store_counts(c)
    assert [c.store_region_count(s) for s in (1, 2, 3)] == [2, 1, 1]
    assert c.store_pending_peer_count(3) == 0
    # A merge back replaces both.
    c.region_heartbeat(report(region(1, version=4, peers=ONE)), now=4.0)
    check_store_counts(c)
    assert [c.store_region_count(s) for s in (1, 2, 3)] == [1, 0, 0]


def test_a_region_keeps_the_flow_of_its_latest_measured_interval() -> None:
    c = bootstrapped()
    whole = region(1, peers=THREE)
    c.region_heartbeat(report(whole, written_bytes=50, read_keys=4, interval_seconds=10.0), 1.0)
    expected = Flow(write_bytes_rate=5.0, read_keys_rate=0.4)
    assert c.store_leader_flow(1) == expected
    # A new leader reports at once, over an empty interval: the region's
    # load moved with the leadership, it did not stop.
    c.region_heartbeat(report(whole, leader=101, term=2, interval_seconds=0.0), 2.0)
    record = c.region_by_id(1)
    assert record is not None and record.stat.flow == expected
    assert (c.store_leader_flow(1), c.store_leader_flow(2)) == (Flow(), expected)
    # Its next heartbeat measured an idle region.
    c.region_heartbeat(report(whole, leader=101, term=2, interval_seconds=10.0), 12.0)
    assert c.store_leader_flow(2) == Flow()
    check_store_counts(c)


def test_store_flows_sum_the_regions_led_there() -> None:
    c = bootstrapped()
    left = region(1, b"", b"m", version=2, peers=THREE)
    right = region(2, b"m", b"", version=2, peers=(peer(200, 1), peer(201, 2)))
    c.region_heartbeat(report(left, written_keys=10, interval_seconds=1.0), 1.0)
    c.region_heartbeat(report(right, written_keys=30, interval_seconds=10.0), 1.0)
    assert c.store_leader_flow(1) == Flow(write_keys_rate=13.0)
    check_store_counts(c)
    # The right region's leadership moves to store 2.
    c.region_heartbeat(report(right, leader=201, term=2, written_keys=5, interval_seconds=1.0), 2)
    assert [c.store_leader_flow(s).write_keys_rate for s in (1, 2, 3)] == [10.0, 5.0, 0.0]
    check_store_counts(c)
    # A split reported by the store: the new region has no flow yet, the
    # left one keeps its own.
    left2 = region(1, b"", b"g", version=3, peers=THREE)
    middle = region(3, b"g", b"m", version=3, peers=THREE)
    c.report_batch_split([left2, middle], now=3.0)
    assert c.store_leader_flow(1) == Flow(write_keys_rate=10.0)
    check_store_counts(c)
    # A merge back replaces all of them.
    c.region_heartbeat(report(region(1, version=5, peers=THREE), interval_seconds=0.0), 4.0)
    assert [c.store_leader_flow(s) for s in (1, 2, 3)] == [
        Flow(write_keys_rate=10.0),
        Flow(),
        Flow(),
    ]
    check_store_counts(c)


def test_an_administrator_decommissions_and_removes_a_store() -> None:
    storage = MemoryMetaStorage()
    c = bootstrapped(storage, stores=4)  # 3 stay Up for max_replicas 3
    c.region_heartbeat(report(region(1, peers=(peer(100, 1), peer(101, 2)))), now=1.0)
    # Store 2 is made Offline, persisted first.
    assert c.set_store_state(2, StoreState.OFFLINE, now=1.0).state == StoreState.OFFLINE
    assert Cluster(storage, 2.0).get_store(2).state == StoreState.OFFLINE
    # It still holds region 1: it cannot be removed yet.
    with refused(PdErrorCode.FAILED_PRECONDITION):
        c.set_store_state(2, StoreState.TOMBSTONE, now=2.0)
    assert c.bury_empty_offline_stores(now=2.0) == []
    # Its peer is gone: a patrol buries it; then nothing changes it again.
    c.region_heartbeat(report(region(1, conf_ver=2, peers=ONE)), now=3.0)
    assert c.bury_empty_offline_stores(now=3.0) == [2]
    assert Cluster(storage, 4.0).get_store(2).state == StoreState.TOMBSTONE
    with refused(PdErrorCode.STORE_TOMBSTONE):
        c.set_store_state(2, StoreState.UP, now=4.0)


def test_only_up_offline_and_tombstone_can_be_set() -> None:
    c = bootstrapped(stores=4)
    for state in (StoreState.DOWN, StoreState.DISCONNECTED):
        with refused(PdErrorCode.INVALID_ARGUMENT):
            c.set_store_state(2, state, now=1.0)
    with refused(PdErrorCode.FAILED_PRECONDITION):  # Up stores are made Offline first
        c.set_store_state(3, StoreState.TOMBSTONE, now=1.0)
    with refused(PdErrorCode.STORE_NOT_FOUND):
        c.set_store_state(9, StoreState.OFFLINE, now=1.0)
    # Offline, then Up again: the state follows heartbeats again.
    c.set_store_state(2, StoreState.OFFLINE, now=1.0)
    assert c.set_store_state(2, StoreState.UP, now=100.0).state == StoreState.DOWN  # silent
    c.store_heartbeat(StoreStats(StoreId(2)), now=101.0)
    assert c.get_store(2).state == StoreState.UP


def test_a_store_is_drained_only_while_max_replicas_other_stores_are_up() -> None:
    c = bootstrapped(stores=3)
    # Three stores for three replicas: a drained store's peers could go nowhere.
    with refused(PdErrorCode.FAILED_PRECONDITION) as info:
        c.set_store_state(2, StoreState.OFFLINE, now=1.0)
    assert info.value.message == (
        "store 2 cannot be made Offline: 2 other stores are Up (1, 3) and max_replicas is 3; "
        "its peers would have nowhere to go (add a store, or lower max_replicas, first)"
    )
    assert c.get_store(2).state == StoreState.UP
    # A fourth store makes room for one drain, not two.
    c.ids.skip_past(4)
    c.put_store(store(4), now=1.0)
    c.set_store_state(2, StoreState.OFFLINE, now=1.0)
    with refused(PdErrorCode.FAILED_PRECONDITION):
        c.set_store_state(3, StoreState.OFFLINE, now=1.0)
    # Asking again for a store already Offline changes nothing, and is no error.
    c.set_store_state(2, StoreState.OFFLINE, now=1.0)
    # Only Up stores count: store 2 back Up but silent (Down) makes no room.
    c.set_store_state(2, StoreState.UP, now=100.0)
    assert c.get_store(2).state == StoreState.DOWN
    for s in (1, 3, 4):
        c.store_heartbeat(StoreStats(StoreId(s)), now=100.0)
    with refused(PdErrorCode.FAILED_PRECONDITION):
        c.set_store_state(3, StoreState.OFFLINE, now=100.0)
    # Fewer replicas wanted: room again.
    c.set_config({"max_replicas": "2"})
    assert c.set_store_state(3, StoreState.OFFLINE, now=100.0).state == StoreState.OFFLINE


def test_a_store_a_running_operator_targets_is_not_removed_by_hand() -> None:
    c = bootstrapped(stores=4)
    c.set_store_state(4, StoreState.OFFLINE, now=1.0)
    with refused(PdErrorCode.FAILED_PRECONDITION) as info:
        c.set_store_state(4, StoreState.TOMBSTONE, now=1.0, targeted={StoreId(4)})
    assert "a running operator still puts a peer" in info.value.message
    assert c.set_store_state(4, StoreState.TOMBSTONE, now=1.0).state == StoreState.TOMBSTONE


def test_a_tombstone_taken_off_the_store_list_never_comes_back() -> None:
    storage = MemoryMetaStorage()
    c = bootstrapped(storage, stores=5)
    # Only a Tombstone can be taken off the list.
    with refused(PdErrorCode.FAILED_PRECONDITION) as info:
        c.remove_tombstone_stores(2)
    assert "store 2 is Up: only a Tombstone store can be removed" in info.value.message
    with refused(PdErrorCode.STORE_NOT_FOUND):
        c.remove_tombstone_stores(9)
    for s in (4, 5):
        c.set_store_state(s, StoreState.OFFLINE, now=1.0)
        c.set_store_state(s, StoreState.TOMBSTONE, now=1.0)
    assert [s.id for s in c.remove_tombstone_stores(4)] == [4]
    assert [s.id for s in c.stores()] == [1, 2, 3, 5]
    # Without an id: every Tombstone store (none left is no error).
    assert [s.id for s in c.remove_tombstone_stores()] == [5]
    assert c.remove_tombstone_stores() == []
    # Persisted: after a restart the ids are still refused, not taken for
    # new stores joining under their old ids.
    c = Cluster(storage, 2.0, config_overrides=SHORT)
    assert [s.id for s in c.stores()] == [1, 2, 3]
    with refused(PdErrorCode.STORE_NOT_FOUND) as missing:
        c.get_store(4)
    assert missing.value.message == "store 4 is not known (it was removed)"
    with refused(PdErrorCode.STORE_TOMBSTONE) as gone:
        c.put_store(store(4), now=2.0)
    assert "store 4 was removed from the cluster (tombstone)" in gone.value.message
    with refused(PdErrorCode.STORE_TOMBSTONE):
        c.store_heartbeat(StoreStats(StoreId(5)), now=2.0)
    with refused(PdErrorCode.STORE_TOMBSTONE):
        c.region_heartbeat(
            report(region(1, conf_ver=2, peers=(peer(100, 1), peer(104, 4))), leader=104), now=2.0
        )
    # A new store may take the address a removed one had.
    c.ids.skip_past(6)
    c.put_store(store(6, address=store(4).address), now=2.0)


def test_a_failed_write_leaves_the_store_state_as_it_was() -> None:
    storage = MemoryMetaStorage()
    c = bootstrapped(storage, stores=4)
    storage.fail_writes = True
    with pytest.raises(OSError, match="injected write failure"):
        c.set_store_state(2, StoreState.OFFLINE, now=1.0)
    assert c.get_store(2).state == StoreState.UP

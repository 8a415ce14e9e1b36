"""Incremental catch-up, piece by piece, on real LMDB: the hash tree of a
snapshot, the receiver's comparison, the delta file and its install
(store_node.snapshot_digest, store_node.snapshot_delta)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from kvproto.metapb import Region, RegionId, StoreId
from kvproto.raft_serverpb import (
    DigestRun,
    PeerState,
    RaftMessage,
    SnapshotDescriptor,
    SnapshotDigestRequest,
    SnapshotDigestResponse,
    SnapshotKey,
)
from raft.types import Message, MessageType
from store_node import keys
from store_node.apply import write_apply_state, write_region_state
from store_node.bootstrap import write_initial_region
from store_node.engine import Engine, KvTxn
from store_node.records import ApplyState, decode_apply_state
from store_node.region_tasks import SnapshotTask, install_snapshot
from store_node.snapshot import SnapDir, descriptor_of, generate, verify
from store_node.snapshot_delta import (
    DeltaPolicy,
    Differing,
    NoDelta,
    build_delta,
    compare,
    exchange,
    prepare,
)
from store_node.snapshot_digest import (
    TreeError,
    TreeShape,
    check_runs,
    load_tree,
    split_runs,
    tree_path,
)
from tests import factories

# Leaves of 2 keys, groups of about 3 leaves: small data, a real two-level tree.
SHAPE = TreeShape(leaf_keys=2, leaf_bytes=1 << 20, group_bytes=60)
KEY = SnapshotKey(RegionId(1), 7, 40, StoreId(1))


def _store(
    root: Path,
    name: str,
    region: Region,
    pairs: Iterable[tuple[bytes, bytes]],
    applied: tuple[int, int] = (40, 7),
    sessions: Iterable[tuple[bytes, bytes]] = (),
    large_value_threshold: int = 0,
) -> Engine:
    engine = Engine(root / name, sync=False, large_value_threshold=large_value_threshold)
    write_initial_region(engine, region)

    def fill(txn: KvTxn) -> None:
        for k, v in pairs:
            txn.put(keys.DATA_DB, k, v)
        for k, v in sessions:
            txn.put(keys.SESSION_DB, keys.session_prefix(region.id) + k, v)
        index, term = applied
        write_apply_state(txn, region.id, ApplyState(index, index, term, term))

    engine.write_kv(fill)
    return engine


def _pairs(n: int, prefix: bytes = b"k") -> list[tuple[bytes, bytes]]:
    return [(prefix + b"%03d" % i, b"v%03d" % i) for i in range(n)]


def _data(engine: Engine, region: Region) -> list[tuple[bytes, bytes]]:
    return engine.kv_items(keys.DATA_DB, region.start_key, region.end_key)


def _sessions(engine: Engine, region_id: int) -> list[tuple[bytes, bytes]]:
    return engine.kv_items(
        keys.SESSION_DB, keys.session_prefix(region_id), keys.session_prefix(region_id + 1)
    )


def _catch_up(tmp_path: Path, leader: Engine, follower: Engine, region: Region) -> Differing:
    """Snapshot the leader, compare with the follower, build the delta and
    install it into the follower as a store does; what differed."""
    snap, path = generate(leader, SnapDir(tmp_path / "snap"), region.id, SHAPE)
    desc = descriptor_of(snap)
    tree = load_tree(tree_path(path))
    steps = exchange(KEY, desc.region, path, tree, DeltaPolicy(max_ranges=5))
    try:
        req = next(steps)
        while True:
            req = steps.send(compare(follower, req))
    except StopIteration as done:
        found: Differing = done.value
    out = tmp_path / "snap" / "delta.snap"
    delta = build_delta(path, desc, tree, found, out)
    verify(out, delta)
    assert delta.delta is not None
    task = SnapshotTask(delta.region, out, delta.index, delta.term, delta.delta.ranges)
    follower.write_kv(lambda txn: install_snapshot(txn, task))
    return found


def test_a_delta_replaces_only_what_differs_and_ends_equal(tmp_path: Path) -> None:
    region = factories.region(1)
    base = _pairs(30)
    leader_pairs = dict(base)
    leader_pairs[b"k004"] = b"changed"  # a value changed
    del leader_pairs[b"k013"]  # a key deleted on the leader
    leader_pairs[b"k020x"] = b"added"  # a key added
    follower_pairs = dict(base)
    follower_pairs[b"a"] = b"gone"  # below the leader's first key
    follower_pairs[b"z"] = b"gone"  # above the leader's last key
    sessions = [(b"\x01s1", b"record"), (b"\x02s1xx", b"answer")]
    leader = _store(tmp_path, "l", region, sorted(leader_pairs.items()), sessions=sessions)
    follower = _store(
        tmp_path, "f", region, sorted(follower_pairs.items()), applied=(25, 6), sessions=[]
    )
    found = _catch_up(tmp_path, leader, follower, region)

    assert (found.base_index, found.base_term) == (25, 6)
    tree = load_tree(next((tmp_path / "snap").glob("*.tree")))
    n = len(tree.leaf_starts)

    def leaf_of(key: bytes) -> int:
        return max(i for i in range(n) if tree.leaf_starts[i] <= key)

    # Exactly the leaves holding a, k004, k013 (gone), k020x (new) and z:
    # the first and last leaves run to the region's ends, so the keys only
    # the follower holds there are in them.
    assert tree.leaf_starts[0] == b"" and tree.leaf_end(n - 1) == b""
    wanted = {leaf_of(k) for k in (b"a", b"k004", b"k013", b"k020x", b"z")}
    assert set(found.leaves) == wanted and {0, n - 1} <= wanted
    assert n >= 3 * len(wanted)
    assert _data(follower, region) == _data(leader, region)
    assert _sessions(follower, 1) == _sessions(leader, 1)
    raw = follower.kv_get(keys.APPLY_DB, keys.region_key(1))
    assert raw is not None and decode_apply_state(raw) == ApplyState(40, 40, 7, 7)


def test_copies_laid_out_differently_compare_by_value_and_a_delta_carries_values(
    tmp_path: Path,
) -> None:
    """The leader keeps long values in blob files, the follower in kv/: the
    comparison sees values (only what changed differs), and the values
    installed are the leader's, kept as the follower's threshold says."""
    region = factories.region(1)
    base = [(b"k%03d" % i, (b"%03d" % i) * 100) for i in range(30)]
    leader_pairs = dict(base)
    leader_pairs[b"k007"] = b"x" * 500
    leader = _store(tmp_path, "l", region, sorted(leader_pairs.items()), large_value_threshold=100)
    follower = _store(tmp_path, "f", region, base, applied=(25, 6), large_value_threshold=0)
    assert any(p.suffix == ".blob" for p in (tmp_path / "l" / "blobs").iterdir())
    found = _catch_up(tmp_path, leader, follower, region)
    assert len(found.leaves) == 1  # the leaf of k007 alone
    assert _data(follower, region) == sorted(leader_pairs.items())
    assert not list((tmp_path / "f" / "blobs").iterdir())


def test_equal_copies_send_no_pairs_but_the_state_and_sessions(tmp_path: Path) -> None:
    region = factories.region(1)
    pairs = _pairs(20)
    leader = _store(tmp_path, "l", region, pairs, sessions=[(b"\x01s", b"r")])
    follower = _store(tmp_path, "f", region, pairs, applied=(30, 6))
    found = _catch_up(tmp_path, leader, follower, region)
    assert found.leaves == ()
    assert _data(follower, region) == pairs
    assert _sessions(follower, 1) == _sessions(leader, 1)


def test_an_empty_leader_region_clears_the_follower_copy(tmp_path: Path) -> None:
    region = factories.region(1, b"b", b"y")
    leader = _store(tmp_path, "l", region, [])
    follower = _store(tmp_path, "f", region, _pairs(10, b"c"), applied=(30, 6))
    # Keys outside the region are another region's: left alone.
    follower.write_kv(lambda txn: txn.put(keys.DATA_DB, b"zz", b"other"))
    found = _catch_up(tmp_path, leader, follower, region)
    assert found.leaves == (0,)
    assert _data(follower, region) == []
    assert follower.kv_items(keys.DATA_DB) == [(b"zz", b"other")]


def test_an_empty_follower_copy_gets_every_leaf(tmp_path: Path) -> None:
    region = factories.region(1, b"b", b"")
    leader = _store(tmp_path, "l", region, _pairs(9, b"c"))
    follower = _store(tmp_path, "f", region, [], applied=(30, 6))
    found = _catch_up(tmp_path, leader, follower, region)
    assert found.leaves == tuple(range(5))
    assert _data(follower, region) == _data(leader, region)


def test_the_exchange_asks_leaf_hashes_only_of_groups_that_differ(tmp_path: Path) -> None:
    region = factories.region(1)
    pairs = _pairs(60)
    changed = [(k, b"new" if k == b"k031" else v) for k, v in pairs]
    leader = _store(tmp_path, "l", region, changed)
    follower = _store(tmp_path, "f", region, pairs, applied=(30, 6))
    _, path = generate(leader, SnapDir(tmp_path / "snap"), 1, SHAPE)
    tree = load_tree(tree_path(path))
    assert len(tree.group_hashes) > 5
    asked: list[SnapshotDigestRequest] = []

    def answer(req: SnapshotDigestRequest) -> SnapshotDigestResponse:
        asked.append(req)
        return compare(follower, req)

    steps = exchange(KEY, region, path, tree, DeltaPolicy())
    try:
        req = next(steps)
        while True:
            req = steps.send(answer(req))
    except StopIteration as done:
        found: Differing = done.value
    assert len(asked) == 2
    assert sum(len(r.hashes) for r in asked[0].runs) == len(tree.group_hashes)
    assert sum(len(r.hashes) for r in asked[1].runs) <= 4  # one group's leaves
    assert asked[1].base_index == 30
    assert [tree.leaf_starts[i] for i in found.leaves] == [b"k030"]


def test_no_usable_copy_is_said_so(tmp_path: Path) -> None:
    region = factories.region(1, b"", b"m")
    leader = _store(tmp_path, "l", region, _pairs(10))
    _, path = generate(leader, SnapDir(tmp_path / "snap"), 1, SHAPE)
    req = SnapshotDigestRequest(KEY, region, 0, 0, (load_tree(tree_path(path)).group_run(),))

    wider = _store(tmp_path, "wider", factories.region(1, b"", b""), _pairs(10))
    assert "its range is" in compare(wider, req).error
    none = Engine(tmp_path / "none", sync=False)
    assert "no initialized peer" in compare(none, req).error
    gone = _store(tmp_path, "gone", region, _pairs(10))
    gone.write_kv(lambda txn: write_region_state(txn, region, PeerState.TOMBSTONE))
    assert "no initialized peer" in compare(gone, req).error
    same = _store(tmp_path, "same", region, _pairs(10), applied=(30, 6))
    assert compare(same, req).error == ""
    # Once a base is named, a copy that moved is refused.
    moved = SnapshotDigestRequest(KEY, region, 29, 6, req.runs)
    assert "moved" in compare(same, moved).error


def test_a_copy_that_moves_between_the_two_levels_ends_the_exchange(tmp_path: Path) -> None:
    region = factories.region(1)
    leader = _store(tmp_path, "l", region, [(k, b"x") for k, _ in _pairs(20)])
    follower = _store(tmp_path, "f", region, _pairs(20), applied=(30, 6))
    _, path = generate(leader, SnapDir(tmp_path / "snap"), 1, SHAPE)
    steps = exchange(KEY, region, path, load_tree(tree_path(path)), DeltaPolicy())
    req = steps.send(compare(follower, next(steps)))
    follower.write_kv(
        lambda txn: write_apply_state(txn, 1, ApplyState(31, 31, 6, 6))
    )  # it applied one more entry
    with pytest.raises(NoDelta, match="moved"):
        steps.send(compare(follower, req))


def test_a_delta_not_worth_it_is_not_built_one_that_is_carries_the_snapshot(tmp_path: Path) -> None:
    region = factories.region(1)
    leader = _store(tmp_path, "l", region, [(k, b"x") for k, _ in _pairs(20)])
    follower = _store(tmp_path, "f", region, _pairs(20), applied=(30, 6))
    snap, path = generate(leader, SnapDir(tmp_path / "snap"), 1, SHAPE)
    snap_region = descriptor_of(snap).region
    msg = RaftMessage(
        RegionId(1),
        factories.peer(11, 1),
        factories.peer(12, 2),
        snap_region.epoch,
        Message(MessageType.SNAPSHOT, to=12, from_=11, term=7, snapshot=snap),
    )
    # Every value differs: a delta would be the whole region.
    with pytest.raises(NoDelta, match="not worth it"):
        prepare(
            path,
            msg,
            KEY,
            lambda req: compare(follower, req),
            DeltaPolicy(max_fraction=0.5),
            tmp_path / "d.snap",
        )
    assert not (tmp_path / "d.snap").exists()
    delta_msg = prepare(
        path,
        msg,
        KEY,
        lambda req: compare(follower, req),
        DeltaPolicy(max_fraction=1.5),
        tmp_path / "d.snap",
    )
    delta = descriptor_of(delta_msg.message.snapshot)  # type: ignore[arg-type]
    assert delta.delta is not None and delta.keys == 20
    assert delta_msg.message.snapshot.metadata == snap.metadata  # type: ignore[union-attr]
    with pytest.raises(NoDelta, match="not worth it"):
        prepare(
            path,
            msg,
            KEY,
            lambda req: compare(follower, req),
            DeltaPolicy(max_fraction=0.5),
            tmp_path / "d.snap",
        )


def test_malformed_runs_are_refused() -> None:
    h = b"h" * 16
    check_runs([DigestRun((b"a", b"b", b""), (h, h))], b"", b"")
    bad = [
        DigestRun((b"a",), ()),  # no range
        DigestRun((b"a", b"b"), (h, h)),  # a hash too many
        DigestRun((b"b", b"a"), (h,)),  # decreasing
        DigestRun((b"a", b"", b"c"), (h, h)),  # +infinity inside
        DigestRun((b"a", b"b"), (b"short",)),
    ]
    for run in bad:
        with pytest.raises(TreeError):
            check_runs([run], b"", b"")
    with pytest.raises(TreeError):
        check_runs([DigestRun((b"a", b"q"), (h,))], b"", b"m")  # beyond the region
    with pytest.raises(TreeError):
        check_runs([DigestRun((b"a", b""), (h,))], b"", b"m")


def test_runs_are_cut_into_bounded_requests() -> None:
    h = b"h" * 16
    runs = [DigestRun(tuple(b"%02d" % i for i in range(8)), (h,) * 7), DigestRun((b"x", b""), (h,))]
    batches = list(split_runs(runs, 3))
    assert [sum(len(r.hashes) for r in b) for b in batches] == [3, 3, 2]
    # Cut runs still chain: each piece starts where the last ended.
    flat = [(r.bounds[0], r.bounds[-1]) for b in batches for r in b]
    assert flat == [(b"00", b"03"), (b"03", b"06"), (b"06", b"07"), (b"x", b"")]


def test_a_tree_that_is_not_the_files_is_refused(tmp_path: Path) -> None:
    region = factories.region(1)
    leader = _store(tmp_path, "l", region, _pairs(10))
    snap, path = generate(leader, SnapDir(tmp_path / "snap"), 1, SHAPE)
    tree = load_tree(tree_path(path))
    desc = descriptor_of(snap)
    other = SnapshotDescriptor(desc.region, desc.index, desc.term, desc.size + 1, 0, 0)
    with pytest.raises(TreeError):
        build_delta(path, other, tree, Differing(1, 1, (0,)), tmp_path / "d.snap")
    tree_path(path).write_bytes(b"\x80")
    with pytest.raises(TreeError):
        load_tree(tree_path(path))

"""Drive several `StoreCore`s in one thread, with real LMDB and no sockets.

Each `run_round` does what the StoreNode shell does for one store: end the
round, deliver the messages to send now, persist and apply, deliver the
messages to send after persisting, then `after_persist`. Replies are kept by
token for the test to inspect.

Most tests start from `bootstrapped`: region 1 (the whole key space, peer
``10 + s`` on store `s`, as `tests.factories.region` builds it) on every
store, ticked until it has a leader.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from kvproto.kvrpcpb import Context
from kvproto.metapb import Peer as PeerMeta
from kvproto.metapb import Region, RegionId, StoreId
from kvproto.raft_cmdpb import ChangePeer, ChangePeerRequest, ChangePeerType
from kvproto.raft_serverpb import RaftMessage, SnapshotKey
from store_node.bootstrap import load_regions, load_store, write_initial_region
from store_node.config import CoreConfig
from store_node.core import StoreCore
from store_node.engine import Engine, WriteBatch
from store_node.peer import Reply
from store_node.persist import persist_and_apply
from store_node.region_hash import HashJob, jobs_of
from store_node.snapshot import SnapDir, descriptor_of, generate, verify
from store_node.snapshot_delta import DeltaPolicy, NoDelta, compare, prepare
from store_node.snapshot_digest import TreeError, TreeShape
from store_node.split import scan_region
from tests.factories import region as make_region


class CoreCluster:
    def __init__(
        self,
        root: Path,
        store_ids: list[int],
        config: CoreConfig | None = None,
        *,
        sync: bool = False,
    ):
        # sync=True: real fsyncs, and writes that need none are deferred
        # (and lost by `crash`), as in a store.
        self.sync = sync
        self.root = root
        self.config = config or CoreConfig(election_ticks=10, heartbeat_ticks=2)
        self.engines: dict[int, Engine] = {}
        self.cores: dict[int, StoreCore] = {}
        self.replies: dict[object, Reply] = {}
        self.down: set[int] = set()
        self.snap_dirs: dict[int, SnapDir] = {}
        # Snapshot deliveries: (from store, to store, region id).
        self.snapshots_delivered: list[tuple[int, int, int]] = []
        # Incremental catch-up (store_node.snapshot_delta) when set: the
        # deltas delivered (as above), and why a full file went instead.
        self.tree_shape: TreeShape | None = None
        self.delta_policy = DeltaPolicy()
        self.deltas_delivered: list[tuple[int, int, int]] = []
        self.delta_sizes: list[tuple[int, int]] = []  # (delta, whole) file bytes
        self.why_full: list[str] = []
        # Ids for split regions and peers (the PD's AllocID).
        self.next_id = 1000
        # Fault injection: drop a message when this says so; (from, to)
        # store pairs that hear nothing of each other.
        self.drop: Callable[[RaftMessage], bool] | None = None
        self.cut: set[tuple[int, int]] = set()
        self.split_limits: tuple[int, int] | None = None
        # The stores' monotonic clock (leases), advanced by the test.
        self.now = 0.0
        # Each store's life, stamped on what it sends (store liveness).
        self.incarnations: dict[int, int] = {}
        # Consistency checks' pinned copies: hashed at the end of their
        # round, or with `hold_hashes` kept here until `finish_hashes`.
        self.hold_hashes = False
        self.held_hashes: list[tuple[int, HashJob]] = []
        for s in store_ids:
            self.start(s)

    def start(self, store_id: int) -> None:
        engine = Engine(self.root / f"s{store_id}", sync=self.sync)
        tombstones, regions = load_store(engine)
        core = StoreCore(StoreId(store_id), engine, self.config, tombstones=tombstones)
        for region, apply_state in regions:
            core.add_peer(region, apply_state, restarted=True)
        self.engines[store_id] = engine
        self.cores[store_id] = core
        self.incarnations[store_id] = self.incarnations.get(store_id, 0) + 1
        self.snap_dirs[store_id] = SnapDir(self.root / f"s{store_id}" / "snap")
        self.snap_dirs[store_id].clear_stale()
        self.down.discard(store_id)

    def stop(self, store_id: int) -> None:
        self.engines.pop(store_id).close()
        self.cores.pop(store_id)
        self.down.add(store_id)

    def crash(self, store_id: int) -> None:
        """Like SIGKILL: Raft writes deferred until the next fsync are lost
        (kv/ transactions survive a process crash in the OS cache)."""
        engine = self.engines.pop(store_id)
        engine._deferred = WriteBatch()
        engine.close()
        self.cores.pop(store_id)
        self.down.add(store_id)

    def bootstrap(self, region: Region) -> None:
        for p in region.peers:
            write_initial_region(self.engines[p.store_id], region)
            self.cores[p.store_id].add_peer(region, load_regions(self.engines[p.store_id])[-1][1])

    def run_round(self, store_id: int) -> bool:
        core = self.cores[store_id]
        core.split_limits = self.split_limits
        if not core.has_work():
            return False
        out = core.end_round(self.now)
        self._deliver(store_id, out.messages_now, out.pings)
        outcomes = persist_and_apply(self.engines[store_id], out)
        self._deliver(store_id, out.messages_after_persist)
        for r in core.after_persist(out, outcomes):
            self.replies[r.token] = r
        for job in jobs_of(outcomes):
            if self.hold_hashes:
                self.held_hashes.append((store_id, job))
            else:
                core.on_hash_computed(job.region.id, job.index, job.pinned.run())
        for path in out.obsolete_files:
            path.unlink(missing_ok=True)
        for rid in out.generate_snapshots:
            snap, path = generate(
                self.engines[store_id], self.snap_dirs[store_id], rid, self.tree_shape
            )
            old = core.on_snapshot_generated(rid, snap, path)
            if old is not None:
                old.unlink(missing_ok=True)
        for to_store, msg, path in out.snapshot_sends:
            ok = self._send_snapshot(store_id, to_store, msg, path)
            core.report_snapshot(msg.region_id, msg.to_peer.id, ok)
        for region in out.split_checks:
            self._split_check(core, region)
        return True

    def finish_hashes(self) -> None:
        """Hash the held copies and hand each digest to its store."""
        held, self.held_hashes = self.held_hashes, []
        for store_id, job in held:
            digest = job.pinned.run()
            core = self.cores.get(store_id)
            if core is not None:
                core.on_hash_computed(job.region.id, job.index, digest)

    def alloc(self) -> int:
        self.next_id += 1
        return self.next_id

    def _split_check(self, core: StoreCore, region) -> None:  # type: ignore[no-untyped-def]
        assert self.split_limits is not None
        res = scan_region(core.engine, region, *self.split_limits)
        target = core.on_split_checked(
            region.id, res.size, res.keys, res.split_keys, region.epoch.version
        )
        if target is None:
            return
        ids = [(self.alloc(), tuple(self.alloc() for _ in target.peers)) for _ in res.split_keys]
        core.propose_split(("split", region.id), region.id, target.epoch, res.split_keys, ids)

    def _send_snapshot(self, from_store: int, to_store: int, msg, path) -> bool:  # type: ignore[no-untyped-def]
        target = self.cores.get(to_store)
        if target is None:
            return False
        snap = msg.message.snapshot
        desc = descriptor_of(snap)
        key = SnapshotKey(msg.region_id, desc.term, desc.index, StoreId(from_store))
        if self.tree_shape is not None:
            dest = self.snap_dirs[to_store].received(key, delta=True)
            try:
                delta = prepare(
                    path,
                    msg,
                    key,
                    lambda req: compare(self.engines[to_store], req),
                    self.delta_policy,
                    dest,
                )
            except (NoDelta, TreeError) as e:
                self.why_full.append(str(e))
            else:
                if target.on_snapshot_received(delta, dest):
                    self.deltas_delivered.append((from_store, to_store, msg.region_id))
                    self.delta_sizes.append((dest.stat().st_size, desc.size))
                    return True
                dest.unlink()
                self.why_full.append("refused")
        dest = self.snap_dirs[to_store].received(key)
        shutil.copyfile(path, dest)
        verify(dest, desc)
        if not target.on_snapshot_received(msg, dest):
            dest.unlink()
            return False
        self.snapshots_delivered.append((from_store, to_store, msg.region_id))
        return True

    def _deliver(self, from_store: int, by_store: dict, pings: Sequence[int] = ()) -> None:
        """Each store's batch, as the transport sends it: with the sender's
        incarnation, and empty to the stores in `pings` that get nothing
        else; a store in `cut` hears nothing from `from_store`."""
        incarnation = self.incarnations[from_store]
        for store_id in sorted(set(by_store) | set(pings)):
            msgs = by_store.get(store_id, [])
            core = self.cores.get(store_id)
            if core is None or (not msgs and store_id not in pings):
                continue
            if (from_store, store_id) in self.cut:
                continue
            core.heard_from_store(StoreId(from_store), incarnation)
            for m in msgs:
                if self.drop is None or not self.drop(m):
                    core.step_raft(m)

    def isolate(self, *stores: int) -> None:
        """Cut `stores` off from the others: every Raft message to or from
        them is dropped, and so is their liveness (store_node.hibernate)."""
        self.drop = lambda m: m.to_peer.store_id in stores or m.from_peer.store_id in stores
        pairs = {(a, b) for a in stores for b in self.cores if b not in stores}
        self.cut |= pairs | {(b, a) for a, b in pairs}

    def stabilize(self, max_rounds: int = 1000) -> None:
        for _ in range(max_rounds):
            if not any(self.run_round(s) for s in sorted(self.cores)):
                return
        raise AssertionError("cluster did not stabilize")

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for core in self.cores.values():
                core.tick()
            self.stabilize()

    def leader_of(self, region_id: int) -> tuple[int, PeerMeta] | None:
        for s, core in self.cores.items():
            peer = core.peers.get(region_id)
            if peer is not None and peer.is_leader():
                return s, peer.meta
        return None

    def context(self, region_id: int) -> Context:
        found = self.leader_of(region_id)
        assert found is not None, f"region {region_id} has no leader"
        store_id, meta = found
        region = self.cores[store_id].peers[region_id].region
        return Context(RegionId(region_id), region.epoch, meta)

    def change_peer(self, kind: ChangePeerType, peer: PeerMeta) -> None:
        """Region 1's leader proposes one membership change; then the
        cluster settles and ticks 3 times."""
        found = self.leader_of(1)
        assert found is not None, "region 1 has no leader"
        store = found[0]
        region = self.cores[store].peers[1].region
        err = self.cores[store].change_peer(
            ("cc", peer.id, kind), 1, region.epoch, ChangePeerRequest((ChangePeer(kind, peer),))
        )
        assert err is None, err
        self.stabilize()
        self.tick(3)


def bootstrapped(
    root: Path,
    store_ids: Sequence[int],
    config: CoreConfig | None = None,
    *,
    sync: bool = False,
    region_on: Sequence[int] | None = None,
    ticks: int = 40,
) -> CoreCluster:
    """A CoreCluster of `store_ids` with region 1 bootstrapped on the stores
    `region_on` (default: all of them), after `ticks` ticks."""
    c = CoreCluster(root, list(store_ids), config, sync=sync)
    c.bootstrap(make_region(1, stores=store_ids if region_on is None else region_on))
    c.tick(ticks)
    return c

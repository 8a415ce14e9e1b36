"""The simulation can fail: re-introduced bugs are caught.

Each test breaks one rule (with `monkeypatch`, undone after the test),
searches a bounded range of seeds of a chaos flavor suited to the bug until
the simulation reports a failure of the kind the bug should cause, and
replays the catching seed on the correct code to show the failure came from
the mutation. The bugs are the ones issue 11 found or guards against: a
write applied through a snapshot reported as not applied (finding 1), a
destroyed peer's raft state read by a new peer (finding 2), acknowledging
appends before they are durable, a retried write sent without its session,
a read served without ReadIndex; issue 13's leader leases (one that outlives
the election timeout, one kept through a leader transfer) and follower reads
(served from what the replica has applied, without asking the leader);
issue 14's hibernating regions (sleeping followers that do not wake when
their leader's store dies); issue 16's consistency checks (a copy hashed at
the end of its round instead of at the check's entry), incremental catch-up
(a delta install that writes the replaced sub-ranges without clearing them
first) and large values apart (blob records not synced before the kv/ commit
that points at them; blob files deleted before kv/ is durable past their
last pointer).

A run costs a second or two, so each search starts at the seed that caught
the bug when the test was written (in its `seeds`) and goes a few seeds
further. Those seeds move whenever the simulation's use of randomness
changes; if a search then fails, widen it: `SHARDKV_SOAK=1` searches seeds
0..199, and the first catching seed goes back into the test.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from kvproto.errorpb import RegionError, RegionNotFound, StaleCommand
from kvproto.kvrpcpb import Consistency, Context
from kvproto.metapb import Region, RegionId
from kvproto.raft_serverpb import SnapshotDescriptor
from raft.node import RaftNode, Ready
from raft.types import Snapshot
from store_node import (
    bootstrap,
    keys,
    persist,
    queries,
    region_hash,
    snapshot_control,
    snapshot_delta,
)
from store_node import core as core_module
from store_node.apply import ApplyOutcome, ApplyTask, apply_task
from store_node.blob_files import BlobFiles
from store_node.core import StoreCore
from store_node.engine import Engine
from store_node.freshness import Freshness
from store_node.hibernate import Hibernation
from store_node.peer import Peer, ReadPermit, Reply, Token
from store_node.peer_life import PeerLife
from store_node.region_tasks import DestroyTask, Range, subtract_ranges
from store_node.round_output import RoundOutput
from store_node.snapshot import descriptor_of
from tests.sim import client as sim_client
from tests.sim import cluster as sim_cluster
from tests.sim.cluster import Options, SimulationFailure, run

MUTATION_OPTIONS = Options(duration=10.0)


def _hunt(tmp_path: Path, seeds: Iterable[int], options: Options) -> tuple[int, SimulationFailure]:
    if os.environ.get("SHARDKV_SOAK"):
        seeds = range(200)
    passed: list[int] = []
    for seed in seeds:
        try:
            run(seed, tmp_path / f"m{seed}", options)
        except SimulationFailure as e:
            print(f"caught by seed {seed} (after {len(passed)} passing): {e.what}")
            return seed, e
        passed.append(seed)
    raise AssertionError(f"not caught: seeds {passed} all passed")


def _caught(
    tmp_path: Path,
    mutate: Callable[[pytest.MonkeyPatch], None],
    expected: tuple[str, ...],
    seeds: Iterable[int],
    options: Options = MUTATION_OPTIONS,
    correct_options: Options | None = None,
) -> None:
    with pytest.MonkeyPatch.context() as m:
        mutate(m)
        seed, failure = _hunt(tmp_path, seeds, options)
    assert any(e in failure.what for e in expected), failure.what
    # The same seed on the correct code passes: the mutation was the cause.
    run(seed, tmp_path / "replay", correct_options or options)


# -- finding 1: StaleCommand for a write applied through a snapshot ---------------------


def test_a_write_applied_by_snapshot_answered_stale_is_caught(tmp_path: Path) -> None:
    def resolve_snapshot(self: Peer, index: int, term: int) -> list[Reply]:
        replies = [
            Reply(t, StaleCommand())
            for p in self.proposals
            for t, _ in p.waiters
            if p.index <= index
        ]
        self.proposals = deque(p for p in self.proposals if p.index > index)
        return replies

    def mutate(m: pytest.MonkeyPatch) -> None:
        m.setattr(Peer, "resolve_snapshot", resolve_snapshot)

    # Without sessions a conditional write is retried only after proof that
    # it did not apply, so a wrong StaleCommand applies it twice.
    # The clients wait (one long attempt) for the answers of their writes to
    # a leader that went deaf: the entries commit under the next leader and
    # reach the old one in a snapshot.
    options = Options(
        duration=10.0,
        exactly_once=False,
        workload="conditional",
        flavor="deaf",
        clients=12,
        client_timeout=20.0,
        attempt_timeout=20.0,
    )
    # Caught by seed 2 when written (the seeds move with the workload).
    _caught(tmp_path, mutate, ("not linearizable",), range(2, 10), options)


# -- finding 2: a destroyed peer's raft state left for the next peer --------------------


def test_a_destroy_whose_raft_deletions_are_not_durable_is_caught(tmp_path: Path) -> None:
    def destroy(self: PeerLife, peer: Peer, others: list[Range], out: RoundOutput) -> None:
        # The old code: the raft/ deletions ride the next round's batch
        # unsynced, and nothing cleans them at start.
        region_id = peer.region_id
        out.replies.extend(peer.fail_all(RegionNotFound(RegionId(region_id))))
        if peer.initialized:
            parts = subtract_ranges((peer.region.start_key, peer.region.end_key), others)
            out.destroy_tasks.append(DestroyTask(peer.region, tuple(parts)))
            self.tombstones[region_id] = peer.region
        peer.storage.clear_log(out.raft_after_kv)
        out.raft_after_kv.delete(keys.STATE_DB, keys.region_key(region_id))

    def mutate(m: pytest.MonkeyPatch) -> None:
        m.setattr(PeerLife, "destroy", destroy)
        m.setattr(bootstrap, "clean_destroyed", lambda engine, tombstones: 0)

    options = Options(duration=10.0, flavor="bounces")
    # Caught ("log hole at 1") by seed 2 (25 when written; seeds move with the
    # simulation: incremental catch-up moved it).
    _caught(tmp_path, mutate, ("raised", "liveness", "replicas"), range(2, 8), options)


# -- acknowledging appends before they are durable ------------------------------------


def test_acknowledging_before_fsync_is_caught(tmp_path: Path) -> None:
    collect = StoreCore._collect

    def early_acks(self: StoreCore, peer: Peer, rd: Ready, out: RoundOutput) -> None:
        # A follower's answers go out with the messages that may leave
        # before the write: it vouches for entries it does not have yet.
        early = Ready(
            soft_state=rd.soft_state,
            hard_state=rd.hard_state,
            messages=rd.messages + rd.persisted_messages,
            snapshot=rd.snapshot,
            entries=rd.entries,
            persisted_messages=(),
            committed_entries=rd.committed_entries,
            read_states=rd.read_states,
            must_sync=rd.must_sync,
        )
        collect(self, peer, early, out)
        out.readies[-1] = (peer, rd)

    def mutate(m: pytest.MonkeyPatch) -> None:
        m.setattr(StoreCore, "_collect", early_acks)

    # A short settle: the broken cluster churns until the liveness check
    # gives up, which at the default 60 virtual seconds costs minutes.
    options = Options(duration=10.0, flavor="crashes", settle=15.0)
    # Caught by seed 28 (103 when first written, then 1; seeds move with the
    # simulation): a follower that lost entries it had acknowledged is never
    # sent them again (the leader believes it has them), so its replicas
    # never agree.
    expected = ("not linearizable", "replicas", "raised", "liveness")
    _caught(tmp_path, mutate, expected, range(28, 34), options)


# -- a retried write without its session --------------------------------------------------


def test_retrying_writes_without_sessions_is_caught(tmp_path: Path) -> None:
    def mutate(m: pytest.MonkeyPatch) -> None:
        pass

    options = Options(duration=10.0, exactly_once=False)
    # Caught by seed 3 when written (5 since incremental catch-up).
    _caught(
        tmp_path,
        mutate,
        ("not linearizable",),
        range(3, 10),
        options,
        correct_options=MUTATION_OPTIONS,
    )


# -- a read served without ReadIndex ------------------------------------------------------


def test_reads_served_without_read_index_are_caught(tmp_path: Path) -> None:
    def local_read(
        self: StoreCore,
        token: Token,
        ctx: Context,
        keys: Iterable[bytes],
        now: float | None = None,
    ) -> RegionError | ReadPermit | None:
        peer = self.check_context(ctx)
        if not isinstance(peer, Peer):
            return peer
        # Whatever this peer has applied, as soon as it thinks it leads.
        return ReadPermit(peer.region)

    def mutate(m: pytest.MonkeyPatch) -> None:
        m.setattr(StoreCore, "read", local_read)

    options = Options(duration=10.0, flavor="leaders")
    # Caught by seed 8 (40 when first written: a paused leader wakes up and
    # serves reads before it hears of the new term).
    _caught(tmp_path, mutate, ("not linearizable",), range(8, 14), options)


# -- leader leases ------------------------------------------------------------------------


# Deposed leaders serving some clients while the others, quick to give up on
# an attempt, find the successor and write there.
LEASE_OPTIONS = Options(duration=10.0, flavor="leases", clients=12, attempt_timeout=0.3, readers=4)


def test_a_lease_longer_than_the_election_timeout_is_caught(tmp_path: Path) -> None:
    def mutate(m: pytest.MonkeyPatch) -> None:
        # 3 s, where followers may elect another leader 1 s after they last
        # heard from this one: between that election and the old leader's
        # own quorum check, it answers reads its successor has overwritten.
        m.setattr(sim_cluster, "CORE_CONFIG", replace(sim_cluster.CORE_CONFIG, lease_seconds=3.0))

    # Caught by seed 21 of 0..21 when written (26 since incremental catch-up).
    _caught(tmp_path, mutate, ("not linearizable",), range(21, 27), LEASE_OPTIONS)


def test_a_lease_kept_through_a_leader_transfer_is_caught(tmp_path: Path) -> None:
    def mutate(m: pytest.MonkeyPatch) -> None:
        # The store never sees the transfer: the transferee wins at once
        # (its vote is granted despite our lease), and the old leader, which
        # hears nothing more, answers from its lease until its quorum check.
        m.setattr(RaftNode, "transferring_leadership", property(lambda self: False))

    # Caught by seed 20 of 0..20 (chaos "transfer_deaf"; seed 28 when written,
    # then 27).
    _caught(tmp_path, mutate, ("not linearizable",), range(20, 26), LEASE_OPTIONS)


# -- follower reads -----------------------------------------------------------------------


def test_follower_reads_served_without_a_read_index_are_caught(tmp_path: Path) -> None:
    def queue_replica_read(
        peer: Peer,
        token: Token,
        keys: Iterable[bytes],
        consistency: Consistency,
        max_staleness: float,
    ) -> RegionError | None:
        # Whatever the replica has applied, at once, as if it were current.
        return original(peer, token, keys, Consistency.STALE, 0.0)

    original = queries.queue_replica_read

    def mutate(m: pytest.MonkeyPatch) -> None:
        m.setattr(queries, "queue_replica_read", queue_replica_read)
        m.setattr(Freshness, "staleness", lambda self, now: 0.0)

    # Caught by seed 0 when written (6% of the workload's reads are follower
    # reads).
    _caught(tmp_path, mutate, ("not linearizable",), range(6))


# -- hibernating regions ------------------------------------------------------------------

OUTAGE_OPTIONS = Options(duration=20.0, flavor="outages")


def test_sleeping_followers_that_ignore_their_leaders_store_dying_are_caught(
    tmp_path: Path,
) -> None:
    def mutate(m: pytest.MonkeyPatch) -> None:
        # A sleeping follower is not ticked: unless the silence (or restart)
        # of its leader's store wakes it, it never counts towards an election.
        m.setattr(Hibernation, "_dependents", lambda self, store_id, why: [])

    # Caught by seed 0 when written (chaos "outages": idle regions asleep
    # when a store dies for 6-10 s; a probe 5 s in finds regions leaderless).
    _caught(
        tmp_path,
        mutate,
        ("regions without a leader while a quorum was up",),
        range(6),
        OUTAGE_OPTIONS,
    )


# -- issue 16's consistency checks --------------------------------------------------------

CHECK_OPTIONS = Options(duration=10.0, consistency_check_ticks=30, order_checks_every=0.5)


def test_a_copy_hashed_after_its_round_rather_than_at_the_check_is_caught(
    tmp_path: Path,
) -> None:
    def late_pins(
        engine: Engine, tasks: Sequence[ApplyTask], outcomes: list[ApplyOutcome]
    ) -> list[ApplyOutcome]:
        # The whole round applied first, the copies pinned only then: each
        # replica hashes its region as of wherever its round ended.
        skips = {t.region.id: t.skip_regions for t in tasks}
        checks: list[tuple[ApplyOutcome, Region, int, int]] = []
        while stopped := [o for o in outcomes if o.hash_check is not None]:
            for o in stopped:
                checks.append((o, o.region, o.apply_state.applied_index, o.hash_check or 0))
                o.hash_check = None
            resumed = [o for o in stopped if o.rest]
            done = engine.write_kv(
                lambda txn, resumed=resumed: [
                    apply_task(txn, ApplyTask(o.region, o.apply_state, o.rest, skips[o.region.id]))
                    for o in resumed
                ]
            )
            for o, more in zip(resumed, done, strict=True):
                region_hash._extend(o, more)
        for o, region, index, check_id in checks:
            pinned = engine.pin_kv(partial(region_hash.region_digest, region=region))
            o.hash_jobs.append(region_hash.HashJob(region, index, check_id, pinned))
        return outcomes

    def mutate(m: pytest.MonkeyPatch) -> None:
        m.setattr(persist, "finish_checks", late_pins)

    # Caught by seed 0 when written (followers apply a check's entry with
    # the writes after it in rounds of their own making).
    _caught(
        tmp_path,
        mutate,
        ("a consistency check found replicas that differ",),
        range(6),
        CHECK_OPTIONS,
    )


def test_healthy_runs_with_consistency_checks_find_no_mismatch(tmp_path: Path) -> None:
    for seed in range(3):
        report = run(seed, tmp_path / f"s{seed}", CHECK_OPTIONS)
        stats = report.store_stats
        # Checks ran, periodic and ordered, and every replica judged its own.
        assert stats["consistency_checks_proposed"] >= 10, report.summary()
        assert stats["consistency_checks_matched"] >= 2 * stats["consistency_checks_proposed"]
        assert stats["consistency_mismatches"] == 0


# -- incremental catch-up -----------------------------------------------------------------

CATCHUP_OPTIONS = Options(duration=10.0, flavor="catchup")


def test_a_delta_install_that_keeps_the_replaced_ranges_old_keys_is_caught(
    tmp_path: Path,
) -> None:
    install = snapshot_control.install

    def forgetful(
        peer: Peer, snap: Snapshot, path: Path, others: list[Range], out: RoundOutput
    ) -> None:
        install(peer, snap, path, others, out)
        if descriptor_of(snap).delta is not None:
            # The replaced sub-ranges are written over, not cleared first:
            # a key deleted on the leader stays on the follower.
            out.snapshot_tasks[-1] = replace(out.snapshot_tasks[-1], clear=())

    def mutate(m: pytest.MonkeyPatch) -> None:
        m.setattr(snapshot_control, "install", forgetful)

    # Caught by seed 0 when written (a follower whose delta left a deleted
    # key in place led later, and the final reads saw the old value); since
    # the simulation checks every install, by that install itself.
    expected = ("is not the snapshot's", "replicas", "not linearizable")
    _caught(tmp_path, mutate, expected, range(6), CATCHUP_OPTIONS)


def test_a_delta_installed_on_a_copy_that_moved_since_the_comparison_is_caught(
    tmp_path: Path,
) -> None:
    refusal = snapshot_delta.delta_refusal

    def lax(peer: Peer | None, to_peer: int, desc: SnapshotDescriptor) -> str | None:
        why = refusal(peer, to_peer, desc)
        return None if why is not None and why.startswith("the copy moved") else why

    def mutate(m: pytest.MonkeyPatch) -> None:
        m.setattr(core_module, "delta_refusal", lax)
        m.setattr(snapshot_control, "delta_refusal", lax)

    # With a few values a range can be equal at the comparison and at the
    # snapshot with writes between: a follower that applied one of them
    # after the comparison keeps it, as the delta leaves that range alone.
    options = replace(CATCHUP_OPTIONS, values="few", delta_delay=1.0)
    # Caught by seed 26 when written (26 passing before it).
    _caught(tmp_path, mutate, ("is not the snapshot's",), range(26, 34), options)


def test_chunks_of_one_region_sharing_a_session_number_are_caught(tmp_path: Path) -> None:
    def mutate(m: pytest.MonkeyPatch) -> None:
        # Every chunk under the call's number: a region answers its second
        # chunk from the first one's record, as a retry, and applies nothing.
        # (The rule is client.plan's; the simulation's client calls it.)
        m.setattr(sim_client, "own_numbers", lambda regions: [False] * len(regions))

    # Caught by seed 0 when written (the bug issue 16 found in client/batch.py,
    # which the simulation's client now shares the rule of).
    options = Options(duration=10.0, batch_max_keys=1)
    _caught(tmp_path, mutate, ("not linearizable",), range(6), options)


# -- large values apart (blob files) ------------------------------------------------------

BLOB_OPTIONS = Options(duration=10.0, flavor="crashes")


def test_blob_records_not_synced_before_the_kv_commit_are_caught(tmp_path: Path) -> None:
    def mutate(m: pytest.MonkeyPatch) -> None:
        # kv/ commits pointers to records a power loss may not keep.
        m.setattr(BlobFiles, "sync_appends", lambda self: None)

    # Caught by seed 0 when written: a power loss cuts a blob file under
    # pointers kv/ kept, and the next read of one of them fails its check.
    _caught(tmp_path, mutate, ("BlobError",), range(6), BLOB_OPTIONS)


def test_blob_files_deleted_before_kv_is_durable_are_caught(tmp_path: Path) -> None:
    reap = BlobFiles.reap

    def mutate(m: pytest.MonkeyPatch) -> None:
        # A file dead in kv/'s latest state is deleted at once, though a
        # power loss may undo the transaction that dropped its last pointer.
        m.setattr(BlobFiles, "reap", lambda self, durable_seq: reap(self, 1 << 62))

    _caught(tmp_path, mutate, ("BlobError",), range(10), BLOB_OPTIONS)

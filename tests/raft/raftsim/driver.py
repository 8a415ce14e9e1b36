"""How the simulation drives its nodes: their lives (bootstrap, start,
crash, restart, pause, destruction once removed from the group), their
inputs (ticks, messages, snapshot reports) and the handling of their
Readys, snapshots included.

How a node is driven (the contract of `raft.node`):

* an input (tick, message, proposal, ...) is stepped into its `RaftNode`;
  if there is no outstanding Ready and `has_ready()`, the node takes a
  Ready (at once, or a few time units later so that more inputs join it,
  like a store's round), sends `messages` at once and starts writing: the
  write completes
  in a later event (`_on_persist`), which makes snapshot, entries and hard
  state durable (one atomic write; lazily, i.e. lost by a crash until the
  next synced write, when `must_sync` is false and the seed allows it), then
  sends `persisted_messages`, installs the snapshot into the state machine,
  applies committed entries (conf changes via `apply_conf_change`), serves
  read states, calls `advance`, and maybe snapshots and compacts its log.
* a crash drops the RaftNode, its in-memory state machine and anything not
  yet durable (an outstanding Ready, unsynced writes, unsent persisted
  messages). It may land before a Ready's write, in the middle of it (a
  torn write: a prefix of snapshot, entries, hard state is durable), after
  it, or after the persisted messages went out. The disk (`SimDisk`, a
  MemoryStorage) survives. A restart builds a new RaftNode on the same disk
  with `applied` = the index of the disk's snapshot, whose data rebuilds the
  state machine; committed entries after it are applied again as Readys
  deliver them.

After every input the `Checker` (see `invariants.py`) checks the node it
touched.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from raft import (
    ConfChange,
    ConfChangeError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RaftNode,
    Role,
    Snapshot,
    SnapshotMetadata,
)
from raft.errors import SnapshotTemporarilyUnavailableError

from .app import KvStateMachine
from .disk import SimDisk
from .invariants import SKIPPED
from .world import SimNode, World

BOOT_INDEX = 1
BOOT_TERM = 1


class Driver:
    def __init__(self, world: World) -> None:
        self.world = world
        # The world's parts that never change, at hand.
        self.rng = world.rng
        self.params = world.params
        self.nodes = world.nodes
        self.checker = world.checker
        self.stats = world.stats
        self.schedule = world.schedule
        self.note = world.note
        self.guard = world.guard
        self._next_node_id = self.params.voters + 1
        # id(SNAPSHOT message) -> the sender's gen: reports go to that life only.
        self._snapshot_senders: dict[int, int] = {}

    # -- lives ---------------------------------------------------------------------------

    def bootstrap(self) -> None:
        ids = tuple(range(1, self.params.voters + 1))
        cs = ConfState(voters=ids)
        sm = KvStateMachine(BOOT_INDEX, 0, cs)
        snap = Snapshot(
            SnapshotMetadata(index=BOOT_INDEX, term=BOOT_TERM, conf_state=cs), sm.snapshot_data()
        )
        self.checker.bootstrap(snap, sm.digest)
        self.world.ever_members.update(ids)
        self.world.latest_conf = (BOOT_INDEX, cs)
        for nid in ids:
            disk = SimDisk()
            disk.apply_snapshot(snap)
            disk.set_hard_state(HardState(term=BOOT_TERM, commit=BOOT_INDEX))
            self._add_node(nid, disk)

    def _add_node(self, nid: int, disk: SimDisk) -> SimNode:
        jitter = max(1, self.params.tick_interval // 10)
        n = SimNode(nid, disk, self.params.tick_interval + self.rng.randint(-jitter, jitter))
        disk.snapshot_hook = lambda: self._snapshot_requested(n)
        self.nodes[nid] = n
        self._start(n)
        return n

    def add_empty_node(self) -> int:
        """Create a node with an empty disk (no config): a leader brings it in
        with a snapshot once a conf change adds it."""
        nid = self._next_node_id
        self._next_node_id += 1
        self._add_node(nid, SimDisk())
        self.note(nid, "created (empty)")
        return nid

    def allocate_node_id(self) -> int:
        """The id a new node will get from the next `add_empty_node`."""
        return self._next_node_id

    def _start(self, n: SimNode) -> None:
        snap = n.disk.stored_snapshot()
        if snap.is_empty:
            n.app = KvStateMachine(0, 0, ConfState())
        else:
            n.app = KvStateMachine.from_snapshot(snap)
            self.checker.on_snapshot_installed(n.id, snap, n.app)
        n.gen += 1
        n.rn = RaftNode(
            self.params.raft_config(n.id, n.app.applied),
            n.disk,
            random.Random(self.rng.getrandbits(64)),
        )
        n.rd = None
        n.ready_due = False
        n.snapshot_building = False
        self.checker.node_started(n.id, n.rn, n.disk.hard_state.commit)
        self.schedule(self.rng.randint(1, n.tick_every), self._on_tick, n, n.gen)
        self.after_input(n)

    def crash(self, nid: int, why: str = "crash") -> None:
        n = self.nodes[nid]
        if n.rn is None:
            return
        lost = n.disk.crash()
        self.note(nid, "CRASH", why + (" (unsynced writes lost)" if lost else ""))
        n.rn = None
        n.app = None
        n.rd = None
        n.gen += 1
        n.paused_until = 0
        self.checker.node_stopped(nid)
        self.stats["crashes"] += 1
        n.stats["crashes"] += 1

    def restart(self, nid: int) -> None:
        n = self.nodes[nid]
        if n.rn is not None or n.tombstone:
            return
        with self.guard():
            self._start(n)
        assert n.rn is not None
        self.note(nid, "RESTART", f"hs={n.disk.hard_state} applied={n.rn.applied_index}")
        self.stats["restarts"] += 1
        n.stats["restarts"] += 1

    def _on_tombstone(self, nid: int, _: Any) -> None:
        n = self.nodes[nid]
        if n.tombstone or nid in self.world.latest_conf[1].all_ids():
            return
        self.crash(nid, "removed from the group: destroyed")
        n.tombstone = True
        self.stats["tombstones"] += 1

    # -- inputs and Readys ------------------------------------------------------------------

    def after_input(self, n: SimNode) -> None:
        """After an input stepped into `n`'s RaftNode: take its Ready (now or
        a little later), check it, and call the leader hooks if it just
        started leading a term."""
        rn = n.rn
        assert rn is not None
        if n.rd is None and not n.ready_due and rn.has_ready():
            batch = self.params.batch_ready
            if batch and self.rng.random() < batch:
                # Like a store's round: more inputs may come before the Ready.
                n.ready_due = True
                self.schedule(self.rng.randint(1, 5), self._on_ready_due, n, n.gen)
            else:
                self._take_ready(n, rn)
        self.checker.after_step(n.id, rn)
        if rn.role == Role.LEADER and n.led_term != rn.term:
            n.led_term = rn.term
            self.note(n.id, "LEADER", f"term {rn.term}")
            for hook in self.world.leader_hooks:
                hook(n)

    def _take_ready(self, n: SimNode, rn: RaftNode) -> None:
        rd = rn.ready()
        n.rd = rd
        self.note(n.id, "ready", rd)
        send = self.world.net.send
        for m in rd.messages:
            if m.type == MessageType.SNAPSHOT:
                self._snapshot_senders[id(m)] = n.gen
            send(m)
        delay_max = self.params.persist_delay_max
        delay = self.rng.randint(0, delay_max) if delay_max else 0
        self.schedule(delay, self._on_persist, n, n.gen)

    def _on_ready_due(self, n: SimNode, gen: int) -> None:
        if n.gen != gen or self._paused(n, self._on_ready_due, n, gen):
            return
        n.ready_due = False
        assert n.rn is not None
        if n.rd is None and n.rn.has_ready():
            self._take_ready(n, n.rn)
        self.checker.after_step(n.id, n.rn)

    def pause(self, nid: int, duration: int) -> None:
        """Stall a node (a long GC pause, a frozen VM): its clock stops and
        everything addressed to it waits; then it resumes with the backlog."""
        n = self.nodes[nid]
        n.paused_until = max(n.paused_until, self.world.now + duration)
        self.note(nid, "PAUSE", f"until t={n.paused_until}")
        self.stats["pauses"] += 1

    def _paused(self, n: SimNode, fn: Callable[[Any, Any], None], a: Any, b: Any) -> bool:
        if self.world.now >= n.paused_until:
            return False
        self.schedule(n.paused_until - self.world.now, fn, a, b)
        return True

    def _on_tick(self, n: SimNode, gen: int) -> None:
        if n.gen != gen or self._paused(n, self._on_tick, n, gen):
            return
        assert n.rn is not None
        n.rn.tick()
        self.after_input(n)
        self.schedule(n.tick_every, self._on_tick, n, gen)

    def on_deliver(self, m: Message, _: Any) -> None:
        n = self.nodes.get(m.to)
        if n is None or n.rn is None:
            self.world.net.stats["dropped_down"] += 1
            self.on_drop(m, "to-down")
            return
        if self._paused(n, self.on_deliver, m, _):
            return
        if not self.world.net.on_arrival(m):
            return
        self.note(m.to, "recv", m)
        n.rn.step(m)
        if m.type == MessageType.SNAPSHOT:
            self.stats["snapshots_delivered"] += 1
            self.schedule(self.rng.randint(1, 10), self._on_snapshot_report, m, True)
        self.after_input(n)

    def on_drop(self, m: Message, reason: str) -> None:
        self.note(m.to, reason, m)
        if m.type == MessageType.SNAPSHOT:
            self.schedule(self.rng.randint(1, 30), self._on_snapshot_report, m, False)
        elif reason == "cut" and self.rng.random() < 0.05:
            self.schedule(self.rng.randint(1, 30), self._on_unreachable, m, None)

    def _on_snapshot_report(self, m: Message, success: bool) -> None:
        # The transport tells the life of the leader that sent it, once.
        gen = self._snapshot_senders.pop(id(m), None)
        n = self.nodes.get(m.from_)
        if n is None or n.rn is None or n.gen != gen:
            return
        if self._paused(n, self._on_snapshot_report, m, success):
            self._snapshot_senders[id(m)] = gen
            return
        self.note(n.id, "report_snapshot", f"to={m.to} success={success}")
        n.rn.report_snapshot(m.to, success)
        self.after_input(n)

    def _on_unreachable(self, m: Message, _: Any) -> None:
        n = self.nodes.get(m.from_)
        if n is None or n.rn is None:
            return
        n.rn.report_unreachable(m.to)
        self.after_input(n)

    def _on_persist(self, n: SimNode, gen: int) -> None:
        if n.gen != gen or self._paused(n, self._on_persist, n, gen):
            return
        rd = n.rd
        rn = n.rn
        assert rd is not None and rn is not None and n.app is not None
        rng = self.rng
        p = self.params
        sync = rd.must_sync or not (p.lazy_sync and rng.random() < p.lazy_sync)
        if sync and p.crash_in_persist and rng.random() < p.crash_in_persist:
            parts = SimDisk.parts_of(rd.snapshot, rd.entries, rd.hard_state)
            if parts > 1:
                done = n.disk.write_ready(
                    rd.snapshot, rd.entries, rd.hard_state, sync, rng.randrange(1, parts)
                )
                self.stats["torn_writes"] += 1
                self._crash_in_persist(n, f"torn write: only {' and '.join(done)} written")
                return
        n.disk.write_ready(rd.snapshot, rd.entries, rd.hard_state, sync)
        self.note(n.id, "persisted" if sync else "written (unsynced)")
        self.checker.on_persisted(n.id, rd, n.disk.hard_state)
        if p.crash_in_persist and rng.random() < p.crash_in_persist:
            self._crash_in_persist(n, "after the write, before persisted messages")
            return
        send = self.world.net.send
        for m in rd.persisted_messages:
            send(m)
        if p.crash_in_persist and rng.random() < p.crash_in_persist:
            self._crash_in_persist(n, "after persisted messages, before applying")
            return
        if rd.snapshot is not None:
            sm = KvStateMachine.from_snapshot(rd.snapshot)
            self.checker.on_snapshot_installed(n.id, rd.snapshot, sm)
            n.app = sm
            n.installed_snapshot = rd.snapshot.metadata.index
            self.stats["snapshots_installed"] += 1
            n.stats["snapshots_installed"] += 1
            self.note(n.id, "installed snapshot", rd.snapshot.metadata.index)
        if rd.committed_entries:
            self.note(n.id, "apply", rd.committed_entries)
            for e in rd.committed_entries:
                self._apply(n, e)
        for rs in rd.read_states:
            self.checker.on_read_state(n.id, rs)
        rn.advance(rd)
        n.rd = None
        every = p.snapshot_every
        if every and n.app.applied - n.disk.stored_snapshot().metadata.index >= every:
            self.take_snapshot(n)
        self.after_input(n)

    def _crash_in_persist(self, n: SimNode, why: str) -> None:
        self.crash(n.id, why)
        self.schedule(self.rng.randint(20, 400), self._on_restart, n.id, n.gen)

    def _on_restart(self, nid: int, gen: int) -> None:
        if self.nodes[nid].gen == gen:  # still down since that crash
            self.restart(nid)

    def _apply(self, n: SimNode, e: Entry) -> None:
        app = n.app
        rn = n.rn
        assert app is not None and rn is not None
        if e.type != EntryType.CONF_CHANGE:
            app.apply(e)
            self.checker.on_apply(n.id, e, app.digest)
            return
        cc = ConfChange.decode(e.data)
        outcome: Any
        try:
            cs = rn.apply_conf_change(cc)
        except ConfChangeError:
            outcome = SKIPPED
        else:
            outcome = app.conf_state = cs
        app.apply(e)
        self.checker.on_apply(n.id, e, app.digest, outcome)
        if outcome is not SKIPPED and e.index > self.world.latest_conf[0]:
            self._config_committed(e.index, outcome)

    def _config_committed(self, index: int, cs: ConfState) -> None:
        self.world.latest_conf = (index, cs)
        self.stats["conf_changes_applied"] += 1
        members = set(cs.all_ids())
        self.world.ever_members |= members
        for nid in sorted(self.world.ever_members - members):
            # Removed by a committed config: destroy it a little later (as
            # the store would, once it learns so), so it cannot disrupt the
            # group by campaigning with a config that still holds it.
            self.schedule(self.rng.randint(0, 50), self._on_tombstone, nid, None)

    # -- snapshots ----------------------------------------------------------------------

    def take_snapshot(self, n: SimNode, compact: bool = True) -> None:
        app = n.app
        disk = n.disk
        assert app is not None
        if app.applied <= disk.stored_snapshot().metadata.index:
            return
        snap = disk.create_snapshot(app.applied, app.conf_state, app.snapshot_data())
        disk.sync()  # a snapshot is written durably (with the commit it needs)
        self.checker.on_snapshot_created(n.id, snap, app)
        self.stats["snapshots_taken"] += 1
        upto = app.applied - self.params.compact_keep
        if compact and upto > disk.first_index() - 1:
            disk.compact(upto)
            self.stats["compactions"] += 1
        self.note(n.id, "snapshot taken", f"at {app.applied}, log from {disk.first_index()}")

    def _snapshot_requested(self, n: SimNode) -> None:
        """The Raft core wants a snapshot to send: like a store, build a fresh
        one (asynchronously) when the stored one is behind what is applied."""
        if n.snapshot_building:
            raise SnapshotTemporarilyUnavailableError("building")
        app = n.app
        if app is None or app.applied <= n.disk.stored_snapshot().metadata.index:
            return
        if self.rng.random() < self.params.fresh_snapshot:
            n.snapshot_building = True
            self.schedule(self.rng.randint(1, 30), self._on_snapshot_built, n, n.gen)
            raise SnapshotTemporarilyUnavailableError("building")

    def _on_snapshot_built(self, n: SimNode, gen: int) -> None:
        if n.gen != gen:
            return
        n.snapshot_building = False
        self.take_snapshot(n, compact=False)

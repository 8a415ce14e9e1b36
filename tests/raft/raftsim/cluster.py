"""A deterministic simulation of a Raft group: nodes, disks, network, time.

One plain-Python event loop: a heap of timed events (ticks per node, message
deliveries, disk writes completing, snapshot reports, workload actions),
processed one at a time; each processed event is one *step*. One
`random.Random(seed)` makes every random choice (timing, faults, crash
points, workload, and the seed of each RaftNode's own rng), so a seed
replays exactly. No trio: its scheduler shuffles on purpose.

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

After every step the `Checker` (see `invariants.py`) checks the node the
step touched. A failure raises `SafetyViolation`, `LivenessFailure` or
`RaftCrashed` carrying the seed, step, last events, node states and a
`reproduce:` line.

Liveness (`heal` then `await_leader`, `drain`, `await_catch_up`): once the
network is healed (no cuts, no loss, delays of at most `Faults.delay_max`
time units, under two ticks) and every crashed member restarted, a leader
with a quorum of followers in its term must exist within
`LEADER_BOUND_ELECTIONS * election_ticks` ticks (with PreVote; see
`LEADER_BOUND_ELECTIONS_NO_PREVOTE` without). Why that bound: a deposed
leader steps down within one election timeout (CheckQuorum), followers stop
honouring a leader's lease one election timeout after hearing from it, and
every follower campaigns within its randomized timeout (< 2 election
timeouts) after that; each further round of split votes costs at most
2 election timeouts, so 10 election timeouts leave room for three failed
rounds after the first. Then every accepted proposal must be decided
(committed, or overwritten by another committed entry) within
`DRAIN_BOUND_ELECTIONS` election timeouts plus `ticks_per_entry()` per
undecided index (a window of `max_inflight` one-entry appends per round
trip may be all that moves), proposals of a leader that kept its leadership
to the end must be committed, and every live member must apply everything
committed within `CATCH_UP_BOUND_ELECTIONS` election timeouts (plus
`ticks_per_entry()` per entry the furthest behind node lacks).
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeSingle,
    ConfChangeTransition,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDroppedError,
    RaftNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
)
from raft.describe import describe_raft
from raft.errors import SnapshotTemporarilyUnavailableError
from raft.quorum import VoteResult

from .app import KvStateMachine, conf_context, encode_proposal
from .disk import SimDisk
from .invariants import SKIPPED, Checker
from .network import Faults, Network
from .trace import (
    TRACE_LEN,
    LivenessFailure,
    RaftCrashed,
    SafetyViolation,
    SimulationFailure,
    Trace,
    Violation,
)

LEADER_BOUND_ELECTIONS = 10
# Without PreVote a node whose log cannot win still bumps the term each time
# it times out, resetting everyone's timer; a round elects a leader only if a
# node with a winning log times out first (probability >= 1/voters), so the
# bound is probabilistic: 100 election timeouts (measured worst: 19).
LEADER_BOUND_ELECTIONS_NO_PREVOTE = 100
DRAIN_BOUND_ELECTIONS = 30
CATCH_UP_BOUND_ELECTIONS = 40

BOOT_INDEX = 1
BOOT_TERM = 1


@dataclass(slots=True)
class Options:
    """Shape of a simulated cluster. `None` fields are drawn from the seed."""

    voters: int | None = None  # founding voters (3 or 5)
    election_ticks: int = 10
    heartbeat_ticks: int | None = None
    pre_vote: bool | None = None
    check_quorum: bool | None = None
    max_inflight: int | None = None
    max_inflight_bytes: int | None = None
    max_size_per_msg: int | None = None
    # Small: committed entries are handed out over several Readys.
    max_committed_size_per_ready: int | None = None
    step_down_on_removal: bool | None = None
    tick_interval: int = 10  # time units per tick (each node drifts +-10%)
    persist_delay_max: int | None = None
    # Probability that a Ready without must_sync is written lazily.
    lazy_sync: float | None = None
    # Probability of a crash at each point inside the handling of a Ready:
    # in the middle of its write (torn), after it, after persisted messages.
    crash_in_persist: float | None = None
    # Take a snapshot every this many applied entries (0: never).
    snapshot_every: int | None = None
    # Entries kept in the log below a snapshot when compacting.
    compact_keep: int | None = None
    # Probability that a leader asked for a stale snapshot builds a new one.
    fresh_snapshot: float = 0.7
    # Probability that a node defers ready() a little after an input, so
    # that several inputs go into one Ready (a store's round).
    batch_ready: float | None = None


@dataclass(slots=True)
class SimNode:
    id: int
    disk: SimDisk
    tick_every: int
    rn: RaftNode | None = None
    app: KvStateMachine | None = None
    gen: int = 0  # bumped by crash and restart: events of older lives are void
    rd: Ready | None = None  # the outstanding Ready, being written
    tombstone: bool = False  # removed from the group and destroyed
    snapshot_building: bool = False
    led_term: int = 0  # the last term this node was seen leading
    installed_snapshot: int = 0  # index of the last snapshot it installed from a leader
    paused_until: int = 0  # a stalled process: its events wait until then
    ready_due: bool = False  # a deferred ready() is scheduled
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def alive(self) -> bool:
        return self.rn is not None


T = TypeVar("T")


def _draw(value: T | None, draw: Callable[[], T]) -> T:
    return draw() if value is None else value


class Simulation:
    def __init__(
        self,
        seed: int,
        options: Options | None = None,
        *,
        reproduce: str = "",
        trace_len: int | None = TRACE_LEN,
        rng: random.Random | None = None,
    ) -> None:
        """`rng`, if given, must be `random.Random(seed)` (possibly already
        used by the caller to pick `options`): the one source of randomness."""
        self.seed = seed
        self.reproduce = reproduce or f"Simulation(seed={seed})"
        self.rng = rng = rng if rng is not None else random.Random(seed)
        o = options or Options()
        self.voters = _draw(o.voters, lambda: rng.choice((3, 3, 5)))
        self.election_ticks = o.election_ticks
        self.heartbeat_ticks = _draw(o.heartbeat_ticks, lambda: rng.choice((1, 2, 3)))
        self.pre_vote = _draw(o.pre_vote, lambda: rng.random() < 0.8)
        self.check_quorum = _draw(o.check_quorum, lambda: rng.random() < 0.8)
        self.max_inflight = _draw(o.max_inflight, lambda: rng.choice((1, 4, 64)))
        self.max_size_per_msg = _draw(o.max_size_per_msg, lambda: rng.choice((1, 64, 1 << 20)))
        self.max_inflight_bytes = _draw(o.max_inflight_bytes, lambda: rng.choice((0, 0, 100)))
        self.max_committed_size_per_ready = _draw(
            o.max_committed_size_per_ready, lambda: rng.choice((1, 100, 64 << 20))
        )
        self.step_down_on_removal = _draw(o.step_down_on_removal, lambda: rng.random() < 0.8)
        self.tick_interval = o.tick_interval
        self.persist_delay_max = _draw(o.persist_delay_max, lambda: rng.choice((0, 5, 20)))
        self.lazy_sync = _draw(o.lazy_sync, lambda: rng.choice((0.0, 0.5)))
        self.crash_in_persist = _draw(o.crash_in_persist, lambda: rng.choice((0.0, 0.003)))
        self.snapshot_every = _draw(o.snapshot_every, lambda: rng.choice((0, 8, 30)))
        self.compact_keep = _draw(o.compact_keep, lambda: rng.choice((0, 3, 20)))
        self.fresh_snapshot = o.fresh_snapshot
        self.batch_ready = _draw(o.batch_ready, lambda: rng.choice((0.0, 0.5)))
        self.flavor = "custom"  # the kind of chaos, set by whoever drives it

        self.now = 0
        self.step = 0
        self._seq = 0
        self._heap: list[tuple[int, int, Callable[[Any, Any], None], Any, Any]] = []
        self.trace = Trace(trace_len)
        self.checker = Checker()
        self.net = Network(rng, self.schedule, self._on_deliver, self._on_drop)
        self.nodes: dict[int, SimNode] = {}
        self.stats: Counter[str] = Counter()
        self._next_pid = 1
        self._next_read = 1
        self._next_node_id = self.voters + 1
        # Ids ever in an applied config, and the latest committed config.
        self.ever_members: set[int] = set()
        self.latest_conf: tuple[int, ConfState] = (0, ConfState())
        # Called with a node right after it is first seen leading a term.
        self.leader_hooks: list[Callable[[SimNode], None]] = []
        # id(SNAPSHOT message) -> the sender's gen: reports go to that life only.
        self._snapshot_senders: dict[int, int] = {}
        self._bootstrap()

    def describe_params(self) -> str:
        return (
            f"flavor={self.flavor} voters={self.voters} election={self.election_ticks} "
            f"heartbeat={self.heartbeat_ticks} prevote={self.pre_vote} "
            f"checkquorum={self.check_quorum} inflight={self.max_inflight} "
            f"inflight_bytes={self.max_inflight_bytes} msgsize={self.max_size_per_msg} "
            f"ready_apply_bytes={self.max_committed_size_per_ready} "
            f"stepdown={self.step_down_on_removal} persist_delay<={self.persist_delay_max} "
            f"lazy_sync={self.lazy_sync} crash_in_persist={self.crash_in_persist} "
            f"snapshot_every={self.snapshot_every} keep={self.compact_keep} "
            f"batch_ready={self.batch_ready}"
        )

    # -- the event loop -----------------------------------------------------------------

    def schedule(
        self, delay: int, fn: Callable[[Any, Any], None], a: Any = None, b: Any = None
    ) -> None:
        heapq.heappush(self._heap, (self.now + delay, self._seq, fn, a, b))
        self._seq += 1

    def run_steps(self, n: int, until: Callable[[], bool] | None = None) -> bool:
        """Process `n` events (or fewer, once `until()` holds after one)."""
        return self._loop(self.step + n, None, until)

    def run_until(self, until: Callable[[], bool], *, max_time: int) -> bool:
        """Process events until `until()` holds or simulation time passes
        `max_time` (absolute); returns whether `until()` held."""
        return self._loop(None, max_time, until)

    def run_for(self, duration: int) -> None:
        self._loop(None, self.now + duration, None)

    def _loop(
        self, max_step: int | None, max_time: int | None, until: Callable[[], bool] | None
    ) -> bool:
        heap = self._heap
        pop = heapq.heappop
        with self.guard():
            if until is not None and until():
                return True
            while heap:
                if max_step is not None and self.step >= max_step:
                    return False
                if max_time is not None and heap[0][0] > max_time:
                    self.now = max_time
                    return False
                t, _, fn, a, b = pop(heap)
                self.now = t
                self.step += 1
                fn(a, b)
                if until is not None and until():
                    return True
            raise AssertionError("the event heap ran dry")

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn anything raised inside into a SimulationFailure with the seed,
        the trace and the reproduce line."""
        try:
            yield
        except SimulationFailure:
            raise
        except Violation as v:
            raise self.failure(SafetyViolation, str(v), invariant=v.invariant) from v
        except Exception as e:
            raise self.failure(RaftCrashed, f"{type(e).__name__}: {e}") from e

    def failure(self, cls: type[SimulationFailure], reason: str, **kw: Any) -> SimulationFailure:
        return cls(
            seed=self.seed,
            step=self.step,
            time=self.now,
            reason=reason,
            report=self.report_text(),
            reproduce=self.reproduce,
            **kw,
        )

    def report_text(self) -> str:
        n = len(self.trace.events)
        lines = [f"params: {self.describe_params()}", f"last {n} events:", self.trace.render()]
        lines.append("nodes:")
        for node in self.nodes.values():
            if node.tombstone:
                lines.append(f"{node.id}: tombstone")
            elif node.rn is None:
                lines.append(f"{node.id}: DOWN (disk: {node.disk.hard_state})")
            else:
                lines.append(describe_raft(node.rn.raft))
        if self.net.cut_links:
            lines.append(f"cut links: {sorted(self.net.cut_links)}")
        return "\n".join(lines)

    def note(self, node: int, what: str, obj: Any = None) -> None:
        self.trace.add(self.step, self.now, node, what, obj)

    # -- nodes ---------------------------------------------------------------------------

    def _config(self, nid: int, applied: int) -> Config:
        return Config(
            id=nid,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_size_per_msg=self.max_size_per_msg,
            max_inflight_msgs=self.max_inflight,
            max_inflight_bytes=self.max_inflight_bytes,
            max_committed_size_per_ready=self.max_committed_size_per_ready,
            step_down_on_removal=self.step_down_on_removal,
            applied=applied,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
        )

    def _bootstrap(self) -> None:
        ids = tuple(range(1, self.voters + 1))
        cs = ConfState(voters=ids)
        sm = KvStateMachine(BOOT_INDEX, 0, cs)
        snap = Snapshot(
            SnapshotMetadata(index=BOOT_INDEX, term=BOOT_TERM, conf_state=cs), sm.snapshot_data()
        )
        self.checker.bootstrap(snap, sm.digest)
        self.ever_members.update(ids)
        self.latest_conf = (BOOT_INDEX, cs)
        for nid in ids:
            disk = SimDisk()
            disk.apply_snapshot(snap)
            disk.set_hard_state(HardState(term=BOOT_TERM, commit=BOOT_INDEX))
            self._add_node(nid, disk)

    def _add_node(self, nid: int, disk: SimDisk) -> SimNode:
        jitter = max(1, self.tick_interval // 10)
        n = SimNode(nid, disk, self.tick_interval + self.rng.randint(-jitter, jitter))
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
            self._config(n.id, n.app.applied), n.disk, random.Random(self.rng.getrandbits(64))
        )
        n.rd = None
        n.ready_due = False
        n.snapshot_building = False
        self.checker.node_started(n.id, n.rn, n.disk.hard_state.commit)
        self.schedule(self.rng.randint(1, n.tick_every), self._on_tick, n, n.gen)
        self._after_input(n)

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
        if n.tombstone or nid in self.latest_conf[1].all_ids():
            return
        self.crash(nid, "removed from the group: destroyed")
        n.tombstone = True
        self.stats["tombstones"] += 1

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.rn is not None]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.rn is not None and n.rn.role == Role.LEADER]

    def leader(self) -> SimNode | None:
        """The live leader of the highest term, if any."""
        best: SimNode | None = None
        best_term = -1
        for n in self.leaders():
            term = n.rn.term if n.rn is not None else -1
            if term > best_term:
                best, best_term = n, term
        return best

    # -- event handlers ---------------------------------------------------------------------

    def _after_input(self, n: SimNode) -> None:
        rn = n.rn
        assert rn is not None
        if n.rd is None and not n.ready_due and rn.has_ready():
            if self.batch_ready and self.rng.random() < self.batch_ready:
                # Like a store's round: more inputs may come before the Ready.
                n.ready_due = True
                self.schedule(self.rng.randint(1, 5), self._on_ready_due, n, n.gen)
            else:
                self._take_ready(n, rn)
        self.checker.after_step(n.id, rn)
        if rn.role == Role.LEADER and n.led_term != rn.term:
            n.led_term = rn.term
            self.note(n.id, "LEADER", f"term {rn.term}")
            for hook in self.leader_hooks:
                hook(n)

    def _take_ready(self, n: SimNode, rn: RaftNode) -> None:
        rd = rn.ready()
        n.rd = rd
        self.note(n.id, "ready", rd)
        send = self.net.send
        for m in rd.messages:
            if m.type == MessageType.SNAPSHOT:
                self._snapshot_senders[id(m)] = n.gen
            send(m)
        delay = self.rng.randint(0, self.persist_delay_max) if self.persist_delay_max else 0
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
        n.paused_until = max(n.paused_until, self.now + duration)
        self.note(nid, "PAUSE", f"until t={n.paused_until}")
        self.stats["pauses"] += 1

    def _paused(self, n: SimNode, fn: Callable[[Any, Any], None], a: Any, b: Any) -> bool:
        if self.now >= n.paused_until:
            return False
        self.schedule(n.paused_until - self.now, fn, a, b)
        return True

    def _on_tick(self, n: SimNode, gen: int) -> None:
        if n.gen != gen or self._paused(n, self._on_tick, n, gen):
            return
        assert n.rn is not None
        n.rn.tick()
        self._after_input(n)
        self.schedule(n.tick_every, self._on_tick, n, gen)

    def _on_deliver(self, m: Message, _: Any) -> None:
        n = self.nodes.get(m.to)
        if n is None or n.rn is None:
            self.net.stats["dropped_down"] += 1
            self._on_drop(m, "to-down")
            return
        if self._paused(n, self._on_deliver, m, _):
            return
        if not self.net.on_arrival(m):
            return
        self.note(m.to, "recv", m)
        n.rn.step(m)
        if m.type == MessageType.SNAPSHOT:
            self.stats["snapshots_delivered"] += 1
            self.schedule(self.rng.randint(1, 10), self._on_snapshot_report, m, True)
        self._after_input(n)

    def _on_drop(self, m: Message, reason: str) -> None:
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
        self._after_input(n)

    def _on_unreachable(self, m: Message, _: Any) -> None:
        n = self.nodes.get(m.from_)
        if n is None or n.rn is None:
            return
        n.rn.report_unreachable(m.to)
        self._after_input(n)

    def _on_persist(self, n: SimNode, gen: int) -> None:
        if n.gen != gen or self._paused(n, self._on_persist, n, gen):
            return
        rd = n.rd
        rn = n.rn
        assert rd is not None and rn is not None and n.app is not None
        rng = self.rng
        sync = rd.must_sync or not (self.lazy_sync and rng.random() < self.lazy_sync)
        if sync and self.crash_in_persist and rng.random() < self.crash_in_persist:
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
        if self.crash_in_persist and rng.random() < self.crash_in_persist:
            self._crash_in_persist(n, "after the write, before persisted messages")
            return
        send = self.net.send
        for m in rd.persisted_messages:
            send(m)
        if self.crash_in_persist and rng.random() < self.crash_in_persist:
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
        if self.snapshot_every and n.app.applied - n.disk.stored_snapshot().metadata.index >= (
            self.snapshot_every
        ):
            self.take_snapshot(n)
        self._after_input(n)

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
        if outcome is not SKIPPED and e.index > self.latest_conf[0]:
            self._config_committed(e.index, outcome)

    def _config_committed(self, index: int, cs: ConfState) -> None:
        self.latest_conf = (index, cs)
        self.stats["conf_changes_applied"] += 1
        members = set(cs.all_ids())
        self.ever_members |= members
        for nid in sorted(self.ever_members - members):
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
        upto = app.applied - self.compact_keep
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
        if self.rng.random() < self.fresh_snapshot:
            n.snapshot_building = True
            self.schedule(self.rng.randint(1, 30), self._on_snapshot_built, n, n.gen)
            raise SnapshotTemporarilyUnavailableError("building")

    def _on_snapshot_built(self, n: SimNode, gen: int) -> None:
        if n.gen != gen:
            return
        n.snapshot_building = False
        self.take_snapshot(n, compact=False)

    # -- client operations ----------------------------------------------------------------

    def propose(self, nid: int, kind: str = "put") -> int | None:
        """Propose a fresh put at `nid`; returns its index, None if refused."""
        n = self.nodes[nid]
        rn = n.rn
        if rn is None:
            return None
        pid = self._next_pid
        self._next_pid += 1
        data = encode_proposal(pid, self.rng.randrange(16), pid)
        with self.guard():
            try:
                index = rn.propose(data)
            except ProposalDroppedError as e:
                self.checker.proposal_refused(e)
                self.note(nid, "propose refused", f"p{pid}: {e}")
                return None
            self.checker.proposal_accepted(pid, kind, nid, rn.term, index)
            self.note(nid, "propose", f"p{pid} at {rn.term}/{index}")
            self._after_input(n)
        return index

    def propose_conf_change(
        self,
        nid: int,
        changes: tuple[ConfChangeSingle, ...],
        transition: ConfChangeTransition = ConfChangeTransition.AUTO,
    ) -> int | None:
        n = self.nodes[nid]
        rn = n.rn
        if rn is None:
            return None
        pid = self._next_pid
        self._next_pid += 1
        cc = ConfChange(changes, transition, conf_context(pid))
        with self.guard():
            try:
                index = rn.propose_conf_change(cc)
            except (ProposalDroppedError, ConfChangeError) as e:
                self.checker.proposal_refused(e)
                self.note(nid, "conf change refused", f"c{pid} {cc}: {e}")
                return None
            self.checker.proposal_accepted(pid, "conf", nid, rn.term, index)
            self.note(nid, "propose conf change", f"c{pid} at {rn.term}/{index}: {cc}")
            self._after_input(n)
        return index

    def read_index(self, nid: int) -> None:
        n = self.nodes[nid]
        if n.rn is None:
            return
        ctx = b"r%d" % self._next_read
        self._next_read += 1
        with self.guard():
            self.checker.on_read_request(ctx)
            try:
                n.rn.read_index(ctx)
            except ProposalDroppedError as e:
                self.checker.on_read_refused(ctx)
                self.note(nid, "read_index refused", f"{ctx.decode()}: {e}")
                return
            self.note(nid, "read_index", ctx.decode())
            self._after_input(n)

    def transfer_leader(self, nid: int, to: int) -> None:
        n = self.nodes[nid]
        if n.rn is None:
            return
        with self.guard():
            n.rn.transfer_leader(to)
            self.note(nid, "transfer_leader", f"to {to}")
            self._after_input(n)

    # -- liveness -----------------------------------------------------------------------------

    def ticks_per_entry(self) -> int:
        """Worst ticks to replicate and apply one more entry when throughput
        is the limit: at least `max_inflight` entries per round trip (two
        network delays, a follower's write, the leader's write), and at
        least one entry per Ready (a deferred ready(), a write)."""
        rtt = 2 * Faults().delay_max + 2 * self.persist_delay_max
        replicate = -(-rtt // (self.tick_interval * self.max_inflight))
        apply = -(-(self.persist_delay_max + 6) // self.tick_interval)
        return replicate + apply + 1

    def max_tick_time(self, ticks: int) -> int:
        return ticks * (self.tick_interval + max(1, self.tick_interval // 10))

    def heal(self) -> None:
        """End every fault: no cuts, no loss, no crash points; restart every
        crashed node that is still a member."""
        self.note(0, "HEAL")
        self.net.heal()
        self.net.faults = Faults()
        self.crash_in_persist = 0.0
        for n in list(self.nodes.values()):
            n.paused_until = min(n.paused_until, self.now)
            if n.rn is None and not n.tombstone:
                self.restart(n.id)

    def stable_leader(self) -> SimNode | None:
        """A live leader that a quorum of its voters follows in its term."""
        for n in self.leaders():
            r = n.rn.raft  # type: ignore[union-attr]
            following: dict[int, bool] = {}
            for i in r.trk.config.voters.ids():
                f = self.nodes.get(i)
                if f is not None and f.rn is not None:
                    fr = f.rn.raft
                    if fr.term == r.term and fr.lead == r.id:
                        following[i] = True
            if r.trk.config.voters.vote_result(following) == VoteResult.WON:
                return n
        return None

    def await_leader(self) -> int:
        """Run until a stable leader exists; returns the ticks it took."""
        start = self.now
        rounds = LEADER_BOUND_ELECTIONS if self.pre_vote else LEADER_BOUND_ELECTIONS_NO_PREVOTE
        bound = rounds * self.election_ticks
        ok = self.run_until(
            lambda: self.stable_leader() is not None, max_time=start + self.max_tick_time(bound)
        )
        if not ok:
            raise self.failure(LivenessFailure, f"no stable leader within {bound} ticks of healing")
        return (self.now - start) // self.tick_interval

    def undecided(self) -> list[int]:
        c = self.checker
        return [pid for pid, p in c.proposals.items() if c.proposal_outcome(p) == "undecided"]

    def drain(self) -> int:
        """Propose fillers through the leader until every accepted proposal
        is decided and a filler committed; returns the ticks it took."""
        start = self.now
        c = self.checker
        lead = self.stable_leader()
        top = max((p.index for p in c.proposals.values()), default=0)
        backlog = max(0, top - lead.rn.commit_index) if lead and lead.rn else top
        bound = DRAIN_BOUND_ELECTIONS * self.election_ticks + backlog * self.ticks_per_entry()
        deadline = start + self.max_tick_time(bound)
        fillers: list[int] = []
        while True:
            committed_filler = any(
                c.proposal_outcome(c.proposals[p]) == "committed" for p in fillers
            )
            if committed_filler and not self.undecided():
                return (self.now - start) // self.tick_interval
            if self.now >= deadline:
                raise self.failure(
                    LivenessFailure,
                    f"proposals {self.undecided()[:20]} still undecided {bound} ticks after "
                    "a leader was elected",
                )
            lead = self.stable_leader()
            if lead is not None and lead.rn is not None:
                top = max((p.index for p in c.proposals.values()), default=0)
                mine = [p for p in fillers if c.proposals[p].term == lead.rn.term]
                gap = top - lead.rn.last_index
                for _ in range(max(0 if mine else 1, min(gap, 32))):
                    idx = self.propose(lead.id, kind="filler")
                    if idx is None:
                        break
                    fillers.append(self._next_pid - 1)
            self.run_for(self.tick_interval)

    def await_catch_up(self) -> int:
        """Run until every member of the leader's config applied all that was
        committed when this began (writing a little meanwhile, so snapshots
        keep being taken); returns the ticks it took."""
        start = self.now
        lead = self.stable_leader()
        if lead is None:
            self.await_leader()
            lead = self.stable_leader()
        assert lead is not None and lead.rn is not None
        target = lead.rn.commit_index
        behind = min((n.app.applied for n in self.nodes.values() if n.app is not None), default=0)
        backlog = max(0, target - behind)
        bound = CATCH_UP_BOUND_ELECTIONS * self.election_ticks + backlog * self.ticks_per_entry()
        deadline = start + self.max_tick_time(bound)
        k = 0
        while True:
            behind = self._behind(target)
            if not behind:
                return (self.now - start) // self.tick_interval
            if self.now >= deadline:
                raise self.failure(
                    LivenessFailure,
                    f"members {behind} did not apply up to {target} within {bound} ticks",
                )
            k += 1
            lead = self.stable_leader()
            if lead is not None and k % 2 == 0:
                self.propose(lead.id, kind="filler")
            self.run_for(self.tick_interval)

    def _behind(self, target: int) -> list[str]:
        lead = self.stable_leader()
        if lead is None or lead.rn is None:
            return ["(no leader)"]
        out = []
        for i in lead.rn.conf_state().all_ids():
            n = self.nodes.get(i)
            if n is None or n.app is None or n.app.applied < target:
                out.append(str(i))
        return out

    def check_leaders_kept_their_proposals(self) -> None:
        """Every accepted proposal was decided, and none accepted by the
        leader of the highest term was lost while it kept leading. (A stale
        leader may still think it leads an older term, e.g. cut off with
        CheckQuorum off: its proposals may be lost.)"""
        c = self.checker
        top = max(c.leaders, default=0)
        for p in c.proposals.values():
            out = c.proposal_outcome(p)
            if out == "undecided":
                raise self.failure(LivenessFailure, f"proposal {p} was never decided")
            if out == "superseded" and p.term == top and (p.node, p.term) not in c.tenures_ended:
                raise self.failure(
                    LivenessFailure,
                    f"proposal {p} was lost although node {p.node} still leads term {p.term}, "
                    "the highest term",
                )

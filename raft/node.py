"""The driver of one Raft group member: inputs in, `Ready` out, `advance` back.

Rules of this package: no I/O, no clock, no trio, no global random.

How to drive a `RaftNode` (one loop iteration):

1. feed it: `tick()` on a timer, `step(msg)` for each received message,
   `propose(...)`, `read_index(ctx)`, `transfer_leader(id)`;
2. if `has_ready()`, take `rd = ready()` and handle it in this order:
   a. send `rd.messages` (they need not wait for the write below);
   b. write `rd.snapshot` (if any), then `rd.entries` (replacing any stored
      suffix they conflict with), then `rd.hard_state` (if any) to stable
      storage, durably if `rd.must_sync`;
   c. send `rd.persisted_messages` (only now: they vouch for what b wrote);
   d. apply `rd.committed_entries` in order (for a CONF_CHANGE entry call
      `apply_conf_change`), then serve `rd.read_states` once applied up to
      their index;
3. call `advance(rd)`.

`ready()` may not be called again before `advance()`; `step()` and the other
inputs may be called in between.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from raft.config import Config
from raft.core import Raft
from raft.progress import ProgressState
from raft.storage import LogStorage
from raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Message,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    """What a leader knows of one member's replication."""

    match: int  # highest index known durable there
    next: int  # next index to send
    state: ProgressState
    recent_active: bool
    is_learner: bool


@dataclass(frozen=True, slots=True)
class Status:
    """`RaftNode.status()`: a copy, safe to keep."""

    id: int
    role: Role
    term: int
    vote: int
    lead: int
    commit: int
    applied: int
    lead_transferee: int
    # Every member's progress, by id (leaders only; empty otherwise).
    progress: Mapping[int, ProgressStatus]


@dataclass(frozen=True, slots=True)
class Ready:
    """What a node needs done, in the order of the module docstring."""

    # Changed since the last Ready (None if not): leader and role.
    soft_state: SoftState | None
    # Changed since the last Ready (None if not): persist with the entries.
    hard_state: HardState | None
    # Messages that may be sent before the entries and hard state are durable
    # (a leader's appends; none when this Ready changes the term or vote).
    messages: tuple[Message, ...]
    # A snapshot to install into stable storage (before `entries`).
    snapshot: Snapshot | None
    # Entries to append to stable storage.
    entries: tuple[Entry, ...]
    # Messages that must be sent only after the writes above are durable.
    persisted_messages: tuple[Message, ...]
    # Entries to apply to the state machine, in order (they may include
    # entries of `entries` above: persist first, then apply).
    committed_entries: tuple[Entry, ...]
    # ReadIndex results, served once applied up to their index.
    read_states: tuple[ReadState, ...]
    # Whether the writes must be fsynced (term, vote, entries or snapshot
    # changed; a commit index alone may be written lazily).
    must_sync: bool

    def all_messages(self) -> tuple[Message, ...]:
        return self.messages + self.persisted_messages


class RaftNode:
    """One member of one Raft group (etcd's RawNode)."""

    def __init__(
        self, config: Config, storage: LogStorage, rng: random.Random | None = None
    ) -> None:
        # A fixed default seed keeps a node deterministic unless told otherwise.
        self._raft = Raft(config, storage, rng if rng is not None else random.Random(config.id))
        self._prev_soft = self._raft.soft_state()
        self._prev_hard = self._raft.hard_state()
        self._outstanding: Ready | None = None

    # -- inputs ---------------------------------------------------------------

    def tick(self) -> None:
        self._raft.tick()

    def campaign(self) -> None:
        """Start an election now (PreVote first if enabled)."""
        self._raft.hup(transfer=False)

    def step(self, m: Message) -> None:
        self._raft.step(m)

    def propose(self, data: bytes) -> int:
        """Propose `data` as a new entry; returns its log index.

        Raises `NotLeaderError` (with the known leader), `LeaderTransferringError`
        or another `ProposalDroppedError`: a proposal is never dropped silently.
        An accepted proposal may still be lost to a leader change; the caller
        learns that when another entry commits at its index.
        """
        return self._raft.propose(data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Like `propose`; also raises `ConfChangePendingError` while an earlier
        change is unapplied and `ConfChangeError` if `cc` is invalid now."""
        return self._raft.propose_conf_change(cc)

    def broadcast_commit_of(self, index: int) -> None:
        """With `Config.skip_bcast_commit`, still send the commit of the
        entry at `index` to every follower at once (an entry they must apply
        promptly, such as a split). Conf changes are always broadcast."""
        self._raft.bcast_commit_of = max(self._raft.bcast_commit_of, index)

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change entry; returns the new ConfState.

        Raises `ConfChangeError` without changing anything if `cc` is invalid
        for the current config: every member sees the same log, so every
        member skips it alike.
        """
        return self._raft.apply_conf_change(cc)

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point, answered by a `ReadState` with
        this `ctx` in a later Ready. Contexts must be unique among pending
        reads.

        Taken by a leader (served here) or by a follower that knows a leader
        (forwarded to it). Otherwise (a follower that knows no leader, a
        candidate or a pre-candidate) raises `NotLeaderError` with
        `leader_id` 0 and keeps nothing: the caller retries once a leader is
        known. A taken request may still go unanswered (the forwarded message
        or its answer lost, or leadership lost meanwhile): for that the caller
        keeps its own timeout.
        """
        self._raft.read_index(ctx)

    def transfer_leader(self, transferee: int) -> None:
        self._raft.transfer_leader(transferee)

    def report_unreachable(self, node_id: int) -> None:
        self._raft.report_unreachable(node_id)

    def report_snapshot(self, node_id: int, success: bool) -> None:
        """Tell the leader whether the snapshot sent to `node_id` was applied."""
        self._raft.report_snapshot(node_id, success)

    # -- outputs --------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self._raft
        if self._outstanding is not None:
            return False
        if r.msgs or r.msgs_after_persist or r.read_states:
            return True
        if r.has_pending_flush():
            return True
        if r.soft_state() != self._prev_soft:
            return True
        if r.hard_state() != self._prev_hard:
            return True
        lg = r.log
        return bool(
            lg.unstable.snapshot is not None
            or lg.unstable.entries
            or lg.has_next_committed_entries()
        )

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise AssertionError("ready() called again before advance()")
        r = self._raft
        r.flush()
        soft = r.soft_state()
        hard = r.hard_state()
        entries = tuple(r.log.unstable_entries())
        new_term_or_vote = hard.term != self._prev_hard.term or hard.vote != self._prev_hard.vote
        early, after_persist = tuple(r.msgs), tuple(r.msgs_after_persist)
        if new_term_or_vote:
            # Every message vouches for its term: none may leave before the
            # term and vote are durable, or a crash could let this node be
            # elected again in the same term and send different entries at
            # the same indexes (a single voter becomes leader, and sends
            # appends, within one Ready).
            early, after_persist = (), early + after_persist
        snapshot = r.log.unstable.snapshot
        committed_entries = tuple(r.log.next_committed_entries())
        if committed_entries:
            r.log.applying_to(committed_entries[-1].index)
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            messages=early,
            snapshot=snapshot,
            entries=entries,
            persisted_messages=after_persist,
            committed_entries=committed_entries,
            read_states=tuple(r.read_states),
            # An installed snapshot is acknowledged too: it must be durable.
            must_sync=bool(entries) or new_term_or_vote or snapshot is not None,
        )
        r.msgs = []
        r.msgs_after_persist = []
        r.read_states = []
        self._prev_soft = soft
        self._prev_hard = hard
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """Everything `rd` asked for is done: writes durable, messages sent,
        committed entries applied."""
        if rd is not self._outstanding:
            raise AssertionError("advance() with a Ready that is not outstanding")
        self._outstanding = None
        r = self._raft
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.metadata.index)
            # The state machine now is the snapshot: applied up to its index.
            # (Otherwise committed > applied would hold with no entries left
            # to hand out, and has_ready() would stay true forever.)
            r.on_applied(rd.snapshot.metadata.index)
        if rd.entries:
            last = rd.entries[-1]
            r.on_persisted(last.index, last.term)
        if rd.committed_entries:
            r.on_applied(rd.committed_entries[-1].index)

    # -- state ----------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._raft.id

    @property
    def raft(self) -> Raft:
        """The state machine, for inspection by tests and `describe_*`;
        applications read `status()` instead."""
        return self._raft

    def status(self) -> Status:
        """A snapshot of where this node stands (etcd's Status): its role and
        term, its log's commit and applied indexes, and as leader what it
        knows of each member's replication."""
        r = self._raft
        progress: dict[int, ProgressStatus] = {}
        if r.role == Role.LEADER:
            for node_id, pr in r.trk.items():
                progress[node_id] = ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state,
                    recent_active=pr.recent_active,
                    is_learner=pr.is_learner,
                )
        return Status(
            id=r.id,
            role=r.role,
            term=r.term,
            vote=r.vote,
            lead=r.lead,
            commit=r.log.committed,
            applied=r.log.applied,
            lead_transferee=r.lead_transferee,
            progress=MappingProxyType(progress),
        )

    @property
    def term(self) -> int:
        return self._raft.term

    @property
    def role(self) -> Role:
        return self._raft.role

    @property
    def leader_id(self) -> int:
        return self._raft.lead

    @property
    def commit_index(self) -> int:
        return self._raft.log.committed

    @property
    def transferring_leadership(self) -> bool:
        """A leader transfer is under way (the transferee may campaign with
        votes granted despite this leader)."""
        return self._raft.lead_transferee != NONE

    @property
    def applied_index(self) -> int:
        return self._raft.log.applied

    @property
    def last_index(self) -> int:
        return self._raft.log.last_index()

    def conf_state(self) -> ConfState:
        return self._raft.trk.conf_state()

    def hard_state(self) -> HardState:
        return self._raft.hard_state()

"""The Raft role state machine (etcd's raft.go), driven by `raft.node.RaftNode`.

Rules of this module: no I/O, no clock, no trio, no global random. Time
arrives as `tick()`, randomness from the injected `random.Random`, and
everything the node wants done leaves as messages and log state that the
driver turns into a `Ready`.

Roles swap behaviour by swapping functions: `_become_*` sets `self._step_role`
and `self._tick` rather than branching on the role in every method.

Message routing: a leader's messages may go out before its own log write is
durable (Raft thesis §10.2.1), because the leader counts its own log towards
a commit only after the driver reports it stable (`on_persisted`). Every other
role's messages (votes, acknowledgements) go out only after the state they
vouch for is durable: they are queued in `msgs_after_persist`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from raft import confchange
from raft.config import Config
from raft.errors import (
    CompactedError,
    ConfChangeError,
    ConfChangePendingError,
    LeaderTransferringError,
    NotLeaderError,
    ProposalDroppedError,
    SnapshotTemporarilyUnavailableError,
    UnavailableError,
)
from raft.log import RaftLog
from raft.progress import Progress, ProgressState
from raft.quorum import VoteResult
from raft.read_only import ReadAnswer, ReadOnly
from raft.storage import LogStorage, entry_size
from raft.tracker import ProgressTracker, TrackerConfig
from raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
    vote_response_type,
)

log = logging.getLogger(__name__)

# Context of a vote request sent because of a leader transfer: voters grant it
# even while they still hear from the current leader.
CAMPAIGN_TRANSFER = b"transfer"

MT = MessageType


class Raft:
    """One member of one Raft group. Who mutates: only its `RaftNode`."""

    def __init__(self, config: Config, storage: LogStorage, rng: random.Random) -> None:
        config.validate()
        self.id = config.id
        self.cfg = config
        self.rng = rng
        self.log = RaftLog(storage, config.max_committed_size_per_ready)
        self.trk = ProgressTracker(config.max_inflight_msgs, config.max_inflight_bytes)
        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.is_learner = False
        # Messages that may be sent at once / only after the next persist.
        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        self.read_states: list[ReadState] = []
        self.lead_transferee = NONE
        # Index of the latest conf change proposed by this leader (or the last
        # index when it became leader); a new one waits until it is applied.
        self.pending_conf_index = 0
        # With skip_bcast_commit: the commit of this index (a conf change, a
        # split) still goes to every follower at once.
        self.bcast_commit_of = 0
        self.read_only = ReadOnly()
        # Proposals appended since the last Ready: their appends go out
        # together when the driver asks for the Ready (`flush`).
        self.append_pending = False
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        # Until an election timeout has passed since start (or a leader was
        # heard, or we campaign), vote requests are treated as in a lease.
        self.quiet = config.quiet_after_start and config.check_quorum
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election

        hs, cs = storage.initial_state()
        cfg, prs = confchange.restore(
            cs, self.trk.max_inflight, self.trk.max_inflight_bytes, self.log.last_index()
        )
        self._switch_to_config(cfg, prs)
        if hs != HardState():
            self._load_hard_state(hs)
        if config.applied:
            self.log.applied_to(config.applied)
        self._become_follower(self.term, NONE)
        log.debug(
            "raft %d started: term=%d commit=%d applied=%d last=%d/%d %s",
            self.id,
            self.term,
            self.log.committed,
            self.log.applied,
            self.log.last_index(),
            self.log.last_term(),
            self.trk.config.describe(),
        )

    # -- state views -----------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(leader_id=self.lead, role=self.role)

    def _load_hard_state(self, hs: HardState) -> None:
        if hs.commit > self.log.last_index():
            raise AssertionError(
                f"hard state commit {hs.commit} out of range "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        # A commit below the log's compaction point is an older hard state
        # than the snapshot (a crash between writing an installed snapshot
        # and the Ready's hard state): the snapshot is committed anyway.
        self.log.committed = max(hs.commit, self.log.committed)
        self.term = hs.term
        self.vote = hs.vote

    def promotable(self) -> bool:
        """Whether this node may campaign: a voter with no snapshot pending."""
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner and self.log.unstable.snapshot is None

    # -- sending -------------------------------------------------------------

    def _send(self, m: Message) -> None:
        if m.to == self.id:
            raise AssertionError(f"message to self: {m}")
        if self.role == Role.LEADER:
            self.msgs.append(m)
        else:
            self.msgs_after_persist.append(m)

    def _msg(
        self,
        type: MessageType,
        to: int,
        *,
        term: int | None = None,
        log_term: int = 0,
        index: int = 0,
        entries: tuple[Entry, ...] = (),
        commit: int = 0,
        snapshot: Snapshot | None = None,
        reject: bool = False,
        reject_hint: int = 0,
        context: bytes = b"",
    ) -> Message:
        return Message(
            type=type,
            to=to,
            from_=self.id,
            term=self.term if term is None else term,
            log_term=log_term,
            index=index,
            entries=entries,
            commit=commit,
            snapshot=snapshot,
            reject=reject,
            reject_hint=reject_hint,
            context=context,
        )

    def _send_append(self, to: int) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send the entries `to` is missing (or a snapshot if they are gone).

        Returns whether a message was sent.
        """
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        try:
            prev_term = self.log.term(prev_index)
        except (CompactedError, UnavailableError):
            return self._maybe_send_snapshot(to, pr)
        ents: list[Entry] = []
        # With a full window, only empty appends go out: they still get
        # answered and so unstick a follower whose appends were all lost.
        if pr.state != ProgressState.REPLICATE or not pr.inflights.full():
            try:
                ents = self.log.entries(pr.next, self.cfg.max_size_per_msg)
            except CompactedError:
                return self._maybe_send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self._send(
            self._msg(
                MT.APPEND,
                to,
                index=prev_index,
                log_term=prev_term,
                entries=tuple(ents),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(len(ents), sum(entry_size(e) for e in ents))
        pr.sent_commit = self.log.committed
        return True

    def _maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            # Don't build a snapshot for a follower that may be down.
            return False
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            log.debug("%d: snapshot for %d temporarily unavailable", self.id, to)
            return False
        if snap.is_empty:
            raise AssertionError("need a non-empty snapshot to catch up a follower")
        pr.become_snapshot(snap.metadata.index)
        log.debug(
            "%d: sending snapshot %d/%d to %d",
            self.id,
            snap.metadata.index,
            snap.metadata.term,
            to,
        )
        self._send(self._msg(MT.SNAPSHOT, to, snapshot=snap))
        return True

    def _send_heartbeat(self, to: int, ctx: bytes) -> None:
        # A follower may not have the leader's whole committed prefix yet:
        # never tell it to commit past what it is known to hold.
        commit = min(self.trk.progress[to].match, self.log.committed)
        self._send(self._msg(MT.HEARTBEAT, to, commit=commit, context=ctx))

    def _bcast_append(self) -> None:
        for i in self.trk.ids():
            if i != self.id:
                self._send_append(i)

    def _bcast_commit(self) -> None:
        """Tell the followers of a new commit index: at once (an append,
        empty if need be), or with `skip_bcast_commit` only to followers
        that have entries to receive anyway."""
        if not self.cfg.skip_bcast_commit or self.log.committed >= self.bcast_commit_of > 0:
            self.bcast_commit_of = 0
            self._bcast_append()
            return
        for i in self.trk.ids():
            if i != self.id:
                self._maybe_send_append(i, send_if_empty=False)

    def _bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        if ctx is None:
            ctx = self.read_only.last_pending_ctx() or b""
        self.read_only.unbroadcast = False
        for i in self.trk.ids():
            if i != self.id:
                self._send_heartbeat(i, ctx)

    def flush(self) -> None:
        """Send what inputs since the last Ready left pending (called by the
        driver before building a Ready): one append per follower for all the
        proposals of the batch, and one heartbeat round for all its ReadIndex
        requests."""
        if self.role != Role.LEADER:
            return
        if self.append_pending:
            self.append_pending = False
            for i in self.trk.ids():
                # As many appends as the window takes; none empty (entries
                # already sent after an acknowledgement need no resend).
                while i != self.id and self._maybe_send_append(i, send_if_empty=False):
                    pass
        if self.read_only.unbroadcast:
            self._bcast_heartbeat()

    def has_pending_flush(self) -> bool:
        return self.role == Role.LEADER and (self.append_pending or self.read_only.unbroadcast)

    # -- role transitions ------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self._abort_leader_transfer()
        self.trk.reset_votes()
        last = self.log.last_index()
        for i, pr in self.trk.items():
            fresh = Progress(
                last + 1,
                pr.inflights,
                is_learner=pr.is_learner,
            )
            fresh.inflights.reset()
            if i == self.id:
                fresh.match = self.log.stable_last_index()
            self.trk.progress[i] = fresh
        self.pending_conf_index = 0
        # With skip_bcast_commit: the commit of this index (a conf change, a
        # split) still goes to every follower at once.
        self.bcast_commit_of = 0
        self.read_only = ReadOnly()
        self.append_pending = False

    def _reset_randomized_election_timeout(self) -> None:
        n = self.cfg.election_ticks
        self.randomized_election_timeout = n + self.rng.randrange(n)

    def _become_follower(self, term: int, lead: int) -> None:
        self._step_role = self._step_follower
        self._reset(term)
        self._tick = self._tick_election
        self.lead = lead
        self.role = Role.FOLLOWER
        log.debug("%d became follower at term %d (leader %d)", self.id, self.term, lead)

    def _become_pre_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise AssertionError("invalid transition leader -> pre-candidate")
        # PreVote changes neither term nor vote: a node that cannot win does
        # not disrupt the group by bumping terms (thesis §9.6).
        self._step_role = self._step_candidate
        self.trk.reset_votes()
        self._tick = self._tick_election
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        log.debug("%d became pre-candidate at term %d", self.id, self.term)

    def _become_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise AssertionError("invalid transition leader -> candidate")
        self._step_role = self._step_candidate
        self._reset(self.term + 1)
        self._tick = self._tick_election
        self.vote = self.id
        self.role = Role.CANDIDATE
        log.debug("%d became candidate at term %d", self.id, self.term)

    def _become_leader(self) -> None:
        if self.role == Role.FOLLOWER:
            raise AssertionError("invalid transition follower -> leader")
        self._step_role = self._step_leader
        self._reset(self.term)
        self._tick = self._tick_heartbeat
        self.lead = self.id
        self.role = Role.LEADER
        pr = self.trk.progress[self.id]
        pr.become_replicate()
        pr.match = self.log.stable_last_index()
        pr.recent_active = True
        # There may be an unapplied conf change in the log; conservatively
        # wait until everything up to here is applied before allowing another.
        self.pending_conf_index = self.log.last_index()
        # An entry of the new term: committing it commits everything before it
        # (entries of older terms are never committed by counting, §5.4.2).
        self._append_entries([Entry(term=0, index=0)])
        log.debug("%d became leader at term %d", self.id, self.term)

    # -- ticks ------------------------------------------------------------------

    def tick(self) -> None:
        self._tick()

    def _past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.quiet = False
        if self.promotable() and self._past_election_timeout():
            self.election_elapsed = 0
            self.hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self._check_quorum()
            # A transfer that did not finish within an election timeout fails.
            if self.role == Role.LEADER and self.lead_transferee != NONE:
                log.debug("%d: leader transfer to %d timed out", self.id, self.lead_transferee)
                self._end_failed_leader_transfer()
        if self.role != Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _check_quorum(self) -> None:
        if not self.trk.quorum_active():
            log.info("%d: leader lost quorum of active voters, stepping down", self.id)
            self._become_follower(self.term, NONE)
            return
        for i, pr in self.trk.items():
            if i != self.id:
                pr.recent_active = False

    # -- elections ----------------------------------------------------------------

    def hup(self, transfer: bool) -> None:
        """Start an election (PreVote first unless `transfer` or disabled)."""
        if self.role == Role.LEADER:
            return
        if not self.promotable():
            log.debug("%d is not promotable, not campaigning", self.id)
            return
        if self._has_unapplied_conf_changes():
            # The config we would campaign in may be about to change.
            log.debug("%d: unapplied conf change, not campaigning", self.id)
            return
        self.quiet = False
        if transfer or not self.cfg.pre_vote:
            self._campaign(MT.VOTE, transfer)
        else:
            self._campaign(MT.PRE_VOTE, transfer)

    def _has_unapplied_conf_changes(self) -> bool:
        lo = self.log.applied + 1
        hi = self.log.committed + 1
        if lo >= hi:
            return False
        try:
            ents = self.log.slice(max(lo, self.log.first_index()), hi)
        except CompactedError:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in ents)

    def _campaign(self, vote_type: MessageType, transfer: bool) -> None:
        if vote_type == MT.PRE_VOTE:
            self._become_pre_candidate()
            term = self.term + 1  # the term we would campaign in
        else:
            self._become_candidate()
            term = self.term
        _, _, res = self._poll(self.id, True)
        if res == VoteResult.WON:
            # A single-voter group wins at once.
            if vote_type == MT.PRE_VOTE:
                self._campaign(MT.VOTE, transfer)
            else:
                self._become_leader()
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for i in self.trk.voter_ids():
            if i == self.id:
                continue
            self._send(
                self._msg(
                    vote_type, i, term=term, index=last_index, log_term=last_term, context=ctx
                )
            )

    def _poll(self, node_id: int, granted: bool) -> tuple[int, int, VoteResult]:
        self.trk.record_vote(node_id, granted)
        return self.trk.tally_votes()

    # -- stepping ------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Handle one message from the network (or forwarded by a follower).

        Term rules first (Raft §5.1, thesis §9.6 for PreVote and the leader
        lease of CheckQuorum), then the role's step function.
        """
        if m.to != self.id:
            log.warning("%d: dropping message addressed to %d", self.id, m.to)
            return
        if m.term == 0:
            # Forwarded requests carry no term; anything else must.
            if m.type not in (MT.READ_INDEX, MT.TRANSFER_LEADER):
                log.warning("%d: dropping %s without a term", self.id, m.type.name)
                return
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum
                    and (self.lead != NONE or self.quiet)
                    and self.election_elapsed < self.cfg.election_ticks
                )
                if not force and in_lease:
                    # We heard from a leader within the minimum election
                    # timeout: this candidate is disruptive; ignore it.
                    log.debug(
                        "%d: ignoring %s from %d at term %d: lease of leader %d",
                        self.id,
                        m.type.name,
                        m.from_,
                        m.term,
                        self.lead,
                    )
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change term on a pre-vote
            elif m.type == MT.PRE_VOTE_RESPONSE and not m.reject:
                pass  # the term moves only once a quorum is won
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.from_)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (
                MT.HEARTBEAT,
                MT.APPEND,
            ):
                # A stale leader (e.g. back from a partition) that we ignore
                # would never learn of the newer term: tell it.
                self._send(self._msg(MT.APPEND_RESPONSE, m.from_))
            elif m.type == MT.PRE_VOTE:
                self._send(self._msg(MT.PRE_VOTE_RESPONSE, m.from_, reject=True))
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        else:
            self._step_role(m)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.from_
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # The response carries the candidate's term, not ours: a pre-vote
            # is granted for a term we have not reached.
            self._send(self._msg(vote_response_type(m.type), m.from_, term=m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.from_
        else:
            self._send(self._msg(vote_response_type(m.type), m.from_, reject=True))

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self.election_elapsed = 0
            self.lead = m.from_
            if t == MT.APPEND:
                self._handle_append(m)
            elif t == MT.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t in (MT.TRANSFER_LEADER, MT.READ_INDEX):
            if self.lead == NONE:
                # A local read never gets here (`read_index` refuses it); a
                # forwarded read or a transfer request is lost, as if on the
                # network.
                log.debug("%d: no leader to forward %s to, dropping", self.id, t.name)
                return
            self._send(Message(type=t, to=self.lead, from_=m.from_, term=0, context=m.context))
        elif t == MT.TIMEOUT_NOW:
            log.debug("%d: TimeoutNow from %d, campaigning", self.id, m.from_)
            self.hup(transfer=True)
        elif t == MT.READ_INDEX_RESPONSE:
            self.read_states.append(ReadState(index=m.index, request_ctx=m.context))

    def _step_candidate(self, m: Message) -> None:
        my_response = MT.PRE_VOTE_RESPONSE if self.role == Role.PRE_CANDIDATE else MT.VOTE_RESPONSE
        t = m.type
        if t in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            # A leader of our term (or newer) exists.
            self._become_follower(m.term, m.from_)
            self._step_follower(m)
        elif t == my_response:
            granted, rejected, res = self._poll(m.from_, not m.reject)
            log.debug(
                "%d: %s from %d (%s): %d granted, %d rejected",
                self.id,
                t.name,
                m.from_,
                "reject" if m.reject else "grant",
                granted,
                rejected,
            )
            if res == VoteResult.WON:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(MT.VOTE, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif res == VoteResult.LOST:
                self._become_follower(self.term, NONE)
        # TIMEOUT_NOW to a candidate is ignored; READ_INDEX has no leader
        # (a local one is refused by `read_index`).

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.READ_INDEX:
            self._handle_read_index(m.from_, m.context)
            return
        pr = self.trk.progress.get(m.from_)
        if pr is None:
            return
        if t == MT.APPEND_RESPONSE:
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESPONSE:
            self._handle_heartbeat_response(m, pr)
        elif t == MT.TRANSFER_LEADER:
            self._handle_transfer_leader(m.from_, pr)

    # -- leader handlers -------------------------------------------------------------

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                # Skip every index of ours whose term is above the follower's
                # term at the hint: they cannot match (fast back-off).
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                log.debug(
                    "%d: append to %d rejected at %d, probing from %d",
                    self.id,
                    m.from_,
                    m.index,
                    pr.next,
                )
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.from_)
            return
        if pr.maybe_update(m.index) or (pr.match == m.index and pr.state == ProgressState.PROBE):
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
                # Caught up from our log after whatever snapshot it applied.
                pr.become_probe()
                pr.become_replicate()
            elif pr.state == ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            if self._maybe_commit():
                self._bcast_commit()
            elif pr.can_bump_commit(self.log.committed) and not self.cfg.skip_bcast_commit:
                # It may be missing the latest commit index: send it.
                self._send_append(m.from_)
            # The window may have room for several appends now.
            while self._maybe_send_append(m.from_, send_if_empty=False):
                pass
            if m.from_ == self.lead_transferee and pr.match == self.log.last_index():
                log.debug("%d: %d caught up, sending TimeoutNow", self.id, m.from_)
                self._send(self._msg(MT.TIMEOUT_NOW, m.from_))

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.msg_app_flow_paused = False
        if pr.match < self.log.last_index() or pr.state == ProgressState.PROBE:
            self._send_append(m.from_)
        if not m.context:
            return
        voters = self.trk.config.voters
        for a in self.read_only.on_ack(
            m.from_, m.context, lambda acks: voters.vote_result(acks) == VoteResult.WON
        ):
            self._answer_read(a)

    def _handle_transfer_leader(self, transferee: int, pr: Progress) -> None:
        if pr.is_learner:
            log.debug("%d: refusing to transfer leadership to learner %d", self.id, transferee)
            return
        if self.lead_transferee != NONE:
            if self.lead_transferee == transferee:
                return
            if transferee == self.id:
                # Called off: leadership stays here.
                self._end_failed_leader_transfer()
                return
            self._abort_leader_transfer()
        if transferee == self.id:
            return
        # The transfer must finish within one election timeout.
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self._send(self._msg(MT.TIMEOUT_NOW, transferee))
        else:
            self._send_append(transferee)

    def _abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    def _end_failed_leader_transfer(self) -> None:
        """A leader transfer ended with this node still leader (it timed out,
        was called off, or its transferee left the voters): what waited for
        the transfer to end goes on now, since no later input may come to
        trigger it (nothing else may be proposed or applied)."""
        self._abort_leader_transfer()
        self._maybe_auto_leave_joint()

    def _handle_read_index(self, from_: int, ctx: bytes) -> None:
        for a in self.read_only.request(
            self.id,
            from_,
            ctx,
            self.log.committed,
            self._committed_entry_in_current_term(),
            self.trk.is_singleton(),
        ):
            self._answer_read(a)

    def _answer_read(self, a: ReadAnswer) -> None:
        if a.from_ in (NONE, self.id):
            self.read_states.append(ReadState(index=a.index, request_ctx=a.ctx))
        else:
            self._send(self._msg(MT.READ_INDEX_RESPONSE, a.from_, index=a.index, context=a.ctx))

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def _maybe_commit(self) -> bool:
        if not self.log.maybe_commit(self.trk.committed(), self.term):
            return False
        if self.read_only.waiting_for_term and self._committed_entry_in_current_term():
            for a in self.read_only.on_term_committed(
                self.id, self.log.committed, self.trk.is_singleton()
            ):
                self._answer_read(a)
        return True

    # -- follower handlers -------------------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            # Everything up to our commit index matches the leader's log.
            self._send(self._msg(MT.APPEND_RESPONSE, m.from_, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(self._msg(MT.APPEND_RESPONSE, m.from_, index=last_new))
            return
        # Mismatch at m.index: hint the largest (index, term) that may match,
        # skipping our tail entries of terms above the leader's term there.
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        log.debug(
            "%d: rejecting append at %d/%d from %d, hint %d/%d",
            self.id,
            m.index,
            m.log_term,
            m.from_,
            hint_index,
            hint_term,
        )
        self._send(
            self._msg(
                MT.APPEND_RESPONSE,
                m.from_,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(self._msg(MT.HEARTBEAT_RESPONSE, m.from_, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None, "SNAPSHOT message without a snapshot"
        if self._restore(m.snapshot):
            self._send(self._msg(MT.APPEND_RESPONSE, m.from_, index=self.log.last_index()))
        else:
            self._send(self._msg(MT.APPEND_RESPONSE, m.from_, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        """Install a snapshot into the log (the application persists it from
        the Ready). Returns False if it was refused or not needed."""
        meta = snap.metadata
        if meta.index <= self.log.committed:
            log.debug(
                "%d: ignoring snapshot %d below commit %d", self.id, meta.index, self.log.committed
            )
            return False
        if self.role != Role.FOLLOWER:
            # Defensive: only a follower may install a leader's snapshot.
            self._become_follower(self.term + 1, NONE)
            return False
        if self.id not in meta.conf_state.all_ids():
            log.warning("%d: ignoring snapshot whose config does not include us", self.id)
            return False
        if self.log.match_term(meta.index, meta.term):
            # We already have the entry: just fast-forward the commit index.
            self.log.commit_to(meta.index)
            return False
        if self.log.applying > self.log.applied:
            # The application is applying entries of a Ready not advanced
            # yet: restoring now would swap the config (and the state
            # machine) under them, so that a conf change among them would be
            # applied to the snapshot's config. Refuse; the leader retries.
            log.debug(
                "%d: refusing snapshot %d while applying up to %d",
                self.id,
                meta.index,
                self.log.applying,
            )
            return False
        self.log.restore(snap)
        cfg, prs = confchange.restore(
            meta.conf_state,
            self.trk.max_inflight,
            self.trk.max_inflight_bytes,
            self.log.last_index(),
        )
        self._switch_to_config(cfg, prs)
        log.debug("%d: restored snapshot %d/%d", self.id, meta.index, meta.term)
        return True

    # -- proposals -------------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.lead)
        if self.id not in self.trk.progress:
            raise ProposalDroppedError("this leader was removed from the group", NONE)
        if self.lead_transferee != NONE:
            raise LeaderTransferringError(self.id, self.lead_transferee)

    def propose(self, data: bytes) -> int:
        """Append a normal entry; returns its index. Raises a
        `ProposalDroppedError` subclass when this node cannot take it."""
        self._check_can_propose()
        index = self._append_entries([Entry(term=0, index=0, data=data)])
        self.append_pending = True
        return index

    def propose_conf_change(self, cc: ConfChange) -> int:
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ConfChangePendingError(self.id, self.pending_conf_index)
        joint = self.trk.config.voters.is_joint
        if joint and not cc.leaves_joint:
            raise ConfChangeError("must leave the joint config first")
        if not joint and cc.leaves_joint:
            raise ConfChangeError("not in a joint config; refusing an empty conf change")
        # Validate against the current config now, so an invalid change is
        # refused to the proposer instead of becoming a no-op in the log.
        self._compute_conf_change(cc)
        index = self._append_entries(
            [Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=cc.encode())]
        )
        self.pending_conf_index = index
        self.bcast_commit_of = index
        self.append_pending = True
        return index

    def _append_entries(self, ents: list[Entry]) -> int:
        li = self.log.last_index()
        stamped = [
            Entry(term=self.term, index=li + 1 + i, type=e.type, data=e.data)
            for i, e in enumerate(ents)
        ]
        return self.log.append(stamped)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; answered by a ReadState with the
        same ctx. A leader handles it, a follower forwards it to its leader;
        with no leader known (a follower that knows none, a candidate or a
        pre-candidate) it raises `NotLeaderError` (leader id 0) instead of
        dropping it. A taken request goes unanswered if leadership is lost or
        the forwarded message is: the caller times out."""
        if self.role == Role.LEADER:
            self._handle_read_index(NONE, ctx)
            return
        if self.role != Role.FOLLOWER or self.lead == NONE:
            log.debug("%d: no leader known (%s), refusing read %r", self.id, self.role.name, ctx)
            raise NotLeaderError(self.lead)
        self._step_role(Message(type=MT.READ_INDEX, to=self.id, from_=self.id, term=0, context=ctx))

    def transfer_leader(self, transferee: int) -> None:
        if self.role == Role.LEADER:
            pr = self.trk.progress.get(transferee)
            if pr is None:
                log.debug("%d: cannot transfer leadership to non-member %d", self.id, transferee)
            else:
                self._handle_transfer_leader(transferee, pr)
        else:
            self._step_role(Message(type=MT.TRANSFER_LEADER, to=self.id, from_=transferee, term=0))

    # -- reports from the application -------------------------------------------------

    def report_unreachable(self, node_id: int) -> None:
        pr = self.trk.progress.get(node_id)
        if self.role == Role.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            # Appends in flight were probably lost: fall back to probing.
            pr.become_probe()

    def report_snapshot(self, node_id: int, success: bool) -> None:
        pr = self.trk.progress.get(node_id)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not success:
            # Probe from match, not from the snapshot that never arrived.
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the follower's answer (or a heartbeat) before the next append.
        pr.msg_app_flow_paused = True

    # -- persistence and application ------------------------------------------------

    def on_persisted(self, index: int, term: int) -> None:
        """Log entries up to (index, term) are durable."""
        self.log.stable_to(index, term)
        if self.role == Role.LEADER:
            pr = self.trk.progress.get(self.id)
            stable = self.log.stable_last_index()
            if pr is not None and pr.maybe_update(stable) and self._maybe_commit():
                self._bcast_commit()

    def on_applied(self, index: int) -> None:
        self.log.applied_to(max(index, self.log.applied))
        self._maybe_auto_leave_joint()

    def _maybe_auto_leave_joint(self) -> None:
        """As leader, propose leaving an auto-leave joint config once the conf
        change entering it is applied (etcd's raft does so on apply).

        Not during a leader transfer, which refuses proposals: the transferee
        leaves the joint config once it leads, and a transfer that ends with
        this node still leader runs this check again
        (`_end_failed_leader_transfer`). Runs after every apply too, so a
        leave is proposed once whatever blocked it is gone.
        """
        if (
            self.role != Role.LEADER
            or not self.trk.config.auto_leave
            or self.log.applied < self.pending_conf_index
            or self.lead_transferee != NONE
        ):
            return
        index = self._append_entries(
            [Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=ConfChange().encode())]
        )
        self.pending_conf_index = index
        self.bcast_commit_of = index
        self.append_pending = True
        log.debug("%d: proposed leaving the joint config at %d", self.id, index)

    def _compute_conf_change(self, cc: ConfChange) -> tuple[TrackerConfig, dict[int, Progress]]:
        last = self.log.last_index()
        if cc.leaves_joint:
            return confchange.leave_joint(self.trk, last)
        if cc.enters_joint():
            return confchange.enter_joint(self.trk, last, cc.auto_leave, cc.changes)
        return confchange.simple(self.trk, last, cc.changes)

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change; raises ConfChangeError (and changes
        nothing) if it is invalid for the current config."""
        cfg, prs = self._compute_conf_change(cc)
        return self._switch_to_config(cfg, prs)

    def _switch_to_config(self, cfg: TrackerConfig, prs: dict[int, Progress]) -> ConfState:
        self.trk.config = cfg
        self.trk.progress = prs
        cs = cfg.conf_state()
        pr = prs.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if (pr is None or self.is_learner) and self.role == Role.LEADER:
            if self.cfg.step_down_on_removal:
                log.info("%d: removed from the config, stepping down", self.id)
                self._become_follower(self.term, NONE)
            return cs
        if self.role != Role.LEADER or not cs.voters:
            return cs
        if self._maybe_commit():
            self._bcast_append()
        else:
            # Probe new members at once rather than at the next heartbeat.
            for i in self.trk.ids():
                if i != self.id:
                    self._maybe_send_append(i, send_if_empty=False)
        if self.lead_transferee != NONE and self.lead_transferee not in cfg.voters:
            self._end_failed_leader_transfer()
        return cs

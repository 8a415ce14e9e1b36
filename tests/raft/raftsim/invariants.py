"""Safety invariants of Raft, checked incrementally after every simulation step.

The checker keeps a global history (every entry ever seen in any log, every
committed index, every applied entry, every leader of every term) and
compares each node's new state against it. It only reads nodes; it never
changes them. A broken invariant raises `Violation(name, detail)`; the names:

* `election-safety`: at most one leader per term, over the whole run and
  every configuration.
* `vote-once`: a node never changes its vote within a term (in memory, and
  on disk across crashes); `term-monotonic`: terms never go back (in memory
  within one lifetime of a node, and on disk).
* `log-matching`: an entry (index, term) always has the same payload and the
  same predecessor term, in every log, durable or not, at every time (which
  by induction makes logs identical up to a shared (index, term)); terms
  never decrease along a log.
* `commit-monotonic`: a node's commit index never goes back within one
  lifetime. After a crash it restarts at no less than its durable commit
  and the snapshot its state machine is restored from (Raft takes the max
  of the persisted commit and the compaction point), which may be lower
  than before the crash; what it then commits is checked against the
  committed history below.
* `committed-entry-changed`: an index is committed with one term only, ever.
  Indexes count as committed when a node's commit index covers them, or as
  soon as an entry of term T is durably stored, while in term T, on a quorum
  of the term-T leader's configuration (`quorum-durability`: the entry is
  committed even if nobody knows yet, and must never be lost).
* `leader-completeness`: a leader of term T holds every entry committed in
  a term below T (checked when it is elected and when an index is
  committed while it leads).
* `state-machine-safety`: no two nodes apply different entries at an index,
  and their state digests agree after applying it; within one lifetime a
  node applies each index once, in order (after a crash its state machine
  is rebuilt from its snapshot, so it applies the later entries again).
* `proposal-integrity`: every applied normal entry with a payload, and every
  conf change with a context, was accepted by `propose*` at exactly that
  (index, term): proposed once, never refused, never duplicated.
* `config-agreement`: every node gets the same result from applying the
  conf change at an index; `snapshot-integrity`: a snapshot's state digest
  and config match the history up to its index.
* `read-linearizability`: a ReadState's index is at least the highest
  commit index any node knew when the read was requested.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from raft import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    RaftNode,
    ReadState,
    Ready,
    Role,
    Snapshot,
)
from raft.core import Raft
from raft.errors import CompactedError, UnavailableError
from raft.log import RaftLog
from raft.quorum import INFINITE_INDEX, JointConfig

from .app import KvStateMachine, decode_conf_context, decode_proposal
from .trace import Violation

_MISSING = object()
SKIPPED = "skipped"  # the outcome of a conf change refused by apply_conf_change


@dataclass(slots=True)
class Proposal:
    pid: int
    kind: str  # "put", "conf" or "filler"
    node: int  # the leader that accepted it
    term: int
    index: int


class _Life:
    """What the checker remembers of one node's current lifetime."""

    __slots__ = ("commit", "leader_term", "term", "u_last", "u_len", "u_off", "vote")

    def __init__(self, r: Raft) -> None:
        self.term = r.term
        self.vote = r.vote
        self.commit = r.log.committed
        self.leader_term = 0
        self.u_off = -1
        self.u_len = 0
        self.u_last: Entry | None = None


def _term_at(log: RaftLog, i: int) -> int | None:
    """Term of entry `i` in `log`; None if compacted; -1 if beyond the log."""
    try:
        return log.term(i)
    except CompactedError:
        return None
    except UnavailableError:
        return -1


class Checker:
    def __init__(self) -> None:
        # term -> the one leader of that term.
        self.leaders: dict[int, int] = {}
        # term -> voters of that term's leader (its latest config seen).
        self.leader_voters: dict[int, JointConfig] = {}
        # (index, term) -> (previous entry's term or None, type, data).
        self.entries: dict[tuple[int, int], tuple[int | None, int, bytes]] = {}
        # index -> [term, lowest term in which it is known committed].
        self.committed: dict[int, list[int]] = {}
        self.max_committed = 0
        # The highest commit index any node has known.
        self.max_node_commit = 0
        # index -> (term, type, data, state digest after applying it).
        self.applied: dict[int, tuple[int, int, bytes, int]] = {}
        # index -> ConfState after applying the conf change there, or SKIPPED.
        self.conf_outcomes: dict[int, Any] = {}
        # term -> node -> highest index of a term-T entry it durably stored in term T.
        self.acks: dict[int, dict[int, int]] = {}
        self.quorum_acked: dict[int, int] = {}
        # node -> (term, vote) last written durably.
        self.durable_votes: dict[int, tuple[int, int]] = {}
        self.lives: dict[int, _Life] = {}
        # Nodes that are leaders right now.
        self.live_leaders: dict[int, Raft] = {}
        # (node, term) leaderships that ended (stepped down or crashed).
        self.tenures_ended: set[tuple[int, int]] = set()
        self.proposals: dict[int, Proposal] = {}
        self.refused: Counter[str] = Counter()
        self.reads: dict[bytes, int] = {}
        self.read_count: Counter[str] = Counter()
        self.elections = 0

    # -- bootstrap, start and stop ------------------------------------------------

    def bootstrap(self, snap: Snapshot, digest: int) -> None:
        """The initial snapshot every founding member starts from."""
        m = snap.metadata
        self.applied[m.index] = (m.term, EntryType.NORMAL, b"<bootstrap>", digest)
        self.conf_outcomes[m.index] = m.conf_state
        self._record_committed(m.index, m.term, 0, "bootstrap")

    def node_started(self, nid: int, rn: RaftNode, durable_commit: int) -> None:
        """A node (re)started from its disk. Its commit index restarts at no
        less than the durable hard state's commit and the snapshot it was
        restored from (it may be lower than before the crash, when the last
        commit index was written lazily), and its durable log up to there
        must agree with the committed history."""
        r = rn.raft
        self.lives[nid] = _Life(r)
        log = r.log
        if not max(durable_commit, log.applied) <= log.committed <= log.last_index():
            raise Violation(
                "commit-monotonic",
                f"node {nid} restarted with commit {log.committed}: durable commit "
                f"{durable_commit}, restored snapshot {log.applied}, last {log.last_index()}",
            )
        for i in range(log.first_index() - 1, log.committed + 1):
            t = _term_at(log, i)
            if t is not None and t >= 0:
                self._record_committed(i, t, r.term, f"restart of {nid}")
        self.max_node_commit = max(self.max_node_commit, log.committed)

    def node_stopped(self, nid: int) -> None:
        life = self.lives.pop(nid, None)
        if life is not None and life.leader_term:
            self.tenures_ended.add((nid, life.leader_term))
        self.live_leaders.pop(nid, None)

    # -- after every step -------------------------------------------------------------

    def after_step(self, nid: int, rn: RaftNode) -> None:
        r = rn.raft
        life = self.lives[nid]
        term = r.term
        if term != life.term:
            if term < life.term:
                raise Violation(
                    "term-monotonic", f"node {nid} went from term {life.term} to {term}"
                )
            life.term = term
            life.vote = r.vote
        elif r.vote != life.vote:
            if life.vote != NONE:
                raise Violation(
                    "vote-once",
                    f"node {nid} changed its vote in term {term} from {life.vote} to {r.vote}",
                )
            life.vote = r.vote
        if r.role == Role.LEADER:
            if life.leader_term != term:
                if life.leader_term:
                    self.tenures_ended.add((nid, life.leader_term))
                life.leader_term = term
                self._became_leader(nid, r)
            self.leader_voters[term] = r.trk.config.voters
        elif life.leader_term:
            self.tenures_ended.add((nid, life.leader_term))
            life.leader_term = 0
            self.live_leaders.pop(nid, None)
        u = r.log.unstable
        ents = u.entries
        if ents and (
            u.offset != life.u_off or len(ents) != life.u_len or ents[-1] is not life.u_last
        ):
            self._check_entries(nid, r.log, u.offset, ents)
            life.u_off = u.offset
            life.u_len = len(ents)
            life.u_last = ents[-1]
        c = r.log.committed
        if c != life.commit:
            if c < life.commit:
                raise Violation(
                    "commit-monotonic", f"node {nid} commit index went from {life.commit} to {c}"
                )
            self._commit_advanced(nid, r, life.commit, c)
            life.commit = c

    def _became_leader(self, nid: int, r: Raft) -> None:
        term = r.term
        prev = self.leaders.setdefault(term, nid)
        if prev != nid:
            raise Violation("election-safety", f"nodes {prev} and {nid} both lead term {term}")
        self.elections += 1
        self.live_leaders[nid] = r
        # Leader completeness: everything committed in an earlier term.
        log = r.log
        lo = log.first_index() - 1
        committed = self.committed
        for i in range(lo, self.max_committed + 1):
            rec = committed.get(i)
            if rec is None or rec[1] >= term:
                continue
            t = _term_at(log, i)
            if t is not None and t != rec[0]:
                raise Violation(
                    "leader-completeness",
                    f"node {nid} became leader of term {term} without the entry "
                    f"{rec[0]}/{i} committed in term {rec[1]} "
                    + ("(its log ends before it)" if t == -1 else f"(it has term {t} there)"),
                )

    def _check_entries(self, nid: int, log: RaftLog, offset: int, ents: list[Entry]) -> None:
        prev = _term_at(log, offset - 1)
        if prev == -1:
            raise Violation("log-matching", f"node {nid} has a gap before unstable entry {offset}")
        known = self.entries
        i = offset
        for e in ents:
            if e.index != i:
                raise Violation("log-matching", f"node {nid} has entry {e.index} at position {i}")
            if prev is not None and e.term < prev:
                raise Violation(
                    "log-matching",
                    f"node {nid}: entry {e.term}/{e.index} follows an entry of term {prev}",
                )
            key = (i, e.term)
            val = known.get(key)
            if val is None:
                known[key] = (prev, e.type, e.data)
            elif (
                val[1] != e.type
                or val[2] != e.data
                or (prev is not None and val[0] is not None and val[0] != prev)
            ):
                raise Violation(
                    "log-matching",
                    f"node {nid} has entry {e.term}/{i} = {e.data!r} after term {prev}; "
                    f"seen before as {val[2]!r} after term {val[0]}",
                )
            elif val[0] is None and prev is not None:
                known[key] = (prev, val[1], val[2])
            prev = e.term
            i += 1

    def _commit_advanced(self, nid: int, r: Raft, old: int, new: int) -> None:
        log = r.log
        lo = max(old + 1, log.first_index() - 1)
        for i in range(lo, new + 1):
            t = _term_at(log, i)
            if t is None:
                continue
            if t == -1:
                raise Violation("commit-monotonic", f"node {nid} committed {new} beyond its log")
            self._record_committed(i, t, r.term, f"node {nid}")
        if new > self.max_node_commit:
            self.max_node_commit = new

    def _record_committed(self, i: int, t: int, commit_term: int, who: str) -> None:
        rec = self.committed.get(i)
        if rec is not None:
            if rec[0] != t:
                raise Violation(
                    "committed-entry-changed",
                    f"{who} committed {t}/{i}, but {rec[0]}/{i} was committed before",
                )
            if commit_term < rec[1]:
                rec[1] = commit_term
            return
        self.committed[i] = [t, commit_term]
        if i > self.max_committed:
            self.max_committed = i
        for lid, lr in self.live_leaders.items():
            if lr.term > commit_term:
                lt = _term_at(lr.log, i)
                if lt is not None and lt != t:
                    raise Violation(
                        "leader-completeness",
                        f"leader {lid} of term {lr.term} lacks {t}/{i}, committed "
                        f"({who}) by term {commit_term}",
                    )

    # -- persistence --------------------------------------------------------------------

    def on_persisted(self, nid: int, rd: Ready, durable: HardState) -> None:
        hs = rd.hard_state
        if hs is not None:
            prev = self.durable_votes.get(nid)
            if prev is not None:
                if hs.term < prev[0]:
                    raise Violation(
                        "term-monotonic", f"node {nid} wrote term {hs.term} after term {prev[0]}"
                    )
                if hs.term == prev[0] and prev[1] != NONE and hs.vote != prev[1]:
                    raise Violation(
                        "vote-once",
                        f"node {nid} wrote vote {hs.vote} in term {hs.term} after voting {prev[1]}",
                    )
            self.durable_votes[nid] = (hs.term, hs.vote)
        if not rd.entries:
            return
        term = durable.term
        for e in reversed(rd.entries):
            if e.term == term:
                acks = self.acks.setdefault(term, {})
                if e.index > acks.get(nid, 0):
                    acks[nid] = e.index
                    self._eval_quorum(term)
                break

    def _eval_quorum(self, term: int) -> None:
        voters = self.leader_voters.get(term)
        if voters is None:
            return
        q = voters.committed_index(self.acks[term])
        if 0 < q < INFINITE_INDEX and q > self.quorum_acked.get(term, 0):
            self.quorum_acked[term] = q
            self._record_committed(q, term, term, f"a quorum of term {term}")

    # -- application -----------------------------------------------------------------------

    def on_apply(self, nid: int, e: Entry, digest: int, outcome: Any = None) -> None:
        i = e.index
        rec = self.applied.get(i)
        if rec is None:
            self.applied[i] = (e.term, e.type, e.data, digest)
        elif rec[0] != e.term or rec[1] != e.type or rec[2] != e.data:
            raise Violation(
                "state-machine-safety",
                f"node {nid} applied {e.term}/{i} {e.data!r}; another node applied "
                f"{rec[0]}/{i} {rec[2]!r}",
            )
        elif rec[3] != digest:
            raise Violation(
                "state-machine-safety", f"node {nid} state digest differs after applying {i}"
            )
        c = self.committed.get(i)
        if c is not None and c[0] != e.term:
            raise Violation(
                "state-machine-safety", f"node {nid} applied {e.term}/{i}; {c[0]}/{i} is committed"
            )
        if e.type == EntryType.NORMAL:
            if e.data:
                self._check_proposal(nid, decode_proposal(e.data)[0], e, ("put", "filler"))
            return
        cc = ConfChange.decode(e.data)
        if cc.context:
            self._check_proposal(nid, decode_conf_context(cc.context), e, ("conf",))
        elif cc.changes:
            raise Violation("proposal-integrity", f"node {nid} applied an unproposed {cc} at {i}")
        prev = self.conf_outcomes.get(i, _MISSING)
        if prev is _MISSING:
            self.conf_outcomes[i] = outcome
        elif prev != outcome:
            raise Violation(
                "config-agreement",
                f"node {nid} got {outcome} from the conf change at {i}; another node got {prev}",
            )

    def _check_proposal(self, nid: int, pid: int, e: Entry, kinds: tuple[str, ...]) -> None:
        p = self.proposals.get(pid)
        if p is None:
            raise Violation(
                "proposal-integrity", f"node {nid} applied proposal {pid} that was never accepted"
            )
        if (p.index, p.term) != (e.index, e.term) or p.kind not in kinds:
            raise Violation(
                "proposal-integrity",
                f"node {nid} applied proposal {pid} at {e.term}/{e.index}; it was accepted "
                f"as {p.kind} at {p.term}/{p.index}",
            )

    def config_at(self, index: int) -> ConfState:
        best = -1
        cs: ConfState | None = None
        for i, out in self.conf_outcomes.items():
            if i <= index and i > best and out is not None and out != SKIPPED:
                best, cs = i, out
        assert cs is not None, "no config before the first snapshot"
        return cs

    def _check_snapshot(self, nid: int, snap: Snapshot, sm: KvStateMachine, what: str) -> None:
        m = snap.metadata
        rec = self.applied.get(m.index)
        if rec is None:
            raise Violation(
                "snapshot-integrity", f"node {nid} {what} a snapshot at {m.index} nobody applied"
            )
        if rec[0] != m.term or rec[3] != sm.digest:
            raise Violation(
                "snapshot-integrity",
                f"node {nid} {what} snapshot {m.term}/{m.index} whose state differs from history",
            )
        cs = self.config_at(m.index)
        if cs != m.conf_state:
            raise Violation(
                "snapshot-integrity",
                f"node {nid} {what} snapshot at {m.index} with config {m.conf_state}; "
                f"the config there is {cs}",
            )

    def on_snapshot_created(self, nid: int, snap: Snapshot, sm: KvStateMachine) -> None:
        self._check_snapshot(nid, snap, sm, "created")

    def on_snapshot_installed(self, nid: int, snap: Snapshot, sm: KvStateMachine) -> None:
        self._check_snapshot(nid, snap, sm, "installed")

    # -- proposals and reads ----------------------------------------------------------------

    def proposal_accepted(self, pid: int, kind: str, nid: int, term: int, index: int) -> None:
        self.proposals[pid] = Proposal(pid, kind, nid, term, index)

    def proposal_refused(self, exc: Exception) -> None:
        self.refused[type(exc).__name__] += 1

    def on_read_request(self, ctx: bytes) -> None:
        self.reads[ctx] = self.max_node_commit
        self.read_count["requested"] += 1

    def on_read_refused(self, ctx: bytes) -> None:
        """`read_index` refused the request (no leader known): never answered."""
        del self.reads[ctx]
        self.read_count["refused"] += 1

    def on_read_state(self, nid: int, rs: ReadState) -> None:
        floor = self.reads.pop(rs.request_ctx, None)
        if floor is None:
            self.read_count["duplicate"] += 1
            return
        self.read_count["answered"] += 1
        if rs.index < floor:
            raise Violation(
                "read-linearizability",
                f"node {nid} got read index {rs.index} for {rs.request_ctx!r}; "
                f"{floor} was committed before the read began",
            )

    # -- outcomes -------------------------------------------------------------------------------

    def proposal_outcome(self, p: Proposal) -> str:
        rec = self.applied.get(p.index)
        if rec is None:
            return "undecided"
        return "committed" if rec[0] == p.term else "superseded"

    def proposal_summary(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for p in self.proposals.values():
            out[f"{p.kind}:{self.proposal_outcome(p)}"] += 1
        for name, n in self.refused.items():
            out[f"refused:{name}"] += n
        return out

"""A runner for Raft scenario files (etcd's interaction tests, in our words).

A file in `tests/raft/testdata/` is a sequence of cases. Each case is a
command line, a `----` line, the expected output and a blank line. Lines
starting with `#` before a command are comments saying what the case shows.

    # 1 wins the election; 2 and 3 vote for it.
    campaign 1
    ----
    ok

The commands drive an in-memory cluster of `RaftNode`s, each on its own
`MemoryStorage`, joined by one ordered network queue. Nothing is random:
a node's election timer fires after exactly `election` ticks (plus a jitter
a scenario may set), and messages move only when a command moves them.

Commands (ids are node ids; `(1,2)` and `(1 2)` both list ids):

* `add-nodes N voters=(..) [learners=(..)] [index=I] [prevote=true]
  [checkquorum=true] [election=3] [heartbeat=1] [max-inflight=256]
  [max-msg-size=N] [step-down-on-removal=true]`: add N nodes with the next
  free ids. With `index=I` (> 0) each starts at term 1 from a snapshot at
  I (term 1) holding the given config; without, it starts empty (and
  needs a snapshot).
* `campaign ID`, `tick-heartbeat ID`, `tick-election ID` (`election`
  ticks), `tick ID N`; `set-election-jitter ID J`: from now on ID's election
  timer fires after `election + J` ticks (its lease still ends after
  `election`)
* `propose ID DATA`, `propose-conf-change ID [transition=auto|implicit|explicit]
  [v4 l5 r2 ...]` (v: voter, l: learner, r: remove; no change: leave joint)
* `read-index ID CTX`, `transfer-leader ID TO`
* `report-unreachable ID TO`, `report-snapshot ID TO success|failure`
* `process-ready [ID...]`: handle each node's Ready per the driver contract
  (`raft.node`) and print it; conf change entries are applied and their
  result printed.
* `deliver-msgs [to=(..)] [from=(..)] [type=NAME] [drop=(..)]`: deliver the
  queued messages that match, in order; those addressed to a node in `drop`
  are dropped instead. Messages sent meanwhile wait for the next command.
* `stabilize [ID...]`: process Ready and deliver messages among the given
  nodes (default all) until nothing is left to do.
* `partition (1) (2 3)` / `heal`: messages between groups are dropped at
  delivery (a node in no group is cut off from all); `heal` drops those
  still queued.
* `status ID` (role, term, marks, progress), `raft-log ID` (stable storage),
  `compact ID INDEX` (snapshot at INDEX, then drop the log up to it)
* `restart ID`: the node loses everything not in its storage and starts
  again from it; `crash-before-persist ID`: take a Ready, send only the
  messages that may precede the write, then restart without writing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    Config,
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDroppedError,
    RaftNode,
)
from raft.describe import (
    describe_conf_state,
    describe_entry,
    describe_message,
    describe_raft,
    describe_ready,
    describe_snapshot,
)
from tests.raft.helpers import booted_storage, write_ready

# A runaway `stabilize` (a node that always has a Ready) is a bug to report,
# not a test that hangs.
MAX_STABILIZE_ROUNDS = 1000


class ScenarioError(Exception):
    """A malformed scenario file or command."""


class FixedJitter(random.Random):
    """Randomized election timeouts without the randomness: exactly
    `election_ticks + jitter` ticks (jitter 0 unless a scenario sets it), so
    a scenario says how many ticks elect a node."""

    def __init__(self, jitter: int = 0) -> None:
        super().__init__(0)
        self.jitter = jitter

    def randrange(self, *args: object, **kwargs: object) -> int:
        return self.jitter


# -- the file format ------------------------------------------------------------


@dataclass
class Case:
    preamble: list[str]  # comment and blank lines before the command
    command: str
    expected: list[str]
    line: int  # 1-based line number of the command


def parse(text: str, name: str = "<scenario>") -> list[Case]:
    cases: list[Case] = []
    lines = text.splitlines()
    preamble: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            preamble.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ScenarioError(f"{name}:{i + 1}: expected '----' after command {line!r}")
        start = i
        i += 2
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        i += 1  # the blank line closing the case
        cases.append(Case(preamble, line, expected, start + 1))
        preamble = []
    if any(p.strip() for p in preamble):
        raise ScenarioError(f"{name}: trailing comment lines without a command")
    return cases


def render(cases: list[Case], outputs: list[list[str]]) -> str:
    """The file text with each case's expected output replaced."""
    out: list[str] = []
    for case, got in zip(cases, outputs, strict=True):
        out.extend(case.preamble)
        out.append(case.command)
        out.append("----")
        out.extend(got)
        out.append("")
    return "\n".join(out) + "\n"


def run_file(path: Path) -> tuple[list[Case], list[list[str]]]:
    """Run every case of a file in one fresh environment."""
    cases = parse(path.read_text(), path.name)
    env = Env()
    outputs: list[list[str]] = []
    for case in cases:
        try:
            got = env.run(case.command)
        except ScenarioError as e:
            raise ScenarioError(f"{path.name}:{case.line}: {e}") from e
        if not got:
            got = ["ok"]
        for ln in got:
            if not ln.strip():
                raise ScenarioError(f"{path.name}:{case.line}: blank line in output")
        outputs.append(got)
    return cases, outputs


# -- arguments ------------------------------------------------------------------

_TOKEN = re.compile(r"\S+=\([^)]*\)|\([^)]*\)|\S+")


def _ids(s: str) -> list[int]:
    s = s.strip()
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    return [int(x) for x in re.split(r"[,\s]+", s) if x]


def _bool(s: str) -> bool:
    if s in ("true", "false"):
        return s == "true"
    raise ScenarioError(f"expected true or false, got {s!r}")


@dataclass
class Args:
    pos: list[str]
    kw: dict[str, str]

    @classmethod
    def parse(cls, tokens: list[str]) -> Args:
        pos: list[str] = []
        kw: dict[str, str] = {}
        for t in tokens:
            if "=" in t and not t.startswith("("):
                k, v = t.split("=", 1)
                kw[k] = v
            else:
                pos.append(t)
        return cls(pos, kw)

    def int_at(self, i: int) -> int:
        if i >= len(self.pos):
            raise ScenarioError(f"missing argument {i + 1}")
        return int(self.pos[i])

    def take(self, key: str, default: str) -> str:
        return self.kw.pop(key, default)

    def done(self) -> None:
        if self.kw:
            raise ScenarioError(f"unknown arguments {sorted(self.kw)}")


# -- the cluster --------------------------------------------------------------------


@dataclass
class Peer:
    """One node with its storage and the bits of an application around it."""

    config: Config
    storage: MemoryStorage
    node: RaftNode
    # (index, config) after each applied conf change: snapshots need the
    # config as of their index, not as of now.
    conf_history: list[tuple[int, ConfState]] = field(default_factory=list)

    def conf_at(self, index: int) -> ConfState:
        cs = ConfState()
        for i, c in self.conf_history:
            if i <= index:
                cs = c
        return cs


_CC_TYPES = {
    "v": ConfChangeType.ADD_NODE,
    "l": ConfChangeType.ADD_LEARNER,
    "r": ConfChangeType.REMOVE_NODE,
}
_TRANSITIONS = {
    "auto": ConfChangeTransition.AUTO,
    "implicit": ConfChangeTransition.JOINT_IMPLICIT,
    "explicit": ConfChangeTransition.JOINT_EXPLICIT,
}


class Env:
    def __init__(self) -> None:
        self.peers: dict[int, Peer] = {}
        # The network: every message sent and not yet delivered, in send order.
        self.net: list[Message] = []
        self.groups: list[set[int]] | None = None

    # -- dispatch ----------------------------------------------------------------

    def run(self, command: str) -> list[str]:
        tokens = _TOKEN.findall(command)
        name, args = tokens[0], Args.parse(tokens[1:])
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise ScenarioError(f"unknown command {name!r}")
        out: list[str] = handler(args)
        return out

    def peer(self, node_id: int) -> Peer:
        if node_id not in self.peers:
            raise ScenarioError(f"no node {node_id}")
        return self.peers[node_id]

    # -- setup -------------------------------------------------------------------

    def cmd_add_nodes(self, a: Args) -> list[str]:
        n = a.int_at(0)
        voters = _ids(a.take("voters", "()"))
        learners = _ids(a.take("learners", "()"))
        index = int(a.take("index", "0"))
        base = {
            "election_ticks": int(a.take("election", "3")),
            "heartbeat_ticks": int(a.take("heartbeat", "1")),
            "max_inflight_msgs": int(a.take("max-inflight", "256")),
            "max_size_per_msg": int(a.take("max-msg-size", str(1 << 20))),
            "pre_vote": _bool(a.take("prevote", "true")),
            "check_quorum": _bool(a.take("checkquorum", "true")),
            "step_down_on_removal": _bool(a.take("step-down-on-removal", "true")),
        }
        a.done()
        cs = ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
        first = max(self.peers, default=0) + 1
        for node_id in range(first, first + n):
            storage = booted_storage(cs, index) if index > 0 else MemoryStorage()
            history = [(index, cs)] if index > 0 else []
            cfg = Config(id=node_id, **base)  # type: ignore[arg-type]
            node = RaftNode(cfg, storage, FixedJitter())
            self.peers[node_id] = Peer(cfg, storage, node, history)
        return []

    def cmd_restart(self, a: Args) -> list[str]:
        self._restart(self.peer(a.int_at(0)))
        return []

    def _restart(self, p: Peer) -> None:
        # The state machine is rebuilt from the snapshot plus log replay, so
        # the conf history goes back to the snapshot's.
        snap = p.storage.snapshot()
        p.conf_history = [(snap.metadata.index, snap.metadata.conf_state)]
        old = p.node.raft.rng
        jitter = old.jitter if isinstance(old, FixedJitter) else 0
        p.node = RaftNode(p.config, p.storage, FixedJitter(jitter))

    # -- inputs ------------------------------------------------------------------

    def cmd_campaign(self, a: Args) -> list[str]:
        self.peer(a.int_at(0)).node.campaign()
        return []

    def cmd_tick(self, a: Args) -> list[str]:
        node = self.peer(a.int_at(0)).node
        for _ in range(a.int_at(1)):
            node.tick()
        return []

    def cmd_tick_heartbeat(self, a: Args) -> list[str]:
        p = self.peer(a.int_at(0))
        for _ in range(p.config.heartbeat_ticks):
            p.node.tick()
        return []

    def cmd_tick_election(self, a: Args) -> list[str]:
        p = self.peer(a.int_at(0))
        for _ in range(p.config.election_ticks):
            p.node.tick()
        return []

    def cmd_propose(self, a: Args) -> list[str]:
        node = self.peer(a.int_at(0)).node
        data = a.pos[1].encode() if len(a.pos) > 1 else b""
        try:
            return [f"ok index={node.propose(data)}"]
        except ProposalDroppedError as e:
            return [f"refused: {type(e).__name__}: {e}"]

    def cmd_propose_conf_change(self, a: Args) -> list[str]:
        node = self.peer(a.int_at(0)).node
        transition = _TRANSITIONS[a.take("transition", "auto")]
        a.done()
        changes = []
        for tok in a.pos[1:]:
            if tok[:1] not in _CC_TYPES:
                raise ScenarioError(f"bad conf change {tok!r}")
            changes.append(ConfChangeSingle(_CC_TYPES[tok[0]], int(tok[1:])))
        cc = ConfChange(tuple(changes), transition)
        try:
            return [f"ok index={node.propose_conf_change(cc)}"]
        except (ProposalDroppedError, ConfChangeError) as e:
            return [f"refused: {type(e).__name__}: {e}"]

    def cmd_read_index(self, a: Args) -> list[str]:
        try:
            self.peer(a.int_at(0)).node.read_index(a.pos[1].encode())
        except ProposalDroppedError as e:
            return [f"refused: {type(e).__name__}: {e}"]
        return []

    def cmd_transfer_leader(self, a: Args) -> list[str]:
        self.peer(a.int_at(0)).node.transfer_leader(a.int_at(1))
        return []

    def cmd_report_unreachable(self, a: Args) -> list[str]:
        self.peer(a.int_at(0)).node.report_unreachable(a.int_at(1))
        return []

    def cmd_report_snapshot(self, a: Args) -> list[str]:
        if len(a.pos) < 3 or a.pos[2] not in ("success", "failure"):
            raise ScenarioError("usage: report-snapshot ID TO success|failure")
        self.peer(a.int_at(0)).node.report_snapshot(a.int_at(1), a.pos[2] == "success")
        return []

    # -- Ready and the network ------------------------------------------------------

    def _handle_ready(self, p: Peer) -> list[str]:
        """One loop iteration of the driver contract in `raft.node`."""
        rd = p.node.ready()
        out = describe_ready(rd).splitlines()
        self.net.extend(rd.messages)
        write_ready(p.storage, rd)
        if rd.snapshot is not None:
            meta = rd.snapshot.metadata
            p.conf_history = [(meta.index, meta.conf_state)]
        self.net.extend(rd.persisted_messages)
        for e in rd.committed_entries:
            if e.type != EntryType.CONF_CHANGE:
                continue
            try:
                cs = p.node.apply_conf_change(ConfChange.decode(e.data))
            except ConfChangeError as err:
                out.append(f"conf change at {e.index} refused: {err}")
                continue
            p.conf_history.append((e.index, cs))
            out.append(f"applied conf change at {e.index}: {describe_conf_state(cs)}")
        p.node.advance(rd)
        return out

    def cmd_process_ready(self, a: Args) -> list[str]:
        ids = [int(x) for x in a.pos] or sorted(self.peers)
        out: list[str] = []
        for i in ids:
            p = self.peer(i)
            lines = self._handle_ready(p) if p.node.has_ready() else ["<no ready>"]
            if len(ids) == 1:
                out.extend(lines)
            else:
                out.append(f"> {i} handling Ready")
                out.extend("  " + ln for ln in lines)
        return out

    def cmd_crash_before_persist(self, a: Args) -> list[str]:
        p = self.peer(a.int_at(0))
        if not p.node.has_ready():
            return ["<no ready>"]
        rd = p.node.ready()
        out = describe_ready(rd).splitlines()
        self.net.extend(rd.messages)
        out.append(f"crashed: {len(rd.messages)} message(s) sent, nothing persisted")
        self._restart(p)
        return out

    def _connected(self, a: int, b: int) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    def _deliver(self, msgs: list[Message], drop: set[int], indent: str) -> list[str]:
        out: list[str] = []
        for m in msgs:
            line = describe_message(m)
            if m.to in drop:
                out.append(f"{indent}dropped: {line}")
            elif not self._connected(m.from_, m.to):
                out.append(f"{indent}dropped (partition): {line}")
            elif m.to not in self.peers:
                out.append(f"{indent}dropped (no such node): {line}")
            else:
                out.append(indent + line)
                self.peers[m.to].node.step(m)
        return out

    def _take(self, pred: Callable[[Message], bool]) -> list[Message]:
        taken = [m for m in self.net if pred(m)]
        self.net = [m for m in self.net if not pred(m)]
        return taken

    def cmd_deliver_msgs(self, a: Args) -> list[str]:
        to = set(_ids(a.take("to", "()")))
        frm = set(_ids(a.take("from", "()")))
        typ = a.take("type", "")
        drop = set(_ids(a.take("drop", "()")))
        a.done()
        if typ and typ not in MessageType.__members__:
            raise ScenarioError(f"unknown message type {typ!r}")

        def match(m: Message) -> bool:
            return (
                (not to or m.to in to)
                and (not frm or m.from_ in frm)
                and (not typ or m.type.name == typ)
            )

        out = self._deliver(self._take(match), drop, "")
        return out or ["no messages"]

    def cmd_stabilize(self, a: Args) -> list[str]:
        ids = [int(x) for x in a.pos] or sorted(self.peers)
        out: list[str] = []
        for _ in range(MAX_STABILIZE_ROUNDS):
            done = True
            for i in ids:
                p = self.peer(i)
                if p.node.has_ready():
                    done = False
                    out.append(f"> {i} handling Ready")
                    out.extend("  " + ln for ln in self._handle_ready(p))
            for i in ids:
                msgs = self._take(lambda m, i=i: m.to == i)  # type: ignore[misc]
                if msgs:
                    done = False
                    out.append(f"> {i} receiving messages")
                    out.extend(self._deliver(msgs, set(), "  "))
            if done:
                return out
        raise ScenarioError(f"stabilize did not settle within {MAX_STABILIZE_ROUNDS} rounds")

    def cmd_partition(self, a: Args) -> list[str]:
        groups = [set(_ids(g)) for g in a.pos]
        if not groups:
            raise ScenarioError("usage: partition (1) (2 3)")
        self.groups = groups
        return []

    def cmd_heal(self, a: Args) -> list[str]:
        # Messages sent across the partition were lost, not delayed.
        lost = [m for m in self.net if not self._connected(m.from_, m.to)]
        self.net = [m for m in self.net if self._connected(m.from_, m.to)]
        self.groups = None
        return [f"dropped (partition): {describe_message(m)}" for m in lost]

    def cmd_set_election_jitter(self, a: Args) -> list[str]:
        p = self.peer(a.int_at(0))
        jitter = a.int_at(1)
        if not 0 <= jitter < p.config.election_ticks:
            raise ScenarioError(f"jitter must be in [0, {p.config.election_ticks})")
        rng = p.node.raft.rng
        assert isinstance(rng, FixedJitter)
        rng.jitter = jitter
        # Takes effect now, not only at the next role change.
        p.node.raft.randomized_election_timeout = p.config.election_ticks + jitter
        return []

    # -- inspection ------------------------------------------------------------------

    def cmd_status(self, a: Args) -> list[str]:
        return describe_raft(self.peer(a.int_at(0)).node.raft).splitlines()

    def cmd_raft_log(self, a: Args) -> list[str]:
        s = self.peer(a.int_at(0)).storage
        out = []
        if not s.snapshot().is_empty:
            out.append(describe_snapshot(s.snapshot()))
        first, last = s.first_index(), s.last_index()
        if first > last:
            out.append(f"no entries (first={first} last={last})")
        else:
            out.extend(describe_entry(e) for e in s.entries(first, last + 1))
        return out

    def cmd_compact(self, a: Args) -> list[str]:
        p = self.peer(a.int_at(0))
        index = a.int_at(1)
        if index > p.node.applied_index:
            raise ScenarioError(f"compact {index} beyond applied {p.node.applied_index}")
        p.storage.create_snapshot(index, p.conf_at(index), b"")
        p.storage.compact(index)
        return self.cmd_raft_log(Args([str(p.node.id)], {}))

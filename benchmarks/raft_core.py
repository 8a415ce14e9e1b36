"""Benchmark of the Raft core alone: three nodes in one process, no I/O.

Every node has a MemoryStorage; messages are delivered in-process; the
state machine is a dict (1000 keys, the entry index picks the key).

1. Throughput: committed entries per second for 100-byte proposals, with
   one proposal per round versus 64. A round is one loop iteration: the
   leader takes the round's proposals, every node handles its Ready (per
   the driver contract of `raft.node`), and every message sent is delivered.
2. Catch-up (issue 3): a follower 100,000 entries behind catches up either
   by log replay (the leader still has the entries) or by snapshot (the
   leader compacted its log). Measured from the moment it is reachable
   again: ticks (each tick: every node ticks once, then Readies are handled
   and messages delivered until nothing moves; "rounds" counts those
   handle-and-deliver passes) and wall time.

Run: `python3 benchmarks/raft_core.py [--runs 5] [--seconds 2]`. Prints the
median (min-max) of the runs. A benchmark, not a test: it asserts nothing
beyond its own sanity.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RaftNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
)

PAYLOAD = 100
KEYS = 1000
IDS = (1, 2, 3)
CONF = ConfState(voters=IDS)


# -- a tiny in-process cluster ----------------------------------------------------


@dataclass
class Peer:
    storage: MemoryStorage
    node: RaftNode
    state: dict[bytes, bytes] = field(default_factory=dict)


def config(node_id: int, applied: int = 0) -> Config:
    return Config(id=node_id, election_ticks=10, heartbeat_ticks=1, applied=applied)


def key_of(index: int) -> bytes:
    return b"k%d" % (index % KEYS)


def encode_state(state: dict[bytes, bytes]) -> bytes:
    return b"\n".join(k + b"=" + v for k, v in sorted(state.items()))


def decode_state(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for line in data.split(b"\n") if data else []:
        k, _, v = line.partition(b"=")
        out[k] = v
    return out


class Cluster:
    def __init__(self, peers: dict[int, Peer]) -> None:
        self.peers = peers
        self.queue: list[Message] = []
        self.cut: set[int] = set()  # nodes whose messages are dropped
        self.bytes_to: dict[int, int] = {}  # payload bytes delivered per node
        self.compact_every = 0

    def handle(self, p: Peer) -> None:
        rd: Ready = p.node.ready()
        self.queue.extend(rd.messages)
        if rd.snapshot is not None:
            p.storage.apply_snapshot(rd.snapshot)
            p.state = decode_state(rd.snapshot.data)
        p.storage.append(rd.entries)
        if rd.hard_state is not None:
            p.storage.set_hard_state(rd.hard_state)
        self.queue.extend(rd.persisted_messages)
        for e in rd.committed_entries:
            if e.type == EntryType.NORMAL and e.data:
                p.state[key_of(e.index)] = e.data
        p.node.advance(rd)
        if self.compact_every and rd.committed_entries:
            applied = p.node.applied_index
            if applied - p.storage.first_index() >= self.compact_every:
                self.compact(p, applied)

    def compact(self, p: Peer, index: int) -> None:
        p.storage.create_snapshot(index, p.node.conf_state(), encode_state(p.state))
        p.storage.compact(index)

    def round(self) -> bool:
        """Handle every Ready, then deliver every message once; False if
        nothing moved."""
        moved = False
        for p in self.peers.values():
            if p.node.has_ready():
                self.handle(p)
                moved = True
        msgs, self.queue = self.queue, []
        for m in msgs:
            moved = True
            if m.to in self.cut or m.from_ in self.cut:
                continue
            self.bytes_to[m.to] = self.bytes_to.get(m.to, 0) + payload_bytes(m)
            self.peers[m.to].node.step(m)
            if m.type == MessageType.SNAPSHOT:
                # The transport tells the leader the snapshot went through.
                self.peers[m.from_].node.report_snapshot(m.to, True)
        return moved

    def settle(self, limit: int = 100_000) -> int:
        for n in range(limit):
            if not self.round():
                return n
        raise AssertionError("cluster did not settle")

    def tick(self) -> int:
        for p in self.peers.values():
            p.node.tick()
        return self.settle()


def payload_bytes(m: Message) -> int:
    n = sum(len(e.data) for e in m.entries)
    if m.snapshot is not None:
        n += len(m.snapshot.data)
    return n


def bootstrap() -> MemoryStorage:
    s = MemoryStorage()
    s.apply_snapshot(Snapshot(metadata=SnapshotMetadata(index=1, term=1, conf_state=CONF)))
    s.set_hard_state(HardState(term=1, commit=1))
    return s


def fresh_cluster() -> Cluster:
    peers = {}
    for i in IDS:
        s = bootstrap()
        peers[i] = Peer(s, RaftNode(config(i), s, random.Random(i)))
    c = Cluster(peers)
    c.peers[1].node.campaign()
    c.settle()
    assert c.peers[1].node.role == Role.LEADER
    return c


# -- 1. throughput ---------------------------------------------------------------


def throughput(per_round: int, seconds: float) -> float:
    c = fresh_cluster()
    c.compact_every = 20_000
    leader = c.peers[1].node
    payload = b"v" * PAYLOAD
    start_commit = leader.commit_index
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(per_round):
            leader.propose(payload)
        c.round()
    elapsed = time.perf_counter() - start
    return (leader.commit_index - start_commit) / elapsed


# -- 2. catch-up -------------------------------------------------------------------


@dataclass
class CatchUp:
    ticks: int
    rounds: int
    bytes: int
    seconds: float


def behind_cluster(entries: int) -> Cluster:
    """Nodes 1 and 2 hold `entries` committed and applied entries of term 2;
    node 3 has none of them. 1 is then elected (term 3) while 3 is cut off."""
    payload = b"v" * PAYLOAD
    last = 1 + entries
    log = [Entry(term=2, index=i, data=payload) for i in range(2, last + 1)]
    state = {key_of(i): payload for i in range(max(2, last - KEYS), last + 1)}
    peers = {}
    for i in IDS:
        s = bootstrap()
        if i == 3:
            s.set_hard_state(HardState(term=2, commit=1))
            peers[i] = Peer(s, RaftNode(config(i), s, random.Random(i)))
            continue
        s.append(log)
        s.set_hard_state(HardState(term=2, commit=last))
        node = RaftNode(config(i, applied=last), s, random.Random(i))
        peers[i] = Peer(s, node, dict(state))
    c = Cluster(peers)
    c.cut = {3}
    c.peers[1].node.campaign()
    c.settle()
    assert c.peers[1].node.role == Role.LEADER
    return c


def catch_up(entries: int, by_snapshot: bool) -> CatchUp:
    c = behind_cluster(entries)
    leader, follower = c.peers[1], c.peers[3]
    if by_snapshot:
        c.compact(leader, leader.node.applied_index)
    target = leader.node.commit_index
    c.cut = set()
    c.bytes_to = {}
    ticks = rounds = 0
    start = time.perf_counter()
    while follower.node.applied_index < target:
        rounds += c.tick()
        ticks += 1
        if ticks > 1000:
            raise AssertionError("follower did not catch up")
    elapsed = time.perf_counter() - start
    assert follower.state == leader.state, "follower state differs from the leader's"
    return CatchUp(ticks, rounds, c.bytes_to.get(3, 0), elapsed)


# -- the table ---------------------------------------------------------------------


def summary(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(statistics.median(values))} ({fmt(min(values))} - {fmt(max(values))})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark the Raft core in memory: throughput of batched proposals and "
        "catch-up of a lagging follower by log replay versus snapshot."
    )
    ap.add_argument("--runs", type=int, default=5, help="runs per measurement (default 5)")
    ap.add_argument(
        "--seconds", type=float, default=2.0, help="duration of each throughput run (default 2)"
    )
    ap.add_argument(
        "--behind",
        type=int,
        default=100_000,
        help="entries the follower is behind in the catch-up runs (default 100000)",
    )
    args = ap.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.behind < 1:
        ap.error("--runs, --seconds and --behind must be positive")

    print(
        f"Raft core, 3 nodes in one process (MemoryStorage, in-process delivery), "
        f"Python {sys.version.split()[0]}; median (min - max) of {args.runs} runs"
    )
    print()
    print(f"Throughput, {PAYLOAD}-byte proposals, {args.seconds:g} s per run")
    rows = []
    for per_round in (1, 64):
        rates = [throughput(per_round, args.seconds) for _ in range(args.runs)]
        rows.append([str(per_round), summary(rates, lambda v: f"{v:,.0f}")])
    print(table(["proposals per round", "committed entries/s"], rows))
    print()
    print(f"Catch-up of a follower {args.behind:,} entries behind (state machine: {KEYS} keys)")
    rows = []
    for label, by_snapshot in (("log replay", False), ("snapshot", True)):
        res = [catch_up(args.behind, by_snapshot) for _ in range(args.runs)]
        rows.append(
            [
                label,
                summary([r.ticks for r in res], lambda v: f"{v:g}"),
                summary([r.rounds for r in res], lambda v: f"{v:g}"),
                summary([r.bytes for r in res], lambda v: f"{v:,.0f}"),
                summary([r.seconds * 1000 for r in res], lambda v: f"{v:.2f}"),
            ]
        )
    print(table(["mode", "ticks", "rounds", "payload bytes to it", "wall time (ms)"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

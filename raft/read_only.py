"""Linearizable reads without log writes: ReadIndex (Raft §6.4).

The leader records its commit index when a read arrives, then confirms it is
still leader with one heartbeat round; once a quorum acknowledges the round,
every read queued before it may be served at the recorded index. Reads that
arrive before a heartbeat round is started share that round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from raft.types import NONE


@dataclass(slots=True)
class ReadIndexStatus:
    # Who asked: NONE or the leader itself for local reads, else a follower.
    from_: int
    ctx: bytes
    index: int
    acks: dict[int, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReadAnswer:
    """A read point decided: requester `from_` (NONE or the leader itself:
    a local read) may read at `index` once applied there."""

    from_: int
    ctx: bytes
    index: int


class ReadOnly:
    """The leader's ReadIndex requests: those waiting for an entry of the
    leader's term to commit, then those waiting for their heartbeat round,
    in arrival order, keyed by their context. The leader feeds it what
    happens (a request, a commit in its term, a heartbeat acknowledgement)
    and gets back the read points decided.

    Invariant: `queue` and `pending` hold the same contexts.
    """

    __slots__ = ("pending", "queue", "unbroadcast", "waiting_for_term")

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []
        # Requests added since the last heartbeat round was started.
        self.unbroadcast = False
        # Requests that arrived before an entry of the leader's term
        # committed: (from, ctx).
        self.waiting_for_term: list[tuple[int, bytes]] = []

    def request(
        self,
        leader: int,
        from_: int,
        ctx: bytes,
        committed: int,
        term_committed: bool,
        singleton: bool,
    ) -> list[ReadAnswer]:
        """A read point asked for at the leader (`from_` NONE: a local read).
        Until an entry of its term commits, a new leader's commit index may
        lag the true one (thesis 6.4), even alone (its persisted commit
        index may be behind what was acknowledged): the request waits.
        Alone it answers at once; else the request joins the next heartbeat
        round (the leader counts its own acknowledgement)."""
        if not term_committed:
            self.waiting_for_term.append((from_, ctx))
            return []
        if singleton:
            return [ReadAnswer(from_, ctx, committed)]
        if self.add_request(committed, from_, ctx):
            self.recv_ack(leader, ctx)
        return []

    def on_term_committed(self, leader: int, committed: int, singleton: bool) -> list[ReadAnswer]:
        """An entry of the leader's term committed: the waiting requests go on."""
        waiting, self.waiting_for_term = self.waiting_for_term, []
        answers: list[ReadAnswer] = []
        for from_, ctx in waiting:
            answers += self.request(leader, from_, ctx, committed, True, singleton)
        return answers

    def on_ack(
        self, node_id: int, ctx: bytes, has_quorum: Callable[[dict[int, bool]], bool]
    ) -> list[ReadAnswer]:
        """`node_id` acknowledged the heartbeat round tagged `ctx`: once a
        quorum did, every request queued up to it is answered."""
        acks = self.recv_ack(node_id, ctx)
        if acks is None or not has_quorum(acks):
            return []
        return [ReadAnswer(rs.from_, rs.ctx, rs.index) for rs in self.advance(ctx)]

    def add_request(self, index: int, from_: int, ctx: bytes) -> bool:
        """Queue a read at `index`; False if `ctx` is already pending."""
        if ctx in self.pending:
            return False
        self.pending[ctx] = ReadIndexStatus(from_=from_ or NONE, ctx=ctx, index=index)
        self.queue.append(ctx)
        self.unbroadcast = True
        return True

    def recv_ack(self, node_id: int, ctx: bytes) -> dict[int, bool] | None:
        """Record that `node_id` acknowledged the round tagged `ctx`."""
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks[node_id] = True
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Release every request queued up to and including `ctx`."""
        if ctx not in self.pending:
            return []
        i = self.queue.index(ctx)
        released = [self.pending.pop(c) for c in self.queue[: i + 1]]
        del self.queue[: i + 1]
        return released

    def last_pending_ctx(self) -> bytes | None:
        return self.queue[-1] if self.queue else None

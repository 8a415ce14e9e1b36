"""Linearizable reads without log writes: ReadIndex (Raft §6.4).

The leader records its commit index when a read arrives, then confirms it is
still leader with one heartbeat round; once a quorum acknowledges the round,
every read queued before it may be served at the recorded index. Reads that
arrive before a heartbeat round is started share that round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raft.types import NONE


@dataclass(slots=True)
class ReadIndexStatus:
    # Who asked: NONE or the leader itself for local reads, else a follower.
    from_: int
    ctx: bytes
    index: int
    acks: dict[int, bool] = field(default_factory=dict)


class ReadOnly:
    """Pending ReadIndex requests in arrival order, keyed by their context.

    Invariant: `queue` and `pending` hold the same contexts.
    """

    __slots__ = ("pending", "queue", "unbroadcast")

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []
        # Requests added since the last heartbeat round was started.
        self.unbroadcast = False

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

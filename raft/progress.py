"""What a leader knows about one follower's log (etcd's tracker.Progress)."""

from __future__ import annotations

from enum import IntEnum

from raft.inflights import Inflights


class ProgressState(IntEnum):
    # Probe: one append at a time until the follower's match point is found.
    PROBE = 0
    # Replicate: optimistic streaming of appends within the inflight window.
    REPLICATE = 1
    # Snapshot: a snapshot is on its way; appends pause until it is reported.
    SNAPSHOT = 2


class Progress:
    """Invariant: 0 <= match < next.

    `match` is the highest index known to be durably replicated on the
    follower; `next` the index of the next entry to send.
    """

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "msg_app_flow_paused",
        "next",
        "pending_snapshot",
        "recent_active",
        "sent_commit",
        "state",
    )

    def __init__(
        self,
        next_index: int,
        inflights: Inflights,
        *,
        match: int = 0,
        is_learner: bool = False,
        recent_active: bool = False,
    ) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        # In SNAPSHOT state, the index of the snapshot being sent.
        self.pending_snapshot = 0
        # Heard from within the current election timeout (CheckQuorum).
        self.recent_active = recent_active
        # In PROBE: a probe is outstanding. In REPLICATE: the window is full.
        self.msg_app_flow_paused = False
        self.inflights = inflights
        self.is_learner = is_learner
        # The highest commit index sent in an append to this follower.
        self.sent_commit = 0

    def copy(self) -> Progress:
        pr = Progress(
            self.next,
            self.inflights.copy(),
            match=self.match,
            is_learner=self.is_learner,
            recent_active=self.recent_active,
        )
        pr.state = self.state
        pr.pending_snapshot = self.pending_snapshot
        pr.msg_app_flow_paused = self.msg_app_flow_paused
        pr.sent_commit = self.sent_commit
        return pr

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            # Probe from the snapshot point if it was applied, else from match.
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1
        self.sent_commit = min(self.sent_commit, self.next - 1)

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.next = snapshot_index + 1

    def sent_entries(self, count: int, nbytes: int) -> None:
        """Account for an append of `count` entries starting at `next`."""
        if self.state == ProgressState.REPLICATE:
            if count > 0:
                self.next += count
                self.inflights.add(self.next - 1, nbytes)
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state == ProgressState.PROBE and count > 0:
            self.msg_app_flow_paused = True

    def can_bump_commit(self, commit: int) -> bool:
        """Whether sending `commit` may advance the follower's commit index:
        not if an earlier append already took it as far as `next - 1`."""
        return commit > self.sent_commit and self.sent_commit < self.next - 1

    def maybe_update(self, n: int) -> bool:
        """Record an acknowledgement of index `n`; False if it is stale."""
        if n <= self.match:
            return False
        self.match = n
        self.next = max(self.next, n + 1)
        self.msg_app_flow_paused = False
        return True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejection of the append at `rejected`; False if stale.

        `match_hint` is the highest index that may match on the follower.
        """
        if self.state == ProgressState.REPLICATE:
            # A rejection below match is a stale reply to an old append.
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        # In PROBE only the rejection of the outstanding probe counts.
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.SNAPSHOT:
            return True
        return self.msg_app_flow_paused

    def describe(self) -> str:
        s = f"{self.state.name} match={self.match} next={self.next}"
        if self.is_learner:
            s += " learner"
        if self.state == ProgressState.SNAPSHOT:
            s += f" pending_snap={self.pending_snapshot}"
        if not self.recent_active:
            s += " inactive"
        if self.msg_app_flow_paused:
            s += " paused"
        if self.inflights.count():
            s += f" inflight={self.inflights.count()}"
            if self.inflights.full():
                s += "[full]"
        return s

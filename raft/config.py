"""Tunables of one Raft node, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Config:
    id: int
    # A follower campaigns after a randomized timeout in
    # [election_ticks, 2 * election_ticks) ticks without hearing a leader.
    election_ticks: int = 10
    # A leader sends heartbeats every `heartbeat_ticks` ticks.
    heartbeat_ticks: int = 1
    # Upper bound on the entry payload bytes of one append message (at least
    # one entry is always sent).
    max_size_per_msg: int = 1 << 20
    # Bounded in-flight window per follower in REPLICATE state.
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0  # 0: unlimited
    # Upper bound on the bytes of committed entries in one Ready.
    max_committed_size_per_ready: int = 64 << 20
    # The last index the application applied (on restart).
    applied: int = 0
    pre_vote: bool = True
    # A leader that has not heard from a quorum within an election timeout
    # steps down; followers ignore votes while they hear from a leader.
    check_quorum: bool = True
    # A node restarted from its persisted state grants no vote (nor
    # pre-vote) until an election timeout has passed, as if it had just
    # heard from a leader: a leader's lease may rest on acknowledgements it
    # sent before it went down, and a vote given at once would break it.
    quiet_after_start: bool = False
    # A leader whose commit index advances tells only followers it sends
    # entries to anyway; the others learn it with the next append or
    # heartbeat (raft-rs's skip_bcast_commit, on in TiKV). Saves an empty
    # append, its answer and a follower round per commit; followers apply
    # up to a heartbeat interval later when writes stop.
    skip_bcast_commit: bool = False
    # A leader that is removed from (or demoted in) the config steps down
    # once the change is applied.
    step_down_on_removal: bool = True

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be positive (0 means none)")
        if self.heartbeat_ticks <= 0:
            raise ValueError("heartbeat_ticks must be positive")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be positive")
        if self.max_size_per_msg <= 0 or self.max_committed_size_per_ready <= 0:
            raise ValueError("size limits must be positive")
        if self.applied < 0:
            raise ValueError("applied must not be negative")

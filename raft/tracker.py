"""The leader's view of the group: the configuration, each member's
Progress, and the votes of the current election (etcd's tracker package)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from raft.progress import Progress
from raft.quorum import JointConfig, VoteResult
from raft.types import ConfState


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """A membership configuration.

    Invariants (checked by `raft.confchange`):
    * `learners` is disjoint from both voter halves;
    * `learners_next` is a subset of the outgoing voters (voters being
      demoted that become learners when the joint config is left);
    * outside a joint config, `learners_next` is empty and `auto_leave` False.
    """

    voters: JointConfig = field(default_factory=JointConfig)
    learners: frozenset[int] = frozenset()
    learners_next: frozenset[int] = frozenset()
    auto_leave: bool = False

    def conf_state(self) -> ConfState:
        return ConfState(
            voters=tuple(sorted(self.voters.incoming.ids)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.voters.outgoing.ids)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )

    def describe(self) -> str:
        return self.conf_state().describe()


class ProgressTracker:
    """Config plus per-member Progress; who mutates: only the `Raft` that owns it."""

    __slots__ = ("config", "max_inflight", "max_inflight_bytes", "progress", "votes")

    def __init__(self, max_inflight: int, max_inflight_bytes: int = 0) -> None:
        self.config = TrackerConfig()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes

    def conf_state(self) -> ConfState:
        return self.config.conf_state()

    def is_singleton(self) -> bool:
        """One voter and not joint: commits and reads need no one else."""
        v = self.config.voters
        return len(v.incoming) == 1 and not v.is_joint

    def committed(self) -> int:
        """The highest index replicated on a quorum of the voters."""
        acked = {i: pr.match for i, pr in self.progress.items() if not pr.is_learner}
        return self.config.voters.committed_index(acked)

    def items(self) -> Iterator[tuple[int, Progress]]:
        """Members in ascending id order (deterministic iteration)."""
        for i in sorted(self.progress):
            yield i, self.progress[i]

    def ids(self) -> list[int]:
        """Every member's id, ascending."""
        return sorted(self.progress)

    def voter_ids(self) -> list[int]:
        return sorted(self.config.voters.ids())

    def learner_ids(self) -> list[int]:
        return sorted(self.config.learners | self.config.learners_next)

    def is_voter(self, node_id: int) -> bool:
        return node_id in self.config.voters

    def quorum_active(self) -> bool:
        """Whether a quorum of voters was heard from recently (CheckQuorum)."""
        active = {i: pr.recent_active for i, pr in self.progress.items() if i in self.config.voters}
        return self.config.voters.vote_result(active) == VoteResult.WON

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        # Only the first answer of a voter counts.
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = rejected = 0
        for i in self.config.voters.ids():
            v = self.votes.get(i)
            if v is None:
                continue
            if v:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.config.voters.vote_result(self.votes)

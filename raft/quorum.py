"""Quorum arithmetic: majority and joint (two-majority) configurations.

Pure functions of a set of voter ids and what each voter acknowledged. The
empty majority config is a neutral element: it commits everything and wins
every vote, so that a joint config with an empty outgoing half behaves like
its incoming half alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

# Larger than any real log index; what an empty config "commits".
INFINITE_INDEX = 1 << 64


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


@dataclass(frozen=True, slots=True)
class MajorityConfig:
    ids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, ids: Iterable[int]) -> MajorityConfig:
        return cls(frozenset(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.ids

    def committed_index(self, acked: Mapping[int, int]) -> int:
        """The largest index acknowledged by a majority (Raft §3.6.2).

        `acked[id]` is the highest index durably stored by `id`; a missing id
        has acknowledged nothing.
        """
        n = len(self.ids)
        if n == 0:
            return INFINITE_INDEX
        srt = sorted((acked.get(i, 0) for i in self.ids), reverse=True)
        # The (n//2 + 1)-th largest value is stored on a majority.
        return srt[n // 2]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """WON with a majority of yes, LOST once a majority is out of reach."""
        n = len(self.ids)
        if n == 0:
            return VoteResult.WON
        yes = missing = 0
        for i in self.ids:
            v = votes.get(i)
            if v is None:
                missing += 1
            elif v:
                yes += 1
        q = n // 2 + 1
        if yes >= q:
            return VoteResult.WON
        if yes + missing >= q:
            return VoteResult.PENDING
        return VoteResult.LOST


@dataclass(frozen=True, slots=True)
class JointConfig:
    """Two majorities that must both agree (Raft §4.3). Outside a joint
    configuration `outgoing` is empty."""

    incoming: MajorityConfig = field(default_factory=MajorityConfig)
    outgoing: MajorityConfig = field(default_factory=MajorityConfig)

    @property
    def is_joint(self) -> bool:
        return len(self.outgoing) > 0

    def ids(self) -> frozenset[int]:
        return self.incoming.ids | self.outgoing.ids

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.incoming or node_id in self.outgoing

    def committed_index(self, acked: Mapping[int, int]) -> int:
        return min(self.incoming.committed_index(acked), self.outgoing.committed_index(acked))

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        r1 = self.incoming.vote_result(votes)
        r2 = self.outgoing.vote_result(votes)
        if r1 == r2:
            return r1
        if VoteResult.LOST in (r1, r2):
            return VoteResult.LOST
        return VoteResult.PENDING

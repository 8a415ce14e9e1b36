"""Membership changes: computing the next configuration (etcd's confchange).

A change is computed on copies and validated before anything is swapped in,
so a refused change (`ConfChangeError`) leaves the tracker untouched.

* `simple`: at most one voter added or removed (plus any learner changes);
  any majority of the old config intersects any majority of the new one.
* `enter_joint`: the current voters become the outgoing half, the changes
  produce the incoming half; decisions need a majority of both (Raft §4.3).
* `leave_joint`: drop the outgoing half; demoted voters become learners.
"""

from __future__ import annotations

from collections.abc import Iterable

from raft.errors import ConfChangeError
from raft.inflights import Inflights
from raft.progress import Progress
from raft.quorum import JointConfig, MajorityConfig
from raft.tracker import ProgressTracker, TrackerConfig
from raft.types import ConfChangeSingle, ConfChangeType, ConfState

ProgressMap = dict[int, Progress]


class _Working:
    """Mutable copies of a config and its progress map while a change is built."""

    def __init__(self, tracker: ProgressTracker, last_index: int) -> None:
        cfg = tracker.config
        self.incoming = set(cfg.voters.incoming.ids)
        self.outgoing = set(cfg.voters.outgoing.ids)
        self.learners = set(cfg.learners)
        self.learners_next = set(cfg.learners_next)
        self.auto_leave = cfg.auto_leave
        self.progress: ProgressMap = {i: pr.copy() for i, pr in tracker.progress.items()}
        self._last_index = last_index
        self._max_inflight = tracker.max_inflight
        self._max_inflight_bytes = tracker.max_inflight_bytes

    # -- single changes ------------------------------------------------------

    def apply(self, changes: Iterable[ConfChangeSingle]) -> None:
        for cc in changes:
            if cc.node_id == 0:
                continue
            if cc.type == ConfChangeType.ADD_NODE:
                self._make_voter(cc.node_id)
            elif cc.type == ConfChangeType.ADD_LEARNER:
                self._make_learner(cc.node_id)
            elif cc.type == ConfChangeType.REMOVE_NODE:
                self._remove(cc.node_id)
            else:  # pragma: no cover - enum is closed
                raise ConfChangeError(f"unexpected conf change type {cc.type!r}")
        if not self.incoming:
            raise ConfChangeError("removed all voters")

    def _init_progress(self, node_id: int, is_learner: bool) -> None:
        if is_learner:
            self.learners.add(node_id)
        else:
            self.incoming.add(node_id)
        # Probing starts at the last index; a new member counts as recently
        # active so CheckQuorum does not fire before it had a chance to answer.
        self.progress[node_id] = Progress(
            self._last_index,
            Inflights(self._max_inflight, self._max_inflight_bytes),
            is_learner=is_learner,
            recent_active=True,
        )

    def _make_voter(self, node_id: int) -> None:
        pr = self.progress.get(node_id)
        if pr is None:
            self._init_progress(node_id, is_learner=False)
            return
        pr.is_learner = False
        self.learners.discard(node_id)
        self.learners_next.discard(node_id)
        self.incoming.add(node_id)

    def _make_learner(self, node_id: int) -> None:
        pr = self.progress.get(node_id)
        if pr is None:
            self._init_progress(node_id, is_learner=True)
            return
        if pr.is_learner:
            return
        # Drop it as a voter of the incoming half but keep its progress.
        self._remove(node_id)
        self.progress[node_id] = pr
        if node_id in self.outgoing:
            # Still a voter of the outgoing half: becomes a learner on leave.
            self.learners_next.add(node_id)
        else:
            pr.is_learner = True
            self.learners.add(node_id)

    def _remove(self, node_id: int) -> None:
        if node_id not in self.progress:
            return
        self.incoming.discard(node_id)
        self.learners.discard(node_id)
        self.learners_next.discard(node_id)
        # A voter of the outgoing half still needs its progress for quorums.
        if node_id not in self.outgoing:
            del self.progress[node_id]

    # -- result --------------------------------------------------------------

    def result(self) -> tuple[TrackerConfig, ProgressMap]:
        cfg = TrackerConfig(
            voters=JointConfig(MajorityConfig.of(self.incoming), MajorityConfig.of(self.outgoing)),
            learners=frozenset(self.learners),
            learners_next=frozenset(self.learners_next),
            auto_leave=self.auto_leave,
        )
        check_invariants(cfg, self.progress)
        return cfg, self.progress


def check_invariants(cfg: TrackerConfig, progress: ProgressMap) -> None:
    """Raise AssertionError if config and progress map disagree (a bug)."""
    for ids in (cfg.voters.ids(), cfg.learners, cfg.learners_next):
        for i in ids:
            if i not in progress:
                raise AssertionError(f"no progress for {i}")
    for i in cfg.learners_next:
        if i not in cfg.voters.outgoing:
            raise AssertionError(f"{i} is in learners_next but not an outgoing voter")
        if progress[i].is_learner:
            raise AssertionError(f"{i} is in learners_next but already marked learner")
    for i in cfg.learners:
        if i in cfg.voters.incoming or i in cfg.voters.outgoing:
            raise AssertionError(f"{i} is both learner and voter")
        if not progress[i].is_learner:
            raise AssertionError(f"{i} is a learner not marked as such")
    if not cfg.voters.is_joint and (cfg.learners_next or cfg.auto_leave):
        raise AssertionError("learners_next or auto_leave outside a joint config")


def _symdiff(a: frozenset[int], b: set[int]) -> int:
    return len(a ^ b)


def simple(
    tracker: ProgressTracker, last_index: int, changes: Iterable[ConfChangeSingle]
) -> tuple[TrackerConfig, ProgressMap]:
    if tracker.config.voters.is_joint:
        raise ConfChangeError("can't apply a simple config change in a joint config")
    w = _Working(tracker, last_index)
    w.apply(changes)
    if _symdiff(tracker.config.voters.incoming.ids, w.incoming) > 1:
        raise ConfChangeError("more than one voter changed without entering a joint config")
    return w.result()


def enter_joint(
    tracker: ProgressTracker,
    last_index: int,
    auto_leave: bool,
    changes: Iterable[ConfChangeSingle],
) -> tuple[TrackerConfig, ProgressMap]:
    if tracker.config.voters.is_joint:
        raise ConfChangeError("config is already joint")
    if not tracker.config.voters.incoming.ids:
        raise ConfChangeError("can't make a zero-voter config joint")
    w = _Working(tracker, last_index)
    w.outgoing = set(w.incoming)
    w.apply(changes)
    w.auto_leave = auto_leave
    return w.result()


def leave_joint(tracker: ProgressTracker, last_index: int) -> tuple[TrackerConfig, ProgressMap]:
    if not tracker.config.voters.is_joint:
        raise ConfChangeError("can't leave a non-joint config")
    w = _Working(tracker, last_index)
    for i in w.learners_next:
        w.learners.add(i)
        w.progress[i].is_learner = True
    w.learners_next.clear()
    for i in w.outgoing:
        if i not in w.incoming and i not in w.learners:
            del w.progress[i]
    w.outgoing.clear()
    w.auto_leave = False
    return w.result()


def restore(
    conf_state: ConfState, max_inflight: int, max_inflight_bytes: int, last_index: int
) -> tuple[TrackerConfig, ProgressMap]:
    """Build the config and fresh progress described by a ConfState (after
    a restart or a snapshot)."""
    blank = ProgressTracker(max_inflight, max_inflight_bytes)
    w = _Working(blank, last_index)
    for i in conf_state.voters_outgoing:
        w.outgoing.add(i)
        w._init_progress(i, is_learner=False)
        w.incoming.discard(i)  # _init_progress put it in incoming
    for i in conf_state.voters:
        w._make_voter(i)
    for i in conf_state.learners:
        w._init_progress(i, is_learner=True)
    for i in conf_state.learners_next:
        w.learners_next.add(i)
        if i not in w.progress:
            raise ConfChangeError(f"learner_next {i} is not an outgoing voter")
    w.auto_leave = conf_state.auto_leave
    if conf_state.voters or conf_state.voters_outgoing:
        cfg, progress = w.result()
    else:
        # An empty ConfState (a fresh node that awaits a snapshot) is allowed.
        cfg, progress = TrackerConfig(), {}
        if conf_state.learners:
            raise ConfChangeError("a config with learners but no voters")
    return cfg, progress

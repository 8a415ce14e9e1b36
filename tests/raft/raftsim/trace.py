"""The recent-event trace of a simulation and the errors it raises.

Events are recorded as cheap tuples and rendered to text only when a run
fails, so tracing costs little on the hot path.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from raft.describe import describe_entries, describe_message, describe_ready

TRACE_LEN = 200


class Violation(Exception):
    """A broken safety invariant, raised by the checker; the simulation wraps
    it into a `SafetyViolation` carrying the seed and the trace."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"[{invariant}] {detail}")
        self.invariant = invariant
        self.detail = detail


class SimulationFailure(AssertionError):
    """A simulation run failed. `str()` holds everything needed to debug it:
    seed, step, recent events, node states and the command that replays it."""

    kind = "failure"

    def __init__(
        self, *, seed: int, step: int, time: int, reason: str, report: str, reproduce: str
    ) -> None:
        super().__init__(
            f"{self.kind}: {reason}\nseed={seed} step={step} time={time}\n{report}\n"
            f"reproduce: {reproduce}"
        )
        self.seed = seed
        self.step = step
        self.reason = reason
        self.reproduce = reproduce


class SafetyViolation(SimulationFailure):
    kind = "safety violation"

    def __init__(self, *, invariant: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.invariant = invariant


class LivenessFailure(SimulationFailure):
    kind = "liveness failure"


class RaftCrashed(SimulationFailure):
    """The Raft core raised (an internal assertion or an unexpected error)."""

    kind = "raft raised"


class Trace:
    """A ring buffer of the last `maxlen` events (or all, if maxlen is None)."""

    def __init__(self, maxlen: int | None = TRACE_LEN) -> None:
        self.events: deque[tuple[Any, ...]] = deque(maxlen=maxlen)

    def add(self, step: int, time: int, node: int, what: str, obj: Any = None) -> None:
        self.events.append((step, time, node, what, obj))

    def render(self) -> str:
        return "\n".join(render_event(ev) for ev in self.events)


def render_event(ev: tuple[Any, ...]) -> str:
    step, time, node, what, obj = ev
    head = f"{step:>6} t={time:<6} n{node:<2} {what}"
    if obj is None:
        return head
    if what in ("recv", "lost", "cut", "to-down"):
        return f"{head} {describe_message(obj)}"
    if what == "ready":
        body = describe_ready(obj).replace("\n", "\n" + " " * 20)
        return f"{head}\n{' ' * 20}{body}"
    if what == "apply":
        return f"{head} {describe_entries(obj)}"
    return f"{head} {obj}"

"""An in-memory network with injected faults.

Each message is dropped, delivered, or delivered twice, after a random delay
(random delays reorder messages; an occasional long delay reorders them a
lot). Links can be cut one direction at a time, which gives symmetric and
asymmetric partitions; a cut link drops what is sent on it and what arrives
on it while it is cut. Every choice comes from the simulation's one
`random.Random`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from raft import Message


@dataclass(slots=True)
class Faults:
    """Fault rates of the network; times are in simulation time units."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay_min: int = 1
    delay_max: int = 12
    # Probability of a long delay, up to `long_delay_max`: strong reordering.
    long_delay: float = 0.0
    long_delay_max: int = 200


# The simulation's event heap: schedule(delay, handler, a, b) calls handler(a, b).
Schedule = Callable[[int, Callable[[Any, Any], None], Any, Any], None]


class Network:
    def __init__(
        self,
        rng: random.Random,
        schedule: Schedule,
        deliver: Callable[[Any, Any], None],
        on_drop: Callable[[Message, str], None],
    ) -> None:
        self.rng = rng
        self._schedule = schedule
        self._deliver = deliver
        self._on_drop = on_drop
        self.faults = Faults()
        # Directed links that are cut: (from, to).
        self.cut_links: set[tuple[int, int]] = set()
        self.stats: Counter[str] = Counter()

    # -- partitions -------------------------------------------------------------

    def allows(self, frm: int, to: int) -> bool:
        return (frm, to) not in self.cut_links

    def cut(self, frm: int, to: int) -> None:
        """Cut one direction of a link (an asymmetric partition)."""
        self.cut_links.add((frm, to))

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Cut every link between different groups, both directions."""
        gs = [sorted(g) for g in groups]
        for i, a in enumerate(gs):
            for b in gs[i + 1 :]:
                for x in a:
                    for y in b:
                        self.cut_links.add((x, y))
                        self.cut_links.add((y, x))

    def isolate(self, node: int, others: Iterable[int]) -> None:
        self.partition([[node], [o for o in others if o != node]])

    def heal(self) -> None:
        self.cut_links.clear()

    # -- traffic ----------------------------------------------------------------

    def send(self, m: Message) -> None:
        st = self.stats
        st["sent"] += 1
        f = self.faults
        if (m.from_, m.to) in self.cut_links:
            st["dropped_partition"] += 1
            self._on_drop(m, "cut")
            return
        rng = self.rng
        if f.drop and rng.random() < f.drop:
            st["dropped_random"] += 1
            self._on_drop(m, "lost")
            return
        copies = 2 if f.duplicate and rng.random() < f.duplicate else 1
        if copies == 2:
            st["duplicated"] += 1
        for _ in range(copies):
            if f.long_delay and rng.random() < f.long_delay:
                delay = rng.randint(f.delay_max, f.long_delay_max)
            else:
                delay = rng.randint(f.delay_min, f.delay_max)
            self._schedule(delay, self._deliver, m, None)

    def on_arrival(self, m: Message) -> bool:
        """Whether a message arriving now gets through the link."""
        if (m.from_, m.to) in self.cut_links:
            self.stats["dropped_partition"] += 1
            self._on_drop(m, "cut")
            return False
        return True

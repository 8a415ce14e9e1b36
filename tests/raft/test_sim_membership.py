"""Randomized simulator runs with membership changes and log compaction.

On top of the chaos of `test_sim_random.py`, the leader is asked for conf
changes interleaved with the faults: add a learner (a fresh node with an
empty disk and no config, brought in by a snapshot), promote it, remove a
voter or a learner, replace a voter through a joint config (two changes,
AUTO: left automatically), demote a voter while promoting a learner, single
changes through an implicit joint config, explicit joint configs left by an
empty conf change. Nodes snapshot and compact their logs as they apply;
removed nodes are destroyed once their removal is committed. Every node
must get the same result from every conf change, and every snapshot must
match the history up to its index.

Replay a failing seed:

    python3 -m pytest tests/raft/test_sim_membership.py --seed=N [--steps=M]
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.raft.raftsim import SimReport, run_random
from tests.raft.raftsim.pytest_support import parametrize_seeds, run_seeds, steps

SEEDS = range(200)
STEPS = 4000


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_seeds(metafunc, SEEDS, chunk=20)


def test_membership_changes_and_compaction_under_faults_stay_safe(
    seeds: list[int], request: pytest.FixtureRequest
) -> None:
    n = steps(request.config, STEPS)
    reports: list[SimReport] = run_seeds(
        request,
        seeds,
        n,
        lambda seed, repro: run_random(seed, n, membership=True, reproduce=repro),
    )
    if len(seeds) > 1:
        total: Counter[str] = Counter()
        for r in reports:
            total.update(r.stats)
        # Many kinds of change were proposed, and changes were committed.
        kinds = {k for k in total if k.startswith("membership:")}
        assert len(kinds) >= 4, kinds
        assert total["conf:committed"] > len(seeds)
        assert total["snapshots_installed"] > 0 and total["compactions"] > 0
        assert total["tombstones"] > 0

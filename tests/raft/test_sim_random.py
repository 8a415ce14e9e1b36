"""Randomized runs of the deterministic simulator (`raftsim`) against raft/.

Every seed draws a flavor of chaos (mixed faults, a nemesis hunting new
leaders, crash-heavy with power failures, a flaky network), the cluster's
shape (3 or 5 voters, PreVote and CheckQuorum on or off, tiny or large
messages and windows, slow or lazy disks, compaction) and a random
workload; it runs `STEPS` steps of chaos with every safety invariant checked
after each step, then heals and checks liveness (see raftsim/cluster.py).

A failure names its seed; replay it exactly, with its last events printed:

    python3 -m pytest tests/raft/test_sim_random.py --seed=N [--steps=M]
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.raft.raftsim import SimReport, run_random
from tests.raft.raftsim.pytest_support import parametrize_seeds, run_seeds, steps

SEEDS = range(400)
STEPS = 3000


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_seeds(metafunc, SEEDS, chunk=20)


def test_random_faults_never_break_safety_and_the_group_recovers(
    seeds: list[int], request: pytest.FixtureRequest
) -> None:
    n = steps(request.config, STEPS)
    reports: list[SimReport] = run_seeds(
        request, seeds, n, lambda seed, repro: run_random(seed, n, reproduce=repro)
    )
    if len(seeds) > 1:
        # A chunk of runs did real work: commits, elections, faults that hit.
        total: Counter[str] = Counter()
        for r in reports:
            total.update(r.stats)
        assert total["put:committed"] > 10 * len(seeds)
        assert total["put:superseded"] > 0
        assert total["elections"] > len(seeds)
        assert total["crashes"] > 0 and total["net:dropped_partition"] > 0

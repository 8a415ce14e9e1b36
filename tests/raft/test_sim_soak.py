"""Long randomized simulator runs: on demand only, never in the default run.

    SHARDKV_SOAK=1 python3 -m pytest tests/raft -m soak

* `SHARDKV_SOAK_SEEDS`: a count N (seeds 1000000 .. 1000000+N-1, apart from
  the seeds the default run covers), a range `A:B` (A included, B not), or
  a list `a,b,c`. Default: 1000.
* `SHARDKV_SOAK_STEPS`: steps (processed events) of chaos per run.
  Default: 20000.

Every seed runs twice: the chaos of `test_sim_random.py`, and the same plus
membership changes (`test_sim_membership.py`). A failure prints the line
that replays it.
"""

from __future__ import annotations

import os

import pytest

from tests.raft.raftsim import run_random
from tests.raft.raftsim.pytest_support import parametrize_seeds, run_seeds, steps

SOAK = bool(os.environ.get("SHARDKV_SOAK"))
SOAK_SEED_BASE = 1_000_000

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(not SOAK, reason="soak runs only with SHARDKV_SOAK=1"),
]


def soak_seeds(spec: str) -> list[int]:
    spec = spec.strip()
    if ":" in spec:
        lo, hi = spec.split(":")
        return list(range(int(lo), int(hi)))
    if "," in spec:
        return [int(s) for s in spec.split(",") if s.strip()]
    return list(range(SOAK_SEED_BASE, SOAK_SEED_BASE + int(spec)))


SEEDS = soak_seeds(os.environ.get("SHARDKV_SOAK_SEEDS", "1000"))
STEPS = int(os.environ.get("SHARDKV_SOAK_STEPS", "20000"))
ENV = "SHARDKV_SOAK=1 "


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Off: one skipped item per test rather than one per chunk.
    parametrize_seeds(metafunc, SEEDS if SOAK else SEEDS[:1], chunk=50)


def test_soak_random_faults(seeds: list[int], request: pytest.FixtureRequest) -> None:
    n = steps(request.config, STEPS)
    run_seeds(request, seeds, n, lambda s, repro: run_random(s, n, reproduce=repro), ENV)


def test_soak_membership_and_compaction(seeds: list[int], request: pytest.FixtureRequest) -> None:
    n = steps(request.config, STEPS)
    run_seeds(
        request,
        seeds,
        n,
        lambda s, repro: run_random(s, n, membership=True, reproduce=repro),
        ENV,
    )

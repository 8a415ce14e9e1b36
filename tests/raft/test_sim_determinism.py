"""The simulator replays exactly from a seed, and reports what it needs to.

Determinism is what makes a failing seed worth anything: the same seed must
produce the same events in the same order, down to every message.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from tests.raft.raftsim import Options, Simulation, SimulationFailure, run_random
from tests.raft.raftsim.workload import Chaos, random_flavor

ROOT = Path(__file__).resolve().parents[2]


def _trace(seed: int, steps: int) -> tuple[str, dict[str, int]]:
    rng = random.Random(seed)
    _, profile, options = random_flavor(rng, membership=True)
    sim = Simulation(seed, options, trace_len=None, rng=rng)
    chaos = Chaos(sim, profile)
    chaos.start()
    sim.run_steps(steps)
    return sim.trace.render(), dict(sim.stats)


def test_a_seed_replays_exactly() -> None:
    first, stats1 = _trace(11, 1500)
    again, stats2 = _trace(11, 1500)
    assert first == again and stats1 == stats2
    other, _ = _trace(12, 1500)
    assert other != first


def test_a_full_run_reports_the_same_figures_for_the_same_seed() -> None:
    a = run_random(5, 1000, membership=True)
    b = run_random(5, 1000, membership=True)
    assert (a.stats, a.steps, a.time) == (b.stats, b.steps, b.time)


def test_the_failure_report_holds_seed_step_events_and_reproduce_line() -> None:
    sim = Simulation(3, Options(voters=3), reproduce="pytest tests/raft/x.py --seed=3")
    sim.run_steps(300)
    failure = sim.failure(SimulationFailure, "example")
    text = str(failure)
    assert "seed=3 step=300" in text
    assert "last 200 events:" in text and " recv " in text
    assert text.rstrip().endswith("reproduce: pytest tests/raft/x.py --seed=3")


def test_a_seed_replays_exactly_in_another_process() -> None:
    """Nothing depends on str/bytes hash randomization or on the process."""
    code = (
        "import hashlib, logging\n"
        "logging.disable(logging.CRITICAL)\n"
        "from tests.raft.test_sim_determinism import _trace\n"
        "text, stats = _trace(7, 1200)\n"
        "print(hashlib.sha256((text + repr(sorted(stats.items()))).encode()).hexdigest())\n"
    )
    digests = set()
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,  # `-c` imports from the working directory: the repository
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1

"""Helpers for the pytest modules that run the simulator.

A module lists its seeds and calls `parametrize_seeds` from its own
`pytest_generate_tests`: each test gets a chunk of seeds (so a failure names
its chunk, and the report names the seed), or the single seed given with
`--seed=N`. `run_seeds` runs every seed of a chunk and fails with the first
failure's full report plus the list of every failing seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

from .trace import SimulationFailure

T = TypeVar("T")


def parametrize_seeds(metafunc: pytest.Metafunc, seeds: Sequence[int], chunk: int) -> None:
    if "seeds" not in metafunc.fixturenames:
        return
    one = metafunc.config.getoption("seed", None)
    chunks = (
        [[one]]
        if one is not None
        else [list(seeds[i : i + chunk]) for i in range(0, len(seeds), chunk)]
    )
    ids = [f"seed{c[0]}" if len(c) == 1 else f"seeds{c[0]}-{c[-1]}" for c in chunks]
    metafunc.parametrize("seeds", chunks, ids=ids)


def steps(config: pytest.Config, default: int) -> int:
    value = config.getoption("steps", None)
    return default if value is None else int(value)


def reproduce_line(nodeid: str, seed: int, n_steps: int, env: str = "") -> str:
    test = nodeid.split("[")[0]
    steps_opt = f" --steps={n_steps}" if n_steps else ""
    return f"{env}python3 -m pytest '{test}' --seed={seed}{steps_opt}"


def run_seeds(
    request: pytest.FixtureRequest,
    seeds: Sequence[int],
    n_steps: int,
    run: Callable[[int, str], T],
    env: str = "",
) -> list[T]:
    """Call `run(seed, reproduce_line)` for every seed; fail with every
    failing seed listed and the first failure's whole report. `env` prefixes
    the reproduce line (e.g. `SHARDKV_SOAK=1 `)."""
    failures: list[tuple[int, SimulationFailure]] = []
    results = []
    for seed in seeds:
        try:
            results.append(run(seed, reproduce_line(request.node.nodeid, seed, n_steps, env)))
        except SimulationFailure as e:
            failures.append((seed, e))
    if failures:
        listed = ", ".join(f"{s} ({type(e).__name__}: {e.reason[:80]})" for s, e in failures)
        pytest.fail(
            f"{len(failures)} failing seed(s): {listed}\n\nfirst failure:\n{failures[0][1]}",
            pytrace=False,
        )
    return results

"""Scenario files of the Raft core: `tests/raft/testdata/*.txt`.

Each file is run in a fresh in-memory cluster (see `scenario.py` for the
format and the commands). After an intended change of behaviour, regenerate
the expectations with `pytest tests/raft --rewrite` and review the diff.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.raft.scenario import render, run_file

TESTDATA = Path(__file__).parent / "testdata"
FILES = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    cases, outputs = run_file(path)
    if request.config.getoption("--rewrite"):
        path.write_text(render(cases, outputs))
        return
    failures = []
    for case, got in zip(cases, outputs, strict=True):
        if got != case.expected:
            diff = "\n".join(
                difflib.unified_diff(case.expected, got, "expected", "got", lineterm="")
            )
            failures.append(f"{path.name}:{case.line}: {case.command}\n{diff}")
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def test_every_scenario_file_is_collected() -> None:
    assert FILES, f"no scenario files in {TESTDATA}"

"""What `shardkv chaos` prints and writes: the summary table and the JSON
of the history and the fault log."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from shardkv.chaos.model import FAULTS, Run
from shardkv.check.history import History

__all__ = ["summary", "write_json"]

PROG = "shardkv chaos"


def summary(state: Run, ok: bool | None, header: str) -> tuple[str, str]:
    """The summary table and the verdict (None: the cluster did not
    recover)."""
    verdict = {True: "linearizable", False: "VIOLATION", None: "not recovered"}[ok]
    lines = [header, "operations:"]
    for what, n in sorted(state.outcomes.items()):
        lines.append(f"  {what:<40} {n:>7,}")
    by_kind = Counter(f.kind for f in state.faults)
    refused = Counter(f.kind for f in state.faults if f.outcome.startswith("refused"))
    lines.append("faults:")
    for kind in FAULTS:
        if by_kind[kind]:
            extra = f" ({refused[kind]} refused)" if refused[kind] else ""
            lines.append(f"  {kind:<40} {by_kind[kind]:>7}{extra}")
    if state.recovery_seconds is not None:
        lines.append(f"recovery after healing: {state.recovery_seconds:.1f} s")
    if state.replicas:
        lines.append(f"replicas: {state.replicas}")
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines), verdict


def write_json(path: str | None, history: History, state: Run, seed: int, verdict: str) -> None:
    if not path:
        return
    ops = []
    for op in history.operations():
        ops.append(
            {
                "id": op.op_id,
                "client": op.client,
                "call": type(op.call).__name__,
                "args": {
                    k: (v.hex() if isinstance(v, bytes) else v) for k, v in asdict(op.call).items()
                },
                "invoke": op.invoke,
                "complete": None if op.outcome is None else op.complete,
                "outcome": None if op.outcome is None else op.outcome.name,
                "result": op.result.hex() if isinstance(op.result, bytes) else op.result,
            }
        )
    doc = {
        "seed": seed,
        "verdict": verdict,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "faults": [asdict(f) for f in state.faults],
        "violations": state.violations,
        "operations": ops,
    }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")

"""A deterministic simulator for `raft/`: the main safety net of the project.

* `cluster.Simulation`: nodes with disks that survive crashes, a simulated
  network, a heap of timed events, invariants checked after every step
  (put together from `params`, `world`, `driver`, `operations`, `liveness`).
* `network.Network` / `Faults`: drops, duplicates, delays, partitions.
* `invariants.Checker`: the safety invariants (listed in its docstring).
* `workload.Chaos` / `run_random`: random operations and faults, then heal
  and liveness checks.
* `pytest_support`: seed chunks, `--seed` / `--steps`, failure reports.

Everything random comes from one `random.Random(seed)`: a seed replays
exactly. Failures raise `SimulationFailure` subclasses whose text holds the
seed, the step, the last events and a `reproduce:` line.

A scripted scenario, every invariant still checked after each step:

    sim = Simulation(seed, Options(voters=3, snapshot_every=10))
    sim.await_leader()
    lead = sim.stable_leader()
    sim.propose(lead.id)
    sim.crash(2)
    sim.run_for(50 * sim.tick_interval)
    sim.restart(2)
    sim.await_catch_up()

Tests import it as `tests.raft.raftsim` (and the scenario runner as
`tests.raft.scenario`), from the repository root like every test package.
"""

from .cluster import Simulation
from .disk import SimDisk
from .invariants import Checker
from .network import Faults, Network
from .params import Options
from .trace import (
    LivenessFailure,
    RaftCrashed,
    SafetyViolation,
    SimulationFailure,
    Trace,
    Violation,
)
from .workload import Chaos, Profile, SimReport, run_random
from .world import SimNode

__all__ = [
    "Chaos",
    "Checker",
    "Faults",
    "LivenessFailure",
    "Network",
    "Options",
    "Profile",
    "RaftCrashed",
    "SafetyViolation",
    "SimDisk",
    "SimNode",
    "SimReport",
    "Simulation",
    "SimulationFailure",
    "Trace",
    "Violation",
    "run_random",
]

"""Catching up by snapshot, in the simulator, with the invariants checked.

A follower that was down while the others compacted their logs comes back
behind the leader's first index: it must install a snapshot (message
SNAPSHOT, then Ready.snapshot, then its state machine rebuilt from the
snapshot's data) and then continue by log. A new learner, added with an
empty disk and no config, is brought in the same way.
"""

from __future__ import annotations

import pytest

from tests.raft.raftsim import Faults, Options, SimNode, Simulation
from tests.raft.raftsim.pytest_support import parametrize_seeds, run_seeds
from tests.raft.raftsim.workload import ADD_LEARNER, conf_changes

SEEDS = range(10)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_seeds(metafunc, SEEDS, chunk=10)


def _sim(seed: int, repro: str) -> Simulation:
    sim = Simulation(
        seed,
        Options(
            voters=3,
            pre_vote=True,
            check_quorum=True,
            snapshot_every=10,
            compact_keep=2,
            lazy_sync=0.0,
            crash_in_persist=0.0,
        ),
        reproduce=repro,
    )
    sim.net.faults = Faults(drop=0.02, duplicate=0.02)  # a little noise
    return sim


def _leader(sim: Simulation) -> SimNode:
    sim.await_leader()
    lead = sim.stable_leader()
    assert lead is not None
    return lead


def _write(sim: Simulation, n: int) -> None:
    """Propose `n` entries through whoever leads, one per tick or so."""
    for _ in range(n):
        lead = sim.stable_leader()
        if lead is not None:
            sim.propose(lead.id)
        sim.run_for(sim.tick_interval)


def _lagging_follower_catches_up(seed: int, repro: str) -> tuple[int, int]:
    sim = _sim(seed, repro)
    lead = _leader(sim)
    _write(sim, 5)
    follower = next(i for i in sorted(sim.nodes) if i != lead.id)
    sim.crash(follower, "long outage")
    _write(sim, 60)
    lead = _leader(sim)
    assert lead.rn is not None
    first = lead.disk.first_index()
    # The log the follower needs next is gone from the leader.
    assert sim.nodes[follower].disk.last_index() + 1 < first
    sim.restart(follower)
    sim.await_catch_up()
    _write(sim, 5)  # and it keeps following by log
    sim.await_catch_up()
    f = sim.nodes[follower]
    assert f.stats["snapshots_installed"] >= 1
    assert f.app is not None and f.app.applied > f.installed_snapshot >= first - 1
    return f.stats["snapshots_installed"], f.app.applied - f.installed_snapshot


def test_a_follower_down_while_others_compacted_catches_up_by_snapshot_then_log(
    seeds: list[int], request: pytest.FixtureRequest
) -> None:
    results = run_seeds(request, seeds, 0, _lagging_follower_catches_up)
    assert all(installs >= 1 and by_log > 0 for installs, by_log in results)


def _new_learner_joins(seed: int, repro: str) -> int:
    sim = _sim(seed, repro)
    lead = _leader(sim)
    _write(sim, 30)
    lead = _leader(sim)
    new = sim.allocate_node_id()
    for _attempt in range(20):  # an accepted change may be lost to a new leader
        lead = _leader(sim)
        if new in sim.nodes and lead.rn is not None and new in lead.rn.conf_state().learners:
            break
        accepted = sim.propose_conf_change(lead.id, conf_changes((ADD_LEARNER, new))) is not None
        if accepted and new not in sim.nodes:
            sim.add_empty_node()
        _write(sim, 5)
    else:
        raise AssertionError("the learner was never added")
    _write(sim, 15)
    sim.await_catch_up()
    n = sim.nodes[new]
    assert n.stats["snapshots_installed"] >= 1
    assert n.app is not None and n.app.conf_state.learners == (new,)
    return n.app.applied


def test_a_new_learner_with_an_empty_disk_is_brought_in_by_snapshot(
    seeds: list[int], request: pytest.FixtureRequest
) -> None:
    assert all(applied > 30 for applied in run_seeds(request, seeds, 0, _new_learner_joins))

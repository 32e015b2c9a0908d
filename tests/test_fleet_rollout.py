"""Staged rollouts over simulated agents speaking the real protocol (in-memory broker, real stores, TFLite)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core import topics, wire
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.messages.fleet import InstallCommand, InstallResult
from fedge.coordinator.fleet.controller import create_rollout, get_rollout, pause, pin, resume, rollback
from fedge.coordinator.fleet.rollouts import Criteria, Spec, Status, Target, assign_phases, phase_sizes
from tests.fleet_fixtures import Fleet, put_release, truth

N = 50
R1, R2, BAD = "logreg-r1", "logreg-r2", "logreg-bad"


def _installs(fleet: Fleet, rollout_id: str) -> dict[str, int]:
    """How many install commands of ``rollout_id`` each device received."""
    return {
        d: sum(isinstance(m, InstallCommand) and m.rollout_id == rollout_id for m in a.handled)
        for d, a in fleet.agents.items()
    }


@pytest.fixture()
def fleet(tmp_path):
    f = Fleet(tmp_path, N)
    noise = np.random.default_rng(1).normal(scale=1.0, size=truth().size).astype(np.float32)
    put_release(f.store, R1, truth() + noise, None, f.clock)
    put_release(f.store, R2, truth(), R1, f.clock)
    create_rollout(f.store, Spec("base", R1, Target(device_class="pi4")), clock=f.clock)
    f.pump()
    assert set(f.running().values()) == {R1}
    yield f
    f.close()


def test_phase_sizes_are_cumulative_and_end_with_everyone():
    assert phase_sizes(50, (0.1, 0.5, 1.0)) == [5, 25, 50]
    assert phase_sizes(3, (0.05, 0.25, 1.0)) == [1, 2, 3]
    assert phase_sizes(0, (0.5, 1.0)) == [0, 0]
    spec = Spec("r", "v", Target(device_class="x"), phases=(0.1, 1.0))
    ids = [f"d{i}" for i in range(20)]
    assert sorted(assign_phases(spec, ids).values()) == [0] * 2 + [1] * 18
    assert assign_phases(spec, ids) == assign_phases(spec, list(reversed(ids)))  # order-independent


def test_failing_phase_one_aborts_and_rolls_back_then_a_healthy_rollout_completes(fleet):
    # 60% of the fleet cannot run R2 (seeded choice); phase 1 is 10% = 5 devices
    rng = np.random.default_rng(3)
    failing = set(rng.choice(sorted(fleet.agents), size=30, replace=False))
    for d in failing:
        fleet.agents[d].fail_versions.add(R2)
    spec = Spec(
        "r2-canary",
        R2,
        Target(device_class="pi4"),
        phases=(0.1, 0.5, 1.0),
        criteria=Criteria(max_failure_pct=20.0, min_executed=5, max_metric_drop=0.05, min_evaluated=5),
    )
    phase1 = {d for d, p in assign_phases(spec, sorted(fleet.agents)).items() if p == 0}
    assert len(phase1) == 5 and len(phase1 & failing) >= 2  # above the 20% threshold by construction of the seed
    create_rollout(fleet.store, spec, clock=fleet.clock)
    fleet.pump()

    view = get_rollout(fleet.store, "r2-canary")
    assert view.progress.status is Status.ROLLED_BACK, view.to_dict()
    assert view.progress.reason.startswith("failures:")
    sent = {d for d, n in _installs(fleet, "r2-canary").items() if n}
    assert sent == phase1  # nothing beyond phase 1 was ever sent
    assert view.progress.phase == 0
    assert fleet.running() == {d: R1 for d in fleet.agents}  # every device ends on the previous release
    for d in phase1 - failing:  # the ones that had installed R2 rolled back
        assert any(
            getattr(m, "rollout_id", "") == "r2-canary" and type(m).__name__ == "RollbackCommand"
            for m in fleet.agents[d].handled
        )

    # the same fleet, healthy now, takes R2 through all phases in a new rollout
    for d in failing:
        fleet.agents[d].fail_versions.clear()
    spec2 = Spec(
        "r2-again",
        R2,
        Target(device_class="pi4"),
        phases=(0.1, 0.5, 1.0),
        criteria=Criteria(max_failure_pct=20.0, min_executed=5),
    )
    create_rollout(fleet.store, spec2, clock=fleet.clock)
    fleet.pump()
    view = get_rollout(fleet.store, "r2-again")
    assert view.progress.status is Status.COMPLETED, view.to_dict()
    assert [p["devices"] for p in view.phases] == [5, 20, 25]
    assert [p["installed"] for p in view.phases] == [5, 20, 25]
    assert fleet.running() == {d: R2 for d in fleet.agents}
    assert all(n == 1 for n in _installs(fleet, "r2-again").values())
    # phases were staged: every phase-1 report came before any phase-2 command went out
    rows = list(
        fleet.store.db.query("select phase, sent_at, reported_at from rollout_devices where rollout_id = 'r2-again'")
    )
    assert max(r["reported_at"] for r in rows if r["phase"] == 0) <= min(r["sent_at"] for r in rows if r["phase"] == 1)
    assert max(r["reported_at"] for r in rows if r["phase"] == 1) <= min(r["sent_at"] for r in rows if r["phase"] == 2)
    # on-device evaluation came back with every install: R2 is the truth, R1 a noisy copy
    metrics = [
        (r["metric"], r["baseline"])
        for r in fleet.store.db.query("select metric, baseline from rollout_devices where rollout_id = 'r2-again'")
    ]
    assert all(m == 1.0 and b < 1.0 for m, b in metrics)
    assert not fleet.rejected


def test_on_device_metric_regression_aborts(fleet):
    bad = np.random.default_rng(9).normal(size=truth().size).astype(np.float32)
    put_release(fleet.store, BAD, bad, R1, fleet.clock)
    create_rollout(
        fleet.store,
        Spec(
            "bad",
            BAD,
            Target(tags=("lab",)),
            phases=(0.1, 1.0),
            criteria=Criteria(max_failure_pct=50, min_executed=5, max_metric_drop=0.05, min_evaluated=5),
        ),
        clock=fleet.clock,
    )
    fleet.pump()
    view = get_rollout(fleet.store, "bad")
    assert view.progress.status is Status.ROLLED_BACK
    assert view.progress.reason.startswith("regression:"), view.progress.reason
    assert view.counts["rolled_back"] == 5
    assert fleet.running() == {d: R1 for d in fleet.agents}


def test_a_device_never_takes_the_same_rollout_twice(fleet):
    agent = fleet.agents["dev-000"]
    cmd = next(m for m in agent.handled if isinstance(m, InstallCommand) and m.rollout_id == "base")
    (report,) = agent.manager.handle(cmd)
    assert report.result is InstallResult.ALREADY_TAKEN
    with pytest.raises(ConfigError):
        create_rollout(fleet.store, Spec("base", R2, Target(device_class="pi4")), clock=fleet.clock)
    # after a rollback the device does not take that rollout again either
    create_rollout(fleet.store, Spec("r2", R2, Target(devices=("dev-000",))), clock=fleet.clock)
    fleet.pump()
    assert agent.manager.running() == R2
    rollback(fleet.store, "r2", clock=fleet.clock)
    fleet.pump()
    assert agent.manager.running() == R1
    cmd = next(m for m in agent.handled if isinstance(m, InstallCommand) and m.rollout_id == "r2")
    assert agent.manager.handle(cmd)[0].result is InstallResult.ALREADY_TAKEN
    assert agent.manager.running() == R1


def test_pins_hold_devices_and_cohorts_on_their_version(fleet):
    pin(fleet.store, "device:dev-001", R1, clock=fleet.clock)
    fleet.pump()
    create_rollout(fleet.store, Spec("r2", R2, Target(device_class="pi4")), clock=fleet.clock)
    fleet.pump()
    view = get_rollout(fleet.store, "r2")
    assert view.progress.status is Status.COMPLETED
    assert view.counts["skipped"] == 1
    running = fleet.running()
    assert running.pop("dev-001") == R1 and set(running.values()) == {R2}
    # pin a whole class back to R1: devices move to it (from their previous slot) and refuse others
    pin(fleet.store, "class:pi4", R1, clock=fleet.clock)
    fleet.pump()
    assert set(fleet.running().values()) == {R1}
    agent = fleet.agents["dev-002"]
    cmd = next(m for m in agent.handled if isinstance(m, InstallCommand) and m.rollout_id == "r2")
    forged = InstallCommand("dev-002", "other", cmd.release)
    assert agent.manager.handle(forged)[0].result is InstallResult.PINNED
    pin(fleet.store, "class:pi4", None, clock=fleet.clock)
    fleet.pump()
    assert agent.manager.pinned() == ""


def test_pause_resume_and_rate(tmp_path):
    f = Fleet(tmp_path, 10)
    try:
        put_release(f.store, R1, truth(), None, f.clock)
        create_rollout(f.store, Spec("paced", R1, Target(device_class="pi4"), rate_per_minute=60.0), clock=f.clock)
        f.pump(rounds=3)  # 1 device per second of clock
        sent = sum(_installs(f, "paced").values())
        assert 2 <= sent <= 4
        pause(f.store, "paced", clock=f.clock)
        f.clock.advance(30)
        f.pump(rounds=5)
        assert sum(_installs(f, "paced").values()) == sent  # nothing new while paused
        with pytest.raises(ConfigError):
            pause(f.store, "paced", clock=f.clock)
        resume(f.store, "paced", clock=f.clock)
        f.pump(rounds=30)
        assert get_rollout(f.store, "paced").progress.status is Status.COMPLETED
        assert set(f.running().values()) == {R1}
    finally:
        f.close()


def test_late_enrollees_get_their_cohorts_active_release(fleet):
    late = fleet.add_agent("late-1", "pi4", ("lab",))
    other = fleet.add_agent("car-1", "car", ("lab",))
    fleet.pump()
    assert late.manager.running() == R1  # cohort "class pi4" completed rollout "base" before it enrolled
    assert other.manager.running() == ""
    assert get_rollout(fleet.store, "base").counts["installed"] == N + 1


def test_reports_from_strangers_and_redeliveries_change_nothing(fleet):
    agent = fleet.agents["dev-003"]
    cmd = next(m for m in agent.handled if isinstance(m, InstallCommand))
    report = agent.manager.handle(cmd)[0]
    before = get_rollout(fleet.store, "base").counts
    fleet.transport.publish(topics.device_out("dev-003"), wire.encode(report))  # a redelivery
    agent.transport.publish(topics.device_out("dev-003"), wire.encode(report))
    fleet.pump()
    assert get_rollout(fleet.store, "base").counts == before


def test_revoked_devices_are_skipped_and_a_rollback_without_previous_release_ends(fleet):
    from fedge.coordinator.service.enrollment import revoke

    fresh = fleet.add_agent("car-9", "car", ())  # no release yet: nothing to roll back to
    create_rollout(fleet.store, Spec("mixed", R2, Target(devices=("car-9", "dev-004", "dev-005"))), clock=fleet.clock)
    revoke(fleet.store, "dev-004")  # after the cohort was fixed, before anything was sent
    fleet.pump()
    view = get_rollout(fleet.store, "mixed")
    assert view.progress.status is Status.COMPLETED and view.counts["skipped"] == 1
    assert fleet.agents["dev-004"].manager.running() == R1 and fresh.manager.running() == R2
    rollback(fleet.store, "mixed", clock=fleet.clock)
    fleet.pump()
    view = get_rollout(fleet.store, "mixed")
    assert view.progress.status is Status.ROLLED_BACK
    # car-9 cannot go back: counted as such (not as a failed install) and named in the rollout's reason
    assert (view.counts["rolled_back"], view.counts["rollback_failed"], view.counts["failed"]) == (1, 1, 0)
    assert view.progress.reason.endswith("; 1 devices could not roll back (no previous release)"), view.progress
    assert fleet.agents["dev-005"].manager.running() == R1 and fresh.manager.running() == R2
    from fedge.coordinator.fleet.dashboard import _phase_cell

    (phase,) = view.to_dict()["phases"]
    assert "1 failed (1 could not roll back)" in _phase_cell(phase)

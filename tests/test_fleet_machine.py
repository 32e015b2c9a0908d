"""Properties of the pure rollout state machine (coordinator/fleet/rollouts.py), driven with random outcomes."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.coordinator.fleet.rollouts import (
    Criteria,
    DeviceRecord,
    DeviceState,
    Progress,
    Spec,
    Status,
    Target,
    abort_reason,
    advance,
    assign_phases,
    phase_sizes,
)


@st.composite
def scenarios(draw):
    n = draw(st.integers(0, 40))
    k = draw(st.integers(1, 4))
    cuts = sorted(set(draw(st.lists(st.integers(1, 99), min_size=k - 1, max_size=k - 1))))
    phases = tuple(c / 100 for c in cuts) + (1.0,)
    criteria = Criteria(draw(st.sampled_from([0.0, 10.0, 50.0, 100.0])), draw(st.integers(1, 6)), None, 1)
    fails = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return n, phases, criteria, fails


@given(scenarios())
@settings(max_examples=150, deadline=None)
def test_staging_abort_and_termination(scenario):
    n, phases, criteria, fails = scenario
    spec = Spec("r", "v", Target(device_class="c"), phases=phases, criteria=criteria)
    ids = [f"d{i}" for i in range(n)]
    outcome = dict(zip(ids, fails))
    devices = {d: DeviceRecord(p, DeviceState.WAITING) for d, p in assign_phases(spec, ids).items()}
    progress = Progress(Status.ACTIVE, 0, 0.0, 0.0)
    sizes = phase_sizes(n, phases)
    now = 0.0
    for _ in range(4 * len(phases) + 10):
        d = advance(spec, progress, devices, now)
        sent_ever = sum(r.state is not DeviceState.WAITING for r in devices.values()) + len(d.install)
        if d.progress.status is Status.ACTIVE or d.progress.status is Status.COMPLETED:
            # never more devices than the phase the rollout is in allows
            assert sent_ever <= sizes[d.progress.phase] if n else sent_ever == 0
        if progress.status is not Status.ACTIVE:
            assert not d.install  # nothing new once aborted or finished
        if d.progress.status is Status.ABORTED and progress.status is Status.ACTIVE:
            assert abort_reason(criteria, devices)
            assert set(d.rollback) == {
                k for k, r in devices.items() if r.state in (DeviceState.SENT, DeviceState.INSTALLED)
            }
        progress = d.progress
        for k in d.install:  # every device answers at once: failed or installed, as drawn
            devices[k] = replace(
                devices[k], state=DeviceState.FAILED if outcome[k] else DeviceState.INSTALLED, sent_at=now
            )
        for k in d.rollback:
            devices[k] = replace(devices[k], state=DeviceState.ROLLED_BACK)
        now += 1.0
        if progress.status in (Status.COMPLETED, Status.ROLLED_BACK):
            break
    assert progress.status in (Status.COMPLETED, Status.ROLLED_BACK)
    executed = [r for r in devices.values() if r.state in (DeviceState.INSTALLED, DeviceState.FAILED)]
    if progress.status is Status.COMPLETED:
        assert len(executed) == n and not abort_reason(criteria, devices)
    else:
        assert all(r.state is not DeviceState.INSTALLED for r in devices.values())  # all rolled back

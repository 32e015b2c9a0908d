"""Audit canaries must not carry any of a round's distributed-DP noise (issue 15's audit).

Canaries run inside the coordinator (``serve --audit-canaries``) or the simulator's coordinator
(``fedge-sim run --audit-canaries``), which knows their randomness and could subtract their noise
shares. So the real devices' shares alone must carry the planned noise: canaries add none, and
the noise is split over the real devices' ``min_clients``, exactly as without canaries.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core import update
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.privacy import discrete
from fedge.agent.core.secagg.quantize import to_signed
from fedge.agent.participant import Participant
from fedge.coordinator.rounds.audit import canary_id, is_canary
from fedge.coordinator.rounds.builder import Draw, build_round
from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.service.canaries import LiveCanaries
from fedge.simulations import runner
from fedge.simulations.config import SimConfig


def _training(min_clients: int = 2, goal: int = 3) -> TrainingConfig:
    return TrainingConfig(
        goal=goal, min_clients=min_clients, dp_mode="distributed", noise_multiplier=1.0, secagg=True, delta=1e-5
    )


def _round(cohort: list[str], canaries: int = 0, min_clients: int = 2):
    """A SecAgg+ round with distributed DP over ``cohort`` (its last ``canaries`` members canaries)."""
    roster = {d: IdentityKey.generate().public_bytes() for d in cohort}
    training = _training(min_clients, goal=len(cohort))
    return build_round(
        1,
        training,
        "v0",
        np.zeros(50, np.float32),
        cohort,
        Draw.poisson(len(cohort) - canaries, 1.0),
        lambda: 0.0,
        roster=roster,
        canaries=canaries,
    )


def test_canaries_leave_the_devices_noise_share_as_without_canaries():
    """3 devices, min_clients 2, 8 canaries (issue 15's measurement): each device's share is the
    one it adds without canaries, and the sum of the devices' variances is the planned one or more."""
    devices = ["d0", "d1", "d2"]
    canaries = [canary_id(i) for i in range(8)]
    plain, audited = _round(devices), _round(devices + canaries, canaries=len(canaries))
    p0, p1 = update.noise_plan(plain.plan, 50), update.noise_plan(audited.plan, 50)
    assert audited.plan.privacy.min_clients == 2
    assert p1.client_sigma / p1.scale == pytest.approx(p0.client_sigma / p0.scale, rel=1e-12)
    planned = (p1.central_stddev * p1.scale) ** 2
    assert len(devices) * p1.client_sigma**2 >= planned * (1 - 1e-12)
    # every released sum holds at least min_clients real devices' shares: the floor counts the canaries
    assert audited.settings.min_clients == 2 + len(canaries)


def test_a_live_canary_adds_no_noise_share():
    """A canary's encoded vector is its quantized direction: no noise share (the coordinator knows it)."""
    live = LiveCanaries(4, 50, 1e-5, IdentityKey.generate(), np.random.default_rng(3), seed=11)
    ids = live.join(1, 1.0)
    assert ids and all(not p.noise_share for p in live._round.values())
    plan = _round(["a", "b"])
    direction = live._update(live.audit.seed, 0, 50, plan.plan.privacy.clip_norm)
    rng = np.random.default_rng(4)
    quiet = update.encode_update(direction, 1, plan.plan, rng, noise_share=False)
    noisy = update.encode_update(direction, 1, plan.plan, rng)
    box = plan.plan.quantization
    exact = direction * box.scale
    assert np.max(np.abs(to_signed(quiet.vector[:50], box.bits) - exact)) <= 1  # stochastic rounding only
    assert np.max(np.abs(to_signed(noisy.vector[:50], box.bits) - exact)) > 100  # a device's share is far wider


def test_simulated_canaries_add_no_noise_and_the_devices_carry_the_plan(monkeypatch):
    """The simulator's audit path: per round, canaries draw no noise share and the real devices'
    share variances sum to at least the planned central variance (fixed seed, exact figures)."""
    current: list[str] = []
    on_task = Participant._on_task

    def tracking(self, task):
        current.append(self.device_id)
        try:
            return on_task(self, task)
        finally:
            current.pop()

    real_share = update.add_noise_share

    calls: list[tuple[str, discrete.DiscreteNoisePlan]] = []

    def recording(q, plan, rng):
        if q.size > 1:  # the model's coordinates (the clip bit is off here)
            calls.append((current[-1], plan))
        return real_share(q, plan, rng)

    monkeypatch.setattr(Participant, "_on_task", tracking)
    monkeypatch.setattr(update, "add_noise_share", recording)
    run = runner.run(
        SimConfig(
            population=4,
            per_round=4,
            rounds=2,
            model="mlp",
            dataset="synthetic:1,1",
            secagg=True,
            dp="distributed",
            noise_multiplier=1.0,
            seed=1,
            workers=0,
            audit_canaries=8,
            learning_rate=0.05,
        ),
        show_progress=False,
    )
    assert [r.participants for r in run.rounds] == [4, 4]
    devices = [p for d, p in calls if not is_canary(d)]
    assert len(devices) == 4 * 2  # one share per real device per round
    for r in range(2):
        plans = devices[4 * r : 4 * r + 4]
        planned = (plans[0].central_stddev * plans[0].scale) ** 2
        got = sum(p.client_sigma**2 for p in plans)
        assert got >= planned * (1 - 1e-12), (
            f"round {r + 1}: the devices carry {got / planned:.2f} of the planned variance"
        )
    assert not [d for d, _ in calls if is_canary(d)], "a canary drew a noise share"

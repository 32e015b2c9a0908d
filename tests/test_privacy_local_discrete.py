"""Local DP noise on the integer grid: a discrete Gaussian after quantization, accounted as distributed mode's is."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fedge.agent.core.privacy.discrete import accounted_noise, bit_noise_plan
from fedge.agent.core.secagg.quantize import max_abs_int, to_signed
from fedge.agent.core.update import encode_update, noise_plan
from fedge.coordinator.rounds.builder import Draw, round_event
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan

D = 20_000


def local_plan(z: float = 1.0, clip: float = 0.5, **more):
    cfg = TrainingConfig(
        dp_mode="local", secagg=False, noise_multiplier=z, clip_norm=clip, goal=10, min_clients=5, **more
    )
    return make_plan(cfg, "v1", 10, 100)


class NoFloatNoise(np.random.Generator):
    """A generator whose float Gaussian sampler must never be called."""

    def normal(self, *a, **k):  # noqa: D102
        raise AssertionError("float Gaussian noise drawn")


def test_local_report_carries_the_planned_discrete_gaussian_and_no_float_noise():
    plan = local_plan(z=1.3)
    rng = NoFloatNoise(np.random.PCG64(3))
    enc = encode_update(np.zeros(D), 10, plan, rng)
    noise = to_signed(enc.vector[:D], plan.quantization.bits)  # the update is zero: what is left is noise
    sigma = 1.3 * 0.5 * plan.quantization.scale  # z C scale, integer units
    assert noise.dtype.kind == "i" and np.std(noise) == pytest.approx(sigma, rel=0.03)  # 20k draws: sd error ~0.5%
    assert abs(np.mean(noise)) < 6 * sigma / math.sqrt(D)
    assert np.abs(noise).max() <= max_abs_int(plan.quantization.range, plan.quantization.scale)  # clamped to the box
    weight = to_signed(enc.vector[-1:], plan.quantization.bits)[0]  # the weight gets no noise: only stochastic rounding
    assert math.floor(plan.quantization.scale) <= weight <= math.ceil(plan.quantization.scale)


def test_local_accounting_is_distributed_modes_with_one_share():
    plan = local_plan(z=1.3)
    p = noise_plan(plan, D)
    assert (
        p.min_clients == 1
        and p.rdp_offset == 0.0
        and p.client_sigma == pytest.approx(1.3 * 0.5 * plan.quantization.scale)
    )
    assert p.l2_sensitivity == pytest.approx(plan.quantization.scale * 0.5 + math.sqrt(D))
    z_eff = 1.3 * plan.quantization.scale * 0.5 / (plan.quantization.scale * 0.5 + math.sqrt(D))
    assert p.effective_noise_multiplier == pytest.approx(z_eff)
    assert accounted_noise(plan.privacy, p) == pytest.approx((z_eff, 0.0))
    event = round_event(plan, D, Draw.fixed(100, 10))
    assert event.noise_multiplier == pytest.approx(z_eff) and event.noise_multiplier < 1.3


def test_local_adaptive_bit_is_noised_on_the_grid_and_composed():
    plan = local_plan(z=1.0, target_quantile=0.5, clip_count_stddev=2.0)
    assert plan.privacy.adaptive is not None
    rng = NoFloatNoise(np.random.PCG64(4))
    bits = [
        to_signed(encode_update(np.zeros(50), 10, plan, rng).vector[50:51], plan.quantization.bits)[0]
        for _ in range(3000)
    ]
    assert np.std(bits) == pytest.approx(2.0 * plan.quantization.scale, rel=0.06)  # 3000 draws: sd error ~1.3%
    cfg = plan.privacy
    update = noise_plan(plan, 50)
    bit = bit_noise_plan(2.0, update)
    z, offset = accounted_noise(cfg, update)
    assert z == pytest.approx((update.effective_noise_multiplier**-2 + bit.effective_noise_multiplier**-2) ** -0.5)
    assert offset == 0.0 and z < 1.0


@pytest.mark.parametrize("adaptive", [0.0, 0.5])
def test_local_device_ledger_accounts_what_the_coordinator_accounts(tmp_path, adaptive):
    """The device ledger (agent/daemon.contribution_for) and the coordinator (builder.round_event) take
    the same accounted z (rounding-inflated, and composed with the clip bit) and RDP offset, so the
    unamplified epsilon of the device's reports equals the coordinator's figure for them exactly."""
    from fedge.agent.core.privacy.ledger import DeviceLedger, composed_epsilon
    from fedge.agent.daemon import contribution_for
    from fedge.agent.store import Store
    from fedge.coordinator.rounds.accounting import RoundEvent, epsilon_of_events

    plan = local_plan(z=1.3, target_quantile=adaptive, clip_count_stddev=5.0 if adaptive else 0.0)
    event = round_event(plan, D, Draw.poisson(10, 1.0))  # every device in: the unamplified event
    c = contribution_for(7, plan, D)
    assert (c.noise_multiplier, c.rdp_offset) == (event.noise_multiplier, event.rdp_offset)
    assert c.noise_multiplier < 1.3  # the accounted z, not the raw one
    with Store(tmp_path / "agent.db") as store:
        ledger = DeviceLedger(store.db)
        ledger.record(c)
        ledger.record(contribution_for(8, plan, D))
        recorded = ledger.contributions()
        spent = ledger.epsilon_spent(1e-5)
    as_device = [RoundEvent(x.noise_multiplier, 1.0, "none", rdp_offset=x.rdp_offset) for x in recorded]
    assert epsilon_of_events(as_device, 1e-5) == epsilon_of_events([event, event], 1e-5)
    coordinator = [dataclasses.replace(c, noise_multiplier=event.noise_multiplier, rdp_offset=event.rdp_offset)] * 2
    assert spent == composed_epsilon(coordinator, 1e-5)

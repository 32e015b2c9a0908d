"""Adaptive clipping end to end: the clip bit rides in the aggregated vector, C follows the target
quantile over rounds, SecAgg+ shows the coordinator only the noisy bit sum, the vector is unchanged
when the option is off, and the campaign's epsilon is dp-accounting's for the total z."""

from __future__ import annotations

import dataclasses

import dp_accounting
import numpy as np
import pytest

from fedge.agent.core import wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.messages.rounds import PlainUpdate, Task
from fedge.agent.core.messages.secagg import MaskedInput
from fedge.agent.core.secagg.quantize import dequantize_sum, quantize
from fedge.agent.core.update import encode_update, noise_plan
from fedge.agent.daemon import contribution_for
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.secure import PeerDirectory, secagg_factory, trusted_lookup
from fedge.coordinator.rounds.accounting import PrivacyAccountant, round_event_for
from fedge.coordinator.rounds.engine import PlainAggregation, RoundEngine, RoundSettings, RoundStatus, expected_length
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from fedge.coordinator.rounds.secure import SecureAggregation
from tests.fakes import FakeClock
from tests.round_fixtures import deliver


def _finish(engine, clock, parts, drop=lambda d, m: False):
    while engine.status is RoundStatus.RUNNING:
        clock.t = engine.deadline + 1
        deliver(engine, parts, engine.tick(), drop)


def _deltas_with_norms(norms: np.ndarray, dim: int, seed: int) -> dict[str, np.ndarray]:
    """One fixed delta per client, of exactly the given L2 norm."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(norms):
        v = rng.normal(size=dim)
        out[f"d{i:03d}"] = (v / np.linalg.norm(v) * n).astype(np.float32)
    return out


def _plain_round(cfg: TrainingConfig, deltas: dict[str, np.ndarray], clip: float, round_id: int, seed: int):
    n, dim = len(deltas), next(iter(deltas.values())).size
    plan = make_plan(cfg, "v", n, n, clip_norm=clip)
    clock = FakeClock()
    agg = PlainAggregation(expected_length(np.zeros(dim), plan), plan.quantization.bits, n, cfg.min_clients)
    engine = RoundEngine(
        round_id, plan, RoundSettings(n, cfg.min_clients, 10.0), np.zeros(dim, np.float32), list(deltas), agg, clock
    )
    parts = {
        d: Participant(
            d, (lambda dd: lambda task: LocalResult(deltas[dd], 10))(d), np.random.default_rng(seed * 1000 + i)
        )
        for i, d in enumerate(deltas)
    }
    deliver(engine, parts, engine.start())
    _finish(engine, clock, parts)
    assert engine.status is RoundStatus.COMPLETED, engine.reason
    return engine, parts


def test_clip_norm_converges_to_the_target_quantile_of_update_norms() -> None:
    """Local DP, plain aggregation, 40 clients whose norms spread log-uniformly over [0.2, 5]:
    from C = 0.05 (far below) and C = 20 (far above), 50 rounds (eta 0.5) bring C within 12% of the
    empirical quantile (the noisy bit sum has std ~ sigma_b * sqrt(n) / n = 0.05 in b_bar)."""
    n, dim = 40, 16
    norms = np.exp(np.random.default_rng(7).uniform(np.log(0.2), np.log(5.0), n))
    deltas = _deltas_with_norms(norms, dim, seed=8)
    for gamma in (0.3, 0.7):
        target = float(np.quantile(norms, gamma))
        cfg = TrainingConfig(
            dp_mode="local",
            secagg=False,
            noise_multiplier=0.5,
            goal=n,
            min_clients=n,
            target_quantile=gamma,
            adaptive_learning_rate=0.5,
            clip_count_stddev=0.3,
        )
        for start in (0.05, 20.0):
            c, trace = start, []
            for r in range(1, 51):
                engine, _ = _plain_round(cfg, deltas, c, r, seed=r)
                nxt = engine.outcome.next_clip_norm
                assert nxt is not None and nxt > 0
                trace.append(nxt)
                c = nxt
            late = np.array(trace[-10:])
            assert abs(np.log(np.median(late) / target)) < np.log(1.12), (gamma, start, target, trace[-10:])
            # it moved the whole way, not by chance: far from where it started
            assert abs(np.log(c / start)) > 1.5


def test_clip_bit_is_one_more_coordinate_and_reflects_the_norm_before_clipping() -> None:
    cfg = TrainingConfig(
        dp_mode="local",
        secagg=False,
        noise_multiplier=0.5,
        goal=4,
        min_clients=2,
        target_quantile=0.5,
        clip_count_stddev=0.3,
    )
    plan = make_plan(cfg, "v", 4, 10, clip_norm=1.0)
    delta = np.full(9, 1.0, np.float32)  # norm 3 > C = 1: clipped, bit -1/2
    enc = encode_update(delta, 10, plan, np.random.default_rng(0))
    assert enc.vector.size == 11 == expected_length(np.zeros(9), plan)
    assert enc.clip_bit == -0.5 and enc.was_clipped
    small = encode_update(delta / 10, 10, plan, np.random.default_rng(0))
    assert small.clip_bit == 0.5
    # weight stays last: 1 under DP
    last = dequantize_sum(enc.vector[-1:], plan.quantization.scale, plan.quantization.bits)
    assert last[0] == pytest.approx(1.0, abs=2 / plan.quantization.scale)


def test_secagg_round_shows_the_coordinator_only_the_noisy_bit_sum() -> None:
    """Distributed DP + SecAgg+: no masked input reveals its bit; the unmasked sum's bit
    coordinate equals the sum of the clients' bits plus N(0, sigma_b^2) noise (sigma_b = 0.15,
    so within 5 sigma_b = 0.75 < 1: a lost or doubled bit would fail)."""
    n, dim = 12, 24
    norms = np.array([0.3] * 5 + [3.0] * 7)  # C = 1: 5 bits +1/2, 7 bits -1/2: sum -1
    deltas = _deltas_with_norms(norms, dim, seed=3)
    cfg = TrainingConfig(
        dp_mode="distributed",
        secagg=True,
        noise_multiplier=0.2,
        goal=n,
        min_clients=10,
        target_quantile=0.5,
        adaptive_learning_rate=0.2,
        clip_count_stddev=0.15,
    )
    errors = []
    for r in range(1, 4):
        ids = {d: IdentityKey.generate() for d in deltas}
        roster = {d: k.public_bytes() for d, k in ids.items()}
        clock = FakeClock()
        plan = make_plan(cfg, "v", n, 100, clip_norm=1.0)
        assert plan.privacy.adaptive is not None and plan.privacy.adaptive.clip_count_stddev == 0.15
        agg = SecureAggregation(plan, r, roster, expected_length(np.zeros(dim), plan), clock, min_clients=10)
        engine = RoundEngine(r, plan, RoundSettings(n, 10, 10.0), np.zeros(dim, np.float32), list(roster), agg, clock)
        parts = {
            d: Participant(
                d,
                (lambda dd: lambda task: LocalResult(deltas[dd], 10))(d),
                np.random.default_rng(100 * r + i),
                secagg_factory(d, ids[d], PeerDirectory(trusted=trusted_lookup(roster))),
                peers=PeerDirectory(trusted=trusted_lookup(roster)),
            )
            for i, d in enumerate(deltas)
        }
        seen: list[MaskedInput] = []

        def spy(dev, msg):
            if isinstance(msg, MaskedInput):
                seen.append(msg)
            return False

        deliver(engine, parts, engine.start(), spy)
        _finish(engine, clock, parts, spy)
        assert engine.status is RoundStatus.COMPLETED, engine.reason
        bits = [parts[d].encoded.clip_bit for d in deltas]
        assert sum(bits) == -1.0
        assert len(seen) == n
        for m in seen:  # what the coordinator received is masked: its bit coordinate is not the device's
            own = parts[m.device_id].encoded.vector if hasattr(m, "device_id") else None
            if own is not None:
                assert m.vector[dim] != own[dim]
        for d in deltas:  # each device's share already noised its bit before masking
            own_bit = dequantize_sum(
                parts[d].encoded.vector[dim : dim + 1], plan.quantization.scale, plan.quantization.bits
            )[0]
            assert own_bit != parts[d].encoded.clip_bit
        noisy = engine.outcome.aggregate.clip_bit_sum
        errors.append(noisy - sum(bits))
        assert abs(noisy - sum(bits)) < 5 * 0.15
        # C moves toward the median: 5 of 12 fit within C = 1, fewer than half, so C grows
        assert engine.outcome.next_clip_norm > 1.0
        # and the model part is the clipped mean, as without adaptive clipping
        clipped = [deltas[d] * min(1.0, 1.0 / float(np.linalg.norm(deltas[d]))) for d in deltas]
        z_delta = plan.privacy.update_noise_multiplier
        tol = 6 * z_delta * 1.0 / plan.dp_denominator + 1e-3
        np.testing.assert_allclose(engine.outcome.aggregate.mean_delta, np.mean(clipped, axis=0), atol=tol)
    assert np.std(errors) > 0  # noise was added, not the exact sum


def test_vector_and_plan_unchanged_when_adaptive_clipping_is_off() -> None:
    dim = 30
    delta = np.random.default_rng(1).normal(0, 0.1, dim).astype(np.float32)
    for cfg in (
        TrainingConfig(secagg=False, goal=5, min_clients=2),
        TrainingConfig(dp_mode="local", secagg=False, noise_multiplier=0.5, goal=5, min_clients=2),
        TrainingConfig(dp_mode="distributed", noise_multiplier=0.5, goal=5, min_clients=2),
    ):
        plan = make_plan(cfg, "v", 5, 50)
        assert plan.privacy.adaptive is None
        assert wire.decode(wire.encode(PlainUpdate(1, "d", np.zeros(1, np.uint32)))).vector.size == 1
        enc = encode_update(delta, 7, plan, np.random.default_rng(5))
        assert enc.vector.size == dim + 1 == expected_length(np.zeros(dim), plan) and enc.clip_bit is None
        if cfg.dp_mode == "off":
            # today's arithmetic, spelled out: [weight * delta, weight], clipped, quantized
            w = 7 / cfg.example_cap
            raw = np.append(delta.astype(np.float64) * w, w)
            np.clip(raw, -plan.quantization.range, plan.quantization.range, out=raw)
            expect = quantize(raw, plan.quantization.scale, plan.quantization.bits, np.random.default_rng(5))
            np.testing.assert_array_equal(enc.vector, expect)
    engine, _ = _plain_round(
        TrainingConfig(secagg=False, goal=3, min_clients=3), _deltas_with_norms(np.ones(3), 8, 0), 1.0, 1, 1
    )
    assert engine.outcome.next_clip_norm is None and engine.outcome.aggregate.clip_bit_sum is None


def test_epsilon_of_an_adaptive_campaign_is_dp_accountings_for_the_total_z() -> None:
    """The update gets z_Delta > z, the bit query sigma_b; the campaign and the device ledger
    account the total z (within 1% of dp-accounting driven directly), not z_Delta."""
    z, sigma_b, q, rounds, delta, dim = 0.8, 0.6, 0.05, 200, 1e-6, 1000
    base = dict(noise_multiplier=z, goal=20, min_clients=10, delta=delta)
    for mode in ("local", "distributed"):
        cfg = TrainingConfig(
            dp_mode=mode, secagg=mode == "distributed", target_quantile=0.5, clip_count_stddev=sigma_b, **base
        )
        plan = make_plan(cfg, "v", 20, 400, clip_norm=0.7)
        pc = plan.privacy
        assert pc.update_noise_multiplier > 1.2 * z
        discrete = noise_plan(plan, dim) if mode == "distributed" else None
        acc = PrivacyAccountant()
        for _ in range(rounds):
            acc.record(round_event_for(pc, sampling_rate=q, discrete=discrete))
        direct = dp_accounting.rdp.RdpAccountant()
        direct.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
        want = direct.get_epsilon(delta)
        assert acc.epsilon(delta) == pytest.approx(want, rel=0.01), mode
        wrong = dp_accounting.rdp.RdpAccountant()
        wrong.compose(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(pc.update_noise_multiplier)), rounds
        )
        assert abs(wrong.get_epsilon(delta) / want - 1) > 0.05  # the check can tell the two apart
        # the device ledger sees the total z too
        assert contribution_for(1, plan, dim).noise_multiplier == pytest.approx(z, rel=0.01)


def test_config_and_plan_refuse_adaptive_clipping_without_dp_or_enough_bit_noise() -> None:
    with pytest.raises(ConfigError):
        TrainingConfig(target_quantile=0.5)  # DP off
    with pytest.raises(ConfigError):
        TrainingConfig(
            dp_mode="local", secagg=False, noise_multiplier=1.0, target_quantile=0.5, clip_count_stddev=0.4
        )  # 2 sigma_b <= z
    with pytest.raises(ConfigError):
        TrainingConfig(dp_mode="local", secagg=False, noise_multiplier=1.0, target_quantile=1.5, clip_count_stddev=1)
    cfg = TrainingConfig(dp_mode="local", secagg=False, noise_multiplier=0.5, goal=20, target_quantile=0.5)
    assert cfg.adaptive.clip_count_stddev == 1.0  # the paper's default: expected clients / 20
    plan = make_plan(cfg, "v", 20, 20)
    a = plan.privacy.adaptive
    assert a is not None
    off = dataclasses.replace(plan.privacy, mode="off", noise_multiplier=0.0)
    for bad in (
        dict(privacy=off, dp_denominator=0),
        dict(privacy=dataclasses.replace(plan.privacy, adaptive=dataclasses.replace(a, clip_count_stddev=0.1))),
        dict(privacy=dataclasses.replace(plan.privacy, adaptive=dataclasses.replace(a, target_quantile=1.0))),
        dict(privacy=dataclasses.replace(plan.privacy, adaptive=dataclasses.replace(a, learning_rate=0.0))),
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(plan, **bad)
    assert wire.decode(wire.encode(Task(1, "d", plan, np.zeros(2, np.float32)))).plan == plan

"""Clipping and noise: norms never exceed C, noise std per mode matches its target (fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedge.agent.core.errors import ConfigError, RoundFailed
from fedge.agent.core.privacy import adaptive
from fedge.agent.core.privacy.clip import clip_l2, l2_norm
from fedge.agent.core.privacy.config import AdaptiveClipping, PrivacyConfig
from fedge.agent.core.privacy.discrete import (
    DiscreteNoisePlan,
    add_noise_share,
    require_min_survivors,
    sample_discrete_gaussian,
    survivor_noise_multiplier,
)
from fedge.agent.core.privacy.noise import privatize, share_stddev
from fedge.agent.core.privacy.rng import os_generator

# Standard deviations are estimated from n draws; the relative standard error of a std estimate
# is about 1/sqrt(2n), i.e. 0.16% for n = 200,000. Tolerances below are >= 6 standard errors.
N = 200_000
STD_TOL = 0.01


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e6, 1e6, width=32)),
    st.floats(1e-3, 1e3),
)
def test_clipped_norm_never_exceeds_c(x, c):
    out = clip_l2(x, c)
    assert l2_norm(out.vector) <= c
    assert out.vector.dtype == x.dtype and out.vector.shape == x.shape
    if l2_norm(x) <= c:
        assert np.array_equal(out.vector, x) and not out.was_clipped
    else:  # direction kept, length C (to float32 precision)
        assert l2_norm(out.vector) == pytest.approx(c, rel=1e-5)


def test_clip_refuses_non_finite():
    with pytest.raises(ValueError):
        clip_l2(np.array([1.0, np.nan]), 1.0)


def test_local_noise_std_is_z_times_c():
    rng = np.random.default_rng(1)
    cfg = PrivacyConfig(mode="local", clip_norm=0.5, noise_multiplier=1.3).validate(secagg_enabled=False)
    update = np.zeros(N, dtype=np.float32)
    out = privatize(update, cfg, rng, ring=False)  # the float-only path; the pipeline noises on the grid
    assert out.noise_stddev == pytest.approx(0.65)
    assert privatize(update, cfg, rng).noise_stddev == 0
    assert np.std(out.vector) == pytest.approx(0.65, rel=STD_TOL)
    assert abs(np.mean(out.vector)) < 6 * 0.65 / math.sqrt(N)


def test_distributed_float_shares_sum_to_central_variance():
    rng = np.random.default_rng(2)
    n, z, c, d = 16, 1.1, 2.0, N
    cfg = PrivacyConfig(mode="distributed", clip_norm=c, noise_multiplier=z, min_clients=n).validate(True)
    total = sum(privatize(np.zeros(d), cfg, rng, ring=False).vector for _ in range(n))
    one = privatize(np.zeros(N), cfg, rng, ring=False).vector
    assert np.std(one) == pytest.approx(share_stddev(z, c, n), rel=STD_TOL)
    assert np.std(total) == pytest.approx(z * c, rel=STD_TOL)
    # on the integer ring privatize only clips; the noise comes after quantization
    ring = privatize(np.ones(10) * 5, cfg, rng)
    assert ring.noise_stddev == 0 and l2_norm(ring.vector) <= c


def test_off_mode_leaves_update_alone():
    x = np.arange(5, dtype=np.float32)
    out = privatize(x, PrivacyConfig(mode="off"), np.random.default_rng(0))
    assert np.array_equal(out.vector, x)


def test_distributed_without_secagg_is_refused():
    with pytest.raises(ConfigError, match="secure aggregation"):
        PrivacyConfig(mode="distributed").validate(secagg_enabled=False)
    PrivacyConfig(mode="distributed").validate(secagg_enabled=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mode="local", noise_multiplier=0),
        dict(mode="local", clip_norm=-1),
        dict(mode="nope"),
        dict(mode="local", delta=1.5),
        dict(mode="local", accountant="pld", sampling="fixed"),
        dict(mode="local", noise_multiplier=2.0, adaptive=AdaptiveClipping(clip_count_stddev=0.5)),
    ],
)
def test_invalid_configs_are_refused(kwargs):
    with pytest.raises(ConfigError):
        PrivacyConfig(**kwargs).validate(secagg_enabled=True)


def test_os_generators_differ():
    a, b = os_generator(), os_generator()
    assert not np.array_equal(a.random(8), b.random(8))


def _dg_pmf(sigma, support):
    w = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    return w / w.sum()


@pytest.mark.parametrize("sigma", [0.8, 1.5, 4.0])
def test_discrete_gaussian_matches_its_pmf(sigma):
    rng = np.random.default_rng(3)
    x = sample_discrete_gaussian(sigma, N, rng)
    support = np.arange(-int(12 * sigma) - 2, int(12 * sigma) + 3)
    pmf = _dg_pmf(sigma, support)
    counts = np.array([(x == k).sum() for k in support])
    assert counts.sum() == N  # nothing outside +-12 sigma
    # each cell within 6 binomial standard errors (plus one count) of its expectation
    expected = N * pmf
    assert np.all(np.abs(counts - expected) <= 6 * np.sqrt(expected * (1 - pmf)) + 1)


def test_discrete_gaussian_variance_for_large_sigma():
    x = sample_discrete_gaussian(1234.5, N, np.random.default_rng(4))
    assert x.dtype == np.int64
    assert np.std(x) == pytest.approx(1234.5, rel=STD_TOL)


def _signed(v, bits):
    v = v.astype(np.int64)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def test_distributed_discrete_shares_sum_to_central_variance_mod_ring():
    rng = np.random.default_rng(5)
    z, c, scale, bits, n, d = 1.0, 1.0, 2.0**10, 32, 10, 20_000
    plan = DiscreteNoisePlan(clip_norm=c, central_stddev=z * c, scale=scale, bits=bits, min_clients=n, dimension=d)
    # quantized values near zero, some negative (two's complement), as quantize() would give
    base = (np.arange(d) % 7 - 3).astype(np.int64)
    quantized = (base % (1 << bits)).astype(np.uint32)
    total = np.zeros(d, dtype=np.int64)
    for _ in range(n):
        total = (total + add_noise_share(quantized, plan, rng).astype(np.int64)) % (1 << bits)
    noise = _signed(total.astype(np.uint64), bits) - n * base
    # 20,000 draws: relative SE of std 0.5%; tolerance 3%
    assert np.std(noise) / scale == pytest.approx(z * c, rel=0.03)
    assert plan.client_sigma == pytest.approx(z * c * scale / math.sqrt(n))


def test_discrete_plan_accounts_rounding_and_refuses_coarse_scale():
    plan = DiscreteNoisePlan(
        clip_norm=1.0, central_stddev=1.2, scale=2.0**14, bits=32, min_clients=100, dimension=10_000
    )
    # Delta_2 = scale*C + sqrt(d): z_eff = z * scale*C / (scale*C + sqrt(d))
    assert plan.effective_noise_multiplier == pytest.approx(1.2 * 2**14 / (2**14 + 100))
    assert plan.rdp_offset < 1e-12
    with pytest.raises(ConfigError, match="scale"):
        DiscreteNoisePlan(clip_norm=1.0, central_stddev=1.0, scale=0.5, bits=32, min_clients=100, dimension=10_000)


def test_too_few_survivors_refuse_unmasking():
    plan = DiscreteNoisePlan(clip_norm=1.0, central_stddev=1.0, scale=2.0**12, bits=32, min_clients=50, dimension=100)
    require_min_survivors(50, plan)
    with pytest.raises(RoundFailed, match="50"):
        require_min_survivors(49, plan)
    assert survivor_noise_multiplier(plan, 25) == pytest.approx(plan.effective_noise_multiplier / math.sqrt(2))


def test_adaptive_noise_split_composes_back_to_total():
    z, sb = 1.0, 5.0
    zd = adaptive.update_noise_multiplier(z, sb)
    assert zd > z
    assert adaptive.effective_noise_multiplier(zd, sb) == pytest.approx(z)
    cfg = PrivacyConfig(mode="local", noise_multiplier=z, adaptive=AdaptiveClipping(clip_count_stddev=sb)).validate(
        False
    )
    assert cfg.update_noise_multiplier == pytest.approx(zd)


def test_adaptive_clip_converges_to_target_quantile():
    # norms ~ |N(0,1)| * 3: the median is 3 * 0.6745; a noisy geometric update should land near it
    rng = np.random.default_rng(6)
    c, m, sb = 0.1, 200, 10.0
    for _ in range(300):
        norms = np.abs(rng.normal(size=m)) * 3.0
        bits = np.array([adaptive.clip_bit(nv, c) for nv in norms])
        c = adaptive.next_clip_norm(c, adaptive.noised_bit_sum(bits, sb, rng), m, 0.5, 0.2)
    assert c == pytest.approx(3.0 * 0.6745, rel=0.1)


def test_adaptive_privatize_reports_clip_bit():
    cfg = PrivacyConfig(mode="local", noise_multiplier=1.0, adaptive=AdaptiveClipping(clip_count_stddev=2.0)).validate(
        False
    )
    rng = np.random.default_rng(7)
    assert privatize(np.ones(4) * 10, cfg, rng, clip_norm=1.0).clip_bit == -0.5
    assert privatize(np.ones(4) * 0.1, cfg, rng, clip_norm=1.0).clip_bit == 0.5


def test_ring_pipeline_with_real_quantizer_recovers_sum_plus_central_noise():
    """clip -> secagg.quantize -> discrete share -> sum mod 2^bits -> dequantize_sum."""
    from fedge.agent.core.secagg.quantize import dequantize_sum, quantize

    rng = np.random.default_rng(8)
    n, z, c, d, bits = 20, 1.0, 1.0, 20_000, 32
    scale = 2.0**16
    plan = DiscreteNoisePlan(clip_norm=c, central_stddev=z * c, scale=scale, bits=bits, min_clients=n, dimension=d)
    updates = [rng.normal(size=d) * 0.05 for _ in range(n)]
    total = np.zeros(d, dtype=np.uint64)
    for u in updates:
        clipped = clip_l2(u, c).vector
        q = quantize(clipped, scale, bits, rng)
        total = (total + add_noise_share(q, plan, rng).astype(np.uint64)) % (1 << bits)
    true_sum = sum(clip_l2(u, c).vector for u in updates)
    noise = dequantize_sum(total.astype(np.uint32), scale, bits) - true_sum
    # 20,000 draws: relative SE of the std 0.5%; tolerance 3%. Rounding adds ~sqrt(n/6)/scale, negligible.
    assert np.std(noise) == pytest.approx(z * c, rel=0.03)
    assert abs(np.mean(noise)) < 6 * z * c / math.sqrt(d)


@settings(max_examples=200, deadline=None)
@given(sigma=st.floats(1.2, 40.0), n=st.integers(1, 12_000))
def test_tau_equals_the_ddg_sum_term_by_term(sigma, n):
    """tau (DDG paper) is the direct sum, also where its terms underflow (sigma_i > ~8.7) and it is skipped."""
    try:
        plan = DiscreteNoisePlan(
            clip_norm=1.0, central_stddev=sigma * math.sqrt(n), scale=1.0, bits=32, min_clients=n, dimension=1
        )
    except ConfigError:  # sigma_i too small for the plan's own tau*d bound
        assume(False)
    s2 = plan.client_sigma**2
    direct = 10.0 * sum(math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, min(n, 10_000))) + (
        10.0 * max(0, n - 10_000) * math.exp(-(math.pi**2) * s2)
    )
    assert plan.tau == direct

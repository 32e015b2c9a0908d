"""Epsilon from fedge's accounting equals dp-accounting computed independently (within 1%)."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedge.agent.core.errors import ConfigError
from fedge.coordinator.rounds.accounting import PrivacyAccountant, RoundEvent, epsilon, epsilon_of_events

# (noise multiplier, sampling rate, rounds, delta)
TABLE = [
    (0.8, 0.01, 100, 1e-5),
    (1.0, 0.01, 1000, 1e-5),
    (1.1, 0.05, 200, 1e-6),
    (2.0, 0.1, 500, 1e-5),
    (4.0, 1.0, 20, 1e-4),
    (1.5, 0.002, 3000, 1e-7),
]


def _independent_rdp(z, q, rounds, delta, relation, event):
    acc = rdp.RdpAccountant(neighboring_relation=relation)
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("z,q,rounds,delta", TABLE)
def test_poisson_rdp_matches_dp_accounting(z, q, rounds, delta):
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    want = _independent_rdp(z, q, rounds, delta, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, event)
    got = epsilon(z, q, rounds, delta, accountant="rdp")
    assert got == pytest.approx(want, rel=0.01)


@pytest.mark.parametrize("z,q,rounds,delta", TABLE[:4])
def test_poisson_pld_matches_dp_accounting(z, q, rounds, delta):
    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-3)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    want = acc.get_epsilon(delta)
    got = epsilon(z, q, rounds, delta, accountant="pld")
    assert got == pytest.approx(want, rel=0.01)
    # PLD is tighter than RDP, never looser (beyond discretization)
    assert got <= epsilon(z, q, rounds, delta, accountant="rdp") * 1.01


@pytest.mark.parametrize("z,q,rounds,delta", TABLE[:4])
def test_fixed_size_rdp_matches_dp_accounting(z, q, rounds, delta):
    population = 10_000
    m = round(q * population)
    # replace-one moves the clipped sum by 2C: the Gaussian carries sigma / 2C = z / 2
    event = dp_accounting.SampledWithoutReplacementDpEvent(population, m, dp_accounting.GaussianDpEvent(z / 2))
    want = _independent_rdp(z, q, rounds, delta, dp_accounting.NeighboringRelation.REPLACE_ONE, event)
    got = epsilon(z, q, rounds, delta, sampling="fixed", population=population)
    assert got == pytest.approx(want, rel=0.01)


def test_fixed_size_with_pld_is_refused():
    with pytest.raises(ConfigError, match="PLD"):
        epsilon(1.0, 0.01, 10, 1e-5, sampling="fixed", population=1000, accountant="pld")


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert epsilon(1.0, 0.01, 10, 1e-5) < epsilon(1.0, 0.01, 100, 1e-5)
    assert epsilon(2.0, 0.01, 100, 1e-5) < epsilon(1.0, 0.01, 100, 1e-5)
    assert epsilon(1.0, 0.01, 0, 1e-5) == 0.0


def test_no_noise_is_infinite_epsilon():
    assert math.isinf(epsilon(0.0, 0.1, 5, 1e-5))


def test_heterogeneous_rounds_equal_independent_composition():
    events = [RoundEvent(1.0, 0.01)] * 20 + [RoundEvent(2.0, 0.05)] * 15 + [RoundEvent(1.0, 0.01)] * 10
    acc = PrivacyAccountant("rdp")
    for e in events:
        acc.record(e)
    ind = rdp.RdpAccountant()
    for e in events:
        ind.compose(
            dp_accounting.PoissonSampledDpEvent(e.sampling_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier))
        )
    assert acc.epsilon(1e-5) == pytest.approx(ind.get_epsilon(1e-5), rel=0.01)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_accountant_json_round_trip_is_plain_json(kind):
    acc = PrivacyAccountant(kind)
    acc.record(RoundEvent(1.2, 0.02))
    acc.record(RoundEvent(1.2, 0.02, rdp_offset=1e-9))
    text = acc.to_json()
    assert json.loads(text)["events"][1]["rdp_offset"] == 1e-9
    back = PrivacyAccountant.from_json(text)
    assert back.events == acc.events and back.accountant == kind
    assert back.epsilon(1e-5) == acc.epsilon(1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "[]",
        '{"version": 2, "accountant": "rdp", "events": []}',
        '{"version": 1, "accountant": "rdp", "events": [{"x": 1}]}',
        '{"version": 1, "accountant": "nope", "events": []}',
    ],
)
def test_malformed_json_is_config_error(bad):
    with pytest.raises(ConfigError):
        PrivacyAccountant.from_json(bad)


def test_mixed_neighbouring_relations_are_refused():
    acc = PrivacyAccountant("rdp")
    acc.record(RoundEvent(1.0, 0.01))
    with pytest.raises(ConfigError, match="neighbouring"):
        acc.record(RoundEvent.fixed(1.0, 10, 1000))


def test_rdp_offset_adds_to_epsilon():
    base = epsilon_of_events([RoundEvent(1.0, 0.1)] * 10, 1e-5)
    offset = epsilon_of_events([RoundEvent(1.0, 0.1, rdp_offset=0.01)] * 10, 1e-5)
    assert offset == pytest.approx(base + 0.1, rel=1e-9)


def test_unsampled_event_is_plain_gaussian():
    got = epsilon_of_events([RoundEvent(3.0, 1.0, "none")] * 4, 1e-5)
    ind = rdp.RdpAccountant()
    ind.compose(dp_accounting.GaussianDpEvent(3.0), 4)
    assert got == pytest.approx(ind.get_epsilon(1e-5), rel=1e-9)


def test_incremental_accountant_equals_batch_and_preview():
    acc = PrivacyAccountant("rdp")
    events = [RoundEvent(1.0, 0.02), RoundEvent(1.5, 0.05), RoundEvent(1.0, 0.02)]
    for i, e in enumerate(events):
        preview = acc.epsilon_if(e, 1e-5)
        acc.record(e)
        assert acc.epsilon(1e-5) == pytest.approx(preview, rel=1e-9)
        assert acc.epsilon(1e-5) == pytest.approx(epsilon_of_events(events[: i + 1], 1e-5), rel=1e-9)


def test_round_event_for_each_mode():
    from fedge.agent.core.privacy.config import AdaptiveClipping, PrivacyConfig
    from fedge.agent.core.privacy.discrete import DiscreteNoisePlan
    from fedge.coordinator.rounds.accounting import local_report_epsilon, round_event_for

    local = PrivacyConfig(mode="local", noise_multiplier=1.3)
    assert round_event_for(local, sampling_rate=0.1) == RoundEvent(1.3, 0.1)
    assert math.isinf(epsilon_of_events([round_event_for(PrivacyConfig(mode="off"), sampling_rate=0.1)], 1e-5))
    fixed = PrivacyConfig(mode="distributed", noise_multiplier=1.0, sampling="fixed")
    assert round_event_for(fixed, sampling_rate=0.1, population=100, sample_size=10) == RoundEvent.fixed(1.0, 10, 100)
    with pytest.raises(ConfigError):
        round_event_for(fixed, sampling_rate=0.1)
    # discrete: the rounding inflation lowers the accounted z
    plan = DiscreteNoisePlan(
        clip_norm=0.5, central_stddev=0.75, scale=2.0**12, bits=32, min_clients=50, dimension=10_000
    )
    dist = PrivacyConfig(mode="distributed", noise_multiplier=1.5, clip_norm=0.5, min_clients=50)
    ev = round_event_for(dist, sampling_rate=0.02, discrete=plan)
    assert ev.noise_multiplier == pytest.approx(plan.effective_noise_multiplier)
    assert ev.noise_multiplier == pytest.approx(1.5 * 2048 / (2048 + 100))
    # adaptive clipping: the accounted z is the configured total, not the update's larger z_Delta
    adapt = PrivacyConfig(mode="local", noise_multiplier=1.0, adaptive=AdaptiveClipping(clip_count_stddev=3.0))
    assert round_event_for(adapt, sampling_rate=0.1).noise_multiplier == 1.0
    assert local_report_epsilon(5.0, 1e-5) < local_report_epsilon(1.0, 1e-5)


def test_adaptive_split_equals_composing_both_gaussian_events():
    from fedge.agent.core.privacy.adaptive import update_noise_multiplier

    z, sb, q = 1.0, 4.0, 0.05
    zd = update_noise_multiplier(z, sb)
    both = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(zd), dp_accounting.GaussianDpEvent(2 * sb)])
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, both), 100)
    assert epsilon(z, q, 100, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_calibrated_noise_multiplier_meets_target_tightly():
    from fedge.coordinator.rounds.accounting import calibrate_noise_multiplier

    z = calibrate_noise_multiplier(2.0, 0.01, 500, 1e-6)
    assert epsilon(z, 0.01, 500, 1e-6) <= 2.0
    assert epsilon(z - 0.01, 0.01, 500, 1e-6) > 2.0

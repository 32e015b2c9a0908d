"""Distinguishing attacks on one device's real encode path: the printed epsilon is never too small.

Each test runs ``encode_update`` (clip, noise, quantize; in distributed mode the discrete
Gaussian share in the ring) on one of two neighbouring updates many times, decodes what the
coordinator would see, and scores the projection on the update direction in units of the noise
std. A threshold fixed before sampling turns the counts into a Clopper-Pearson lower bound on
epsilon at 95% confidence (``fedge.coordinator.rounds.audit_stats``). The bound must stay at or below
the epsilon fedge prints for the relation it names; where fedge once printed too small a figure,
the same bound is shown to exceed that old figure, so the attack is strong enough to catch it.
Every device is sampled (q = 1): amplification by sampling is the accountant's to add.
"""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedge.agent.core.update import decode_aggregate, encode_update
from fedge.coordinator.rounds.accounting import RoundEvent, epsilon, epsilon_of_events, local_report_epsilon
from fedge.coordinator.rounds.audit_stats import threshold_test
from fedge.coordinator.rounds.plan import make_plan
from fedge.coordinator.service.config import TrainingConfig

DELTA = 1e-5
TRIALS = 50_000  # per neighbour
DIM = 4


def _scores(update: np.ndarray, mode: str, z: float, seed: int) -> np.ndarray:
    cfg = TrainingConfig(dp_mode=mode, noise_multiplier=z, clip_norm=1.0, goal=1, min_clients=1, delta=DELTA)
    plan = make_plan(cfg, "v", 1, 1)
    rng = np.random.default_rng(seed)
    out = np.empty(TRIALS)
    for i in range(TRIALS):
        enc = encode_update(update, 10, plan, rng)
        agg = decode_aggregate(enc.vector.astype(np.uint64), plan, DIM)
        out[i] = float(agg.mean_delta[0]) * plan.dp_denominator / (z * plan.privacy.clip_norm)
    return out


def _u(sign: float = 1.0) -> np.ndarray:
    u = np.zeros(DIM)
    u[0] = 3.0 * sign  # clipped to C = 1: the worst case sits on the clip sphere
    return u


def _old_fixed_epsilon(z: float) -> float:
    """What fedge printed before: Gaussian(z) under replace-one, as if the sum moved by C."""
    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(1, 1, dp_accounting.GaussianDpEvent(z)))
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize("mode", ["distributed", "local"])
def test_replace_one_attack_stays_below_fixed_sampling_epsilon(mode):
    # +u against -u: the sum moves by 2C. Means +-0.5 noise stds at z = 2; threshold 2.5 stds.
    z = 2.0
    result = threshold_test(_scores(_u(+1), mode, z, 1), _scores(_u(-1), mode, z, 2), 2.5, DELTA)
    printed = epsilon(z, 1.0, 1, DELTA, sampling="fixed", population=1)
    assert result.epsilon_lower_bound <= printed, (result, printed)
    # the attack is strong enough to catch the old figure (2.17 at z = 2): this test fails before the fix
    assert result.epsilon_lower_bound > _old_fixed_epsilon(z), (result, _old_fixed_epsilon(z))
    assert RoundEvent.fixed(z, 1, 1).relation == "replace-one"


def test_add_remove_attack_stays_below_poisson_epsilon():
    # u against a device whose update is 0 (its noise share still in the sum): the sum moves by C.
    z = 1.0
    result = threshold_test(_scores(_u(), "distributed", z, 3), _scores(np.zeros(DIM), "distributed", z, 4), 3.5, DELTA)
    printed = epsilon(z, 1.0, 1, DELTA, sampling="poisson")
    assert RoundEvent(z, 1.0, "poisson").relation == "add-or-remove-one"
    assert 2.0 < result.epsilon_lower_bound <= printed, (result, printed)


def test_local_report_ledger_figure_is_add_or_remove_only():
    # the device ledger's figure (one Gaussian report, add-or-remove-one) bounds u against 0 ...
    z = 1.0
    zero = _scores(np.zeros(DIM), "local", z, 5)
    add_remove = threshold_test(_scores(_u(), "local", z, 6), zero, 3.5, DELTA)
    assert 2.0 < add_remove.epsilon_lower_bound <= local_report_epsilon(z, DELTA)
    # ... while +u against -u is a replace-one pair, bounded only by the replace-one figure
    replace = threshold_test(_scores(_u(+1), "local", z, 7), _scores(_u(-1), "local", z, 8), 3.0, DELTA)
    assert replace.epsilon_lower_bound <= epsilon_of_events([RoundEvent.fixed(z, 1, 1)], DELTA)


def test_fixed_sampling_epsilon_is_never_below_a_realisable_replace_one_pair():
    # over the grid, the fixed-size figure is at least the unamplified replace-one Gaussian
    # of the sampled rounds (a lower bound on the truth when every round samples the device: q = 1)
    for z in (0.5, 1.0, 2.0):
        for rounds in (1, 10):
            at_q1 = epsilon(z, 1.0, rounds, DELTA, sampling="fixed", population=100)
            pair = epsilon_of_events([RoundEvent(z / 2, 1.0, "none")] * rounds, DELTA, accountant="pld")
            assert at_q1 >= pair * 0.99, (z, rounds, at_q1, pair)

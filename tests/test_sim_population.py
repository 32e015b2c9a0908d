"""Device populations: profile mix proportions, and per-round availability and stage dropout rates."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.profiles import DropoutRates, SimulationTraits
from fedge.simulations.population import (
    NO_DROP,
    STAGES,
    draw_round_behaviour,
    load_traits,
    make_population,
    parse_profile_mix,
)

FLAKY = SimulationTraits(
    availability=0.6,
    dropout=DropoutRates(advertise_keys=0.1, share_keys=0.2, masked_input=0.3, consistency_check=0.0, unmask=0.5),
)
STEADY = SimulationTraits(availability=1.0)


def test_shipped_profiles_load_and_mix_in_exact_proportions() -> None:
    mix = parse_profile_mix("pi4=0.5,phone=0.3,car=0.2")
    pop = make_population(100_000, mix, np.random.default_rng(0))
    assert pop.names == ("pi4", "phone", "car")
    assert pop.assignment.dtype == np.uint8 and pop.assignment.nbytes == 100_000
    np.testing.assert_array_equal(np.bincount(pop.assignment), [50_000, 30_000, 20_000])
    assert pop.traits[2] == load_traits("car")
    # Shuffled: the first thousand clients are not all one profile, yet near the mix.
    head = np.bincount(pop.assignment[:1000], minlength=3) / 1000
    np.testing.assert_allclose(head, [0.5, 0.3, 0.2], atol=0.06)
    again = make_population(100_000, mix, np.random.default_rng(0))
    np.testing.assert_array_equal(pop.assignment, again.assignment)


def test_odd_sizes_round_to_the_nearest_counts() -> None:
    pop = make_population(
        7,
        (("a", 1 / 3), ("b", 1 / 3), ("c", 1 / 3)),
        np.random.default_rng(0),
        traits={"a": STEADY, "b": STEADY, "c": STEADY},
    )
    assert sorted(np.bincount(pop.assignment).tolist()) == [2, 2, 3]


def test_round_behaviour_rates_match_the_profile() -> None:
    n = 200_000
    pop = make_population(
        n, (("flaky", 0.5), ("steady", 0.5)), np.random.default_rng(0), traits={"flaky": FLAKY, "steady": STEADY}
    )
    b = draw_round_behaviour(pop, np.arange(n), 1, np.random.default_rng(1))
    flaky = pop.assignment == 0
    # Binomial standard errors at these counts are below 0.003; tolerance 0.01.
    assert abs(b.available[flaky].mean() - 0.6) < 0.01
    assert b.available[~flaky].all() and (b.drop_stage[~flaky] == NO_DROP).all()
    assert (b.drop_stage[~b.available] == NO_DROP).all()
    stages = b.drop_stage[flaky & b.available]
    survivors = len(stages)
    for i, s in enumerate(STAGES):
        dropped_here = (stages == i).sum()
        rate = dropped_here / survivors if survivors else 0.0
        assert abs(rate - getattr(FLAKY.dropout, s)) < 0.01, s
        survivors -= dropped_here
    counts = b.dropped_per_stage()
    assert counts["unavailable"] == int((~b.available).sum())
    assert sum(counts.values()) == n - int(b.completed().sum())
    # Dropping after the masked input is sent (consistency_check, unmask) still counts in the sum.
    late = b.available & (b.drop_stage >= STAGES.index("consistency_check"))
    assert late.any() and b.submitted_input()[late].all()
    early = b.available & (b.drop_stage >= 0) & (b.drop_stage <= STAGES.index("masked_input"))
    assert not b.submitted_input()[early].any()


def test_round_behaviour_is_reproducible_and_costs_the_cohort() -> None:
    pop = make_population(100_000, (("flaky", 1.0),), np.random.default_rng(0), traits={"flaky": FLAKY})
    cohort = np.arange(5, 100_000, 97)
    a = draw_round_behaviour(pop, cohort, 3, np.random.default_rng([0, 3]))
    b = draw_round_behaviour(pop, cohort, 3, np.random.default_rng([0, 3]))
    np.testing.assert_array_equal(a.drop_stage, b.drop_stage)
    np.testing.assert_array_equal(a.available, b.available)
    assert len(a.available) == len(cohort)


def test_no_mix_is_an_ideal_fleet() -> None:
    pop = make_population(10, (), np.random.default_rng(0))
    b = draw_round_behaviour(pop, np.arange(10), 1, np.random.default_rng(0))
    assert b.completed().all()


@pytest.mark.parametrize(
    "spec,message",
    [
        ("pi4=0.5,phone=0.3", "sum to 0.8"),
        ("pi4=0.5,pi4=0.5", "named twice"),
        ("pi4", "NAME=SHARE"),
        ("pi4=-1,phone=2", "NAME=SHARE"),
        ("pi4=x", "NAME=SHARE"),
    ],
)
def test_bad_mixes_are_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_profile_mix(spec)


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no profile 'tractor'.*car, phone, pi4"):
        make_population(10, (("tractor", 1.0),), np.random.default_rng(0))

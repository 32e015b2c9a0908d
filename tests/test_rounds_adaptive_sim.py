"""Adaptive clipping in the simulator's protocol engine: SecAgg+ and distributed DP rounds whose C
follows the previous round's noisy clip-bit sum, with the campaign's epsilon for the total z."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest

from fedge.simulations import runner
from fedge.simulations.population import DEFAULT_PROFILE_DIR, draw_round_behaviour, make_population
from fedge.simulations.protocol import ProtocolEngine, ProtocolSettings
from fedge.simulations.world import BEHAVIOUR, COHORT, POPULATION, TRAIN, build_world, recipe, stream
from tests.sim_protocol_fixtures import small_config


def test_simulated_rounds_carry_the_adaptive_clip_norm_and_account_the_total_z() -> None:
    # C starts at 50, far above any logreg delta on digits: every bit says "fit", so C shrinks
    config = small_config(profiles=(), clip=50.0, target_quantile=0.5, noise_multiplier=0.5, rounds=3)
    world = build_world(
        recipe(
            population=config.population,
            dataset=config.dataset,
            partition=config.partition,
            model=config.model,
            seed=config.seed,
        )
    )
    population = make_population(
        config.population, config.profiles, stream(config.seed, POPULATION), profile_dir=DEFAULT_PROFILE_DIR
    )
    cfg, dropout = runner.training_config(config, population)
    assert cfg.adaptive is not None
    engine = ProtocolEngine(world.trainer, ProtocolSettings(cfg, config.population, dropout_rate=dropout))
    weights, seen = world.trainer.initial_weights(), []
    for r in (1, 2, 3):
        cohort = np.sort(stream(config.seed, COHORT, r).choice(config.population, config.per_round, replace=False))
        behaviour = draw_round_behaviour(population, cohort, r, stream(config.seed, BEHAVIOUR, r))
        work = engine(r, weights, behaviour, world.federation, stream(config.seed, TRAIN, r))
        assert work.status == "completed", work.reason
        weights = work.weights
        seen.append((engine.last["clip_norm"], engine.last["next_clip_norm"]))
    assert seen[0][0] == 50.0
    for (c, nxt), (c2, _) in zip(seen, seen[1:]):
        assert c2 == nxt and nxt < c  # carried over, and shrinking toward the median norm
    assert engine.clip_norm == seen[-1][1]
    # epsilon: three rounds of the total z = 0.5 (not z_Delta), sampled 40 of 400 without replacement,
    # replace-one: the sum moves by 2C, so the Gaussian carries z / 2
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(
            config.population, config.per_round, dp_accounting.GaussianDpEvent(0.25)
        ),
        3,
    )
    assert work.epsilon == pytest.approx(acc.get_epsilon(config.delta), rel=0.01)

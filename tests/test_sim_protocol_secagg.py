"""With SecAgg+ on, the simulator's aggregate is the plain aggregate; both are FedAvg up to quantization."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.coordinator.rounds.plan import make_plan
from fedge.simulations import runner
from fedge.simulations.hosts import device_seeds
from fedge.simulations.population import draw_round_behaviour, make_population
from fedge.simulations.protocol import ProtocolEngine, ProtocolSettings
from fedge.simulations.world import BEHAVIOUR, COHORT, POPULATION, TRAIN, build_world, recipe, stream
from tests.sim_protocol_fixtures import FLAKY, small_config, write_profile


def test_secagg_aggregate_equals_plain_aggregate_and_fedavg_up_to_quantization(tmp_path) -> None:
    write_profile(tmp_path, "flaky", FLAKY)
    config = small_config(per_round=60, dp="off", noise_multiplier=0.0)
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
        config.population, config.profiles, stream(config.seed, POPULATION), profile_dir=tmp_path
    )
    cfg, dropout = runner.training_config(config, population)
    weights = world.trainer.initial_weights()
    r = 1
    cohort = np.sort(stream(config.seed, COHORT, r).choice(config.population, config.per_round, replace=False))
    behaviour = draw_round_behaviour(population, cohort, r, stream(config.seed, BEHAVIOUR, r))
    assert behaviour.dropped_per_stage()["share_keys"] + behaviour.dropped_per_stage()["masked_input"] > 0

    def one_round(secagg: bool) -> tuple[np.ndarray, ProtocolEngine]:
        c = dataclasses.replace(cfg, secagg=secagg)
        engine = ProtocolEngine(world.trainer, ProtocolSettings(c, config.population, dropout_rate=dropout))
        work = engine(r, weights, behaviour, world.federation, stream(config.seed, TRAIN, r))
        assert work.status == "completed", work.reason
        return work.weights, engine

    secure, se = one_round(True)
    plain, pe = one_round(False)
    assert se.last["secagg"] is not None and pe.last["secagg"] is None
    assert se.last["participants"] == pe.last["participants"] == int(behaviour.submitted_input().sum())
    # the same quantized vectors, summed exactly: masks cancel to the bit
    np.testing.assert_array_equal(secure, plain)
    assert se.last["bytes_up"] > 2 * pe.last["bytes_up"]  # keys, shares, signatures on top of the vectors

    # FedAvg of the same clients' float deltas, recomputed here with the same per-device seeds
    root = int(stream(config.seed, TRAIN, r).integers(2**63))
    ids = behaviour.client_ids[behaviour.available]
    sent = behaviour.submitted_input()[behaviour.available]
    total, weight = np.zeros(weights.size), 0.0
    for i, (k, ok) in enumerate(zip(ids.tolist(), sent.tolist())):
        if not ok:
            continue
        x, y = world.federation.client(k)
        res = world.trainer.train(
            weights,
            x,
            y,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            rng=np.random.default_rng(device_seeds(root, i)[0]),
        )
        w = min(max(res.num_examples, 1), cfg.example_cap) / cfg.example_cap
        total += w * res.delta
        weight += w
    fedavg = weights + total / weight
    plan = make_plan(cfg, "r0", len(ids), config.population)
    n = int(sent.sum())
    # stochastic rounding: each of n clients is off by < 1/scale per coordinate (and the weight too)
    tol = 2 * n / plan.quantization.scale / weight
    err = np.abs(secure - fedavg).max()
    assert err <= tol, (err, tol)
    assert err > 0  # quantization is really there (a test that cannot fail is a defect)
    assert np.abs(secure - weights).max() > 100 * tol  # and the round really moved the model


@pytest.mark.parametrize("dp", ["off", "distributed"])
def test_secagg_rounds_on_the_runner_keep_accuracy_near_plain_rounds(tmp_path, dp: str) -> None:
    write_profile(tmp_path, "flaky", FLAKY)
    common = dict(rounds=3, dp=dp, noise_multiplier=0.5 if dp != "off" else 0.0)
    secure = runner.run(small_config(secagg=True, **common), profile_dir=tmp_path, show_progress=False)
    if dp == "off":
        plain = runner.run(small_config(secagg=False, **common), profile_dir=tmp_path, show_progress=False)
        # identical sums, identical models
        assert [r.accuracy for r in secure.rounds] == [r.accuracy for r in plain.rounds]
    else:
        assert secure.rounds[-1].epsilon > secure.rounds[0].epsilon > 0
    assert secure.rounds[-1].accuracy > 0.3  # 10 classes: well above chance after 3 rounds

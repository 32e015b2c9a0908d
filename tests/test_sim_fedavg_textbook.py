"""fedge's FedAvg is the textbook one: from the same initial weights, partition, batch order and
hyper-parameters, a plain numpy FedAvg (the numpy reference model, no protocol) ends at the same
weights to float tolerance, and from the zoo's initialisation it learns within a few rounds.

Full-batch local steps (batch size >= every client's data) make the batch order the same on both
sides whatever the device's shuffle; weights are FedAvg's capped example counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.training import reference
from fedge.simulations.config import SimConfig
from fedge.simulations.population import make_population
from fedge.simulations.runner import protocol_engine
from fedge.simulations.world import build_world, recipe, stream

ROUNDS, EPOCHS, LR, CLIENTS = 3, 2, 0.1, 30


def _numpy_fedavg(spec, weights: np.ndarray, clients: list[tuple[np.ndarray, np.ndarray]], cap: int) -> np.ndarray:
    total = np.zeros_like(weights, dtype=np.float64)
    mass = 0.0
    for x, y in clients:
        w = spec.split(weights.copy())
        for _ in range(EPOCHS):
            _, w = reference.sgd_step(spec.name, w, x.reshape(len(x), -1), y, LR)
        weight = min(len(x), cap) / cap
        total += weight * (spec.flatten(w).astype(np.float64) - weights)
        mass += weight
    return (weights + total / mass).astype(np.float32)


@pytest.mark.parametrize("secagg", [False, True])
def test_fedge_fedavg_equals_a_plain_numpy_fedavg(secagg):
    config = SimConfig(
        population=CLIENTS,
        per_round=CLIENTS,
        rounds=ROUNDS,
        model="logreg",
        dataset="digits",
        partition="iid",
        secagg=secagg,
        dp="off",
        local_epochs=EPOCHS,
        batch_size=10_000,
        learning_rate=LR,
        seed=4,
        workers=0,
    )
    world = build_world(recipe(population=CLIENTS, dataset="digits", partition="iid", model="logreg", seed=4))
    population = make_population(CLIENTS, config.profiles, stream(4, 0))
    engine = protocol_engine(config, population, world.trainer)
    from fedge.simulations.population import draw_round_behaviour

    spec = world.trainer.spec
    ours = theirs = world.trainer.initial_weights()
    clients = [world.federation.client(k) for k in range(CLIENTS)]
    cap = engine.settings.training.example_cap
    try:
        for r in range(1, ROUNDS + 1):
            behaviour = draw_round_behaviour(population, np.arange(CLIENTS), r, stream(4, 1, r))
            assert behaviour.available.all()
            work = engine(r, ours, behaviour, world.federation, stream(4, 2, r))
            assert work.status == "completed", work.reason
            ours = work.weights
            theirs = _numpy_fedavg(spec, theirs, clients, cap)
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)
    finally:
        engine.close()
    x_test, y_test = world.federation.test_set()
    logits = reference.logits("logreg", spec.split(ours), x_test.reshape(len(x_test), -1))
    accuracy = float((logits.argmax(1) == y_test).mean())
    assert accuracy > 0.6, accuracy  # the zoo starts the head at zero: FedAvg learns visibly in 3 rounds


def test_the_zoo_starts_linear_heads_at_zero_and_records_how():
    from fedge.agent.training.models import load_spec

    spec = load_spec("mlp")
    world = build_world(recipe(population=2, dataset="digits", partition="iid", model="mlp", seed=0))
    w = spec.split(world.trainer.initial_weights())
    assert not w["w2"].any() and not w["b2"].any() and not w["b1"].any()
    fan_in = spec.weight_shapes[0][0]
    assert 0 < np.abs(w["w1"]).max() <= np.sqrt(6.0 / fan_in)
    import json

    meta = json.loads(spec.path.with_suffix(".json").read_text())
    assert [x["init"] for x in meta["weights"]] == ["he_uniform", "zeros", "zeros", "zeros"]

"""Server optimizers in the simulator: an adaptive rule changes the model, deterministically, and
the summary records which ran (FedAvg at rate 1 is the engine's own float32 update: see
tests/test_rounds_server_opt.py)."""

from __future__ import annotations

import json

import numpy as np

from fedge.coordinator.rounds.server_opt import ServerOptConfig, ServerOptKind
from fedge.simulations.config import SimConfig
from fedge.simulations.population import draw_round_behaviour, make_population
from fedge.simulations.runner import protocol_engine, run
from fedge.simulations.world import build_world, recipe, stream

BASE = dict(
    population=20,
    per_round=20,
    rounds=2,
    model="logreg",
    dataset="digits",
    partition="iid",
    learning_rate=0.1,
    seed=5,
    workers=0,
)


def _weights(opt: ServerOptConfig) -> list[np.ndarray]:
    config = SimConfig(**BASE, server_opt=opt)
    world = build_world(recipe(population=20, dataset="digits", partition="iid", model="logreg", seed=5))
    population = make_population(20, (), stream(5, 0))
    engine = protocol_engine(config, population, world.trainer)
    w, seen = world.trainer.initial_weights(), []
    try:
        for r in (1, 2):
            work = engine(
                r,
                w,
                draw_round_behaviour(population, np.arange(20), r, stream(5, 1, r)),
                world.federation,
                stream(5, 2, r),
            )
            assert work.status == "completed"
            w = work.weights
            seen.append(w)
    finally:
        engine.close()
    return seen


def test_fedavg_is_the_engines_update_and_fedadam_differs_deterministically():
    plain = _weights(ServerOptConfig())
    adam = _weights(ServerOptConfig(ServerOptKind.FEDADAM, learning_rate=0.01))
    again = _weights(ServerOptConfig(ServerOptKind.FEDADAM, learning_rate=0.01))
    assert all(np.array_equal(a, b) for a, b in zip(adam, again))
    assert not np.allclose(plain[-1], adam[-1])
    # FedAdam's first step: m = 0.1 d, v ~ 0.01 d^2, so no coordinate moves by more than eta = 0.01,
    # and the coordinates with a large mean delta move by nearly eta (FedAvg would move them by d)
    first = adam[0] - _initial()
    assert np.abs(first).max() <= 0.01 + 1e-6
    assert np.abs(first).max() > 0.005  # |d| of 0.01 already moves by 0.41 eta (tau = 1e-3)


def _initial() -> np.ndarray:
    world = build_world(recipe(population=20, dataset="digits", partition="iid", model="logreg", seed=5))
    return world.trainer.initial_weights()


def test_summary_records_the_server_optimizer(tmp_path):
    run(
        SimConfig(
            **{**BASE, "rounds": 1},
            server_opt=ServerOptConfig(ServerOptKind.FEDYOGI, learning_rate=0.05),
            out=str(tmp_path),
        ),
        show_progress=False,
    )
    cfg = json.loads((tmp_path / "summary.json").read_text())["config"]
    assert cfg["server_opt"]["kind"] == "fedyogi" and cfg["server_opt"]["learning_rate"] == 0.05

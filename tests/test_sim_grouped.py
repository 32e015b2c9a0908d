"""The simulator runs SecAgg+ in groups with the coordinator's code: same sum as one group, to the bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.simulations import runner
from fedge.simulations.config import SimConfig
from fedge.simulations.population import draw_round_behaviour, make_population
from fedge.simulations.protocol import ProtocolEngine, ProtocolSettings
from fedge.simulations.world import BEHAVIOUR, COHORT, POPULATION, TRAIN, build_world, recipe, stream
from tests.sim_protocol_fixtures import FLAKY, numbers, small_config, write_profile


@pytest.mark.parametrize("where", ["thread", "process", "ray"])
def test_grouped_round_equals_one_group_to_the_bit_with_dropouts(tmp_path, where) -> None:
    if where == "ray":
        pytest.importorskip("ray")
    write_profile(tmp_path, "flaky", FLAKY)
    config = small_config(per_round=80, dp="off", noise_multiplier=0.0)
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
    cfg = dataclasses.replace(cfg, secagg=True)
    weights = world.trainer.initial_weights()
    r = 1
    cohort = np.sort(stream(config.seed, COHORT, r).choice(config.population, config.per_round, replace=False))
    behaviour = draw_round_behaviour(population, cohort, r, stream(config.seed, BEHAVIOUR, r))

    def one_round(group_size: int) -> tuple[np.ndarray, ProtocolEngine]:
        settings = ProtocolSettings(
            cfg, config.population, dropout_rate=dropout, group_size=group_size, group_engine=where, group_workers=2
        )
        engine = ProtocolEngine(world.trainer, settings)
        try:
            work = engine(r, weights, behaviour, world.federation, stream(config.seed, TRAIN, r))
        finally:
            engine.close()
        assert work.status == "completed", work.reason
        return work.weights, engine

    single, se = one_round(0)
    grouped, ge = one_round(15)
    assert se.last["groups"] == 1 and ge.last["groups"] >= 2 and ge.last["refused_groups"] == {}
    lost = ge.last["dropped"].get("share_keys", 0) + ge.last["dropped"].get("masked_input", 0)
    assert lost > 0  # devices dropped before their masked input, so some group ran with dropouts
    assert ge.last["participants"] == se.last["participants"] == int(behaviour.submitted_input().sum())
    # the same quantized vectors, each group's masks cancelling, the group sums added exactly
    np.testing.assert_array_equal(grouped, single)


def test_group_size_needs_secagg_and_sync_rounds() -> None:
    base = dict(population=100, per_round=50, rounds=1, model="logreg", dataset="digits")
    with pytest.raises(ConfigError, match="--group-size: needs --secagg"):
        SimConfig(**base, group_size=10)
    with pytest.raises(ConfigError, match="--group-size: expected 0 or >= 2"):
        SimConfig(**base, secagg=True, group_size=1)
    with pytest.raises(ConfigError, match="--group-size: not available with --mode buffered"):
        SimConfig(**base, secagg=True, group_size=10, mode="buffered", buffer=5)
    with pytest.raises(ConfigError, match="--group-engine: expected one of thread, process, ray, got 'gpu'"):
        SimConfig(**base, secagg=True, group_size=10, group_engine="gpu")
    assert SimConfig(**base, secagg=True, group_size=10).groups_on == "process"
    assert SimConfig(**base, secagg=True, group_size=10, engine="ray").groups_on == "ray"
    assert SimConfig(**base, secagg=True, group_size=10, engine="ray", group_engine="thread").groups_on == "thread"


def test_cohort_smaller_than_a_group_abandons_the_round_with_the_reason(tmp_path) -> None:
    config = SimConfig(
        population=40,
        per_round=20,
        rounds=1,
        model="logreg",
        dataset="digits",
        secagg=True,
        group_size=30,
        workers=0,
        out=str(tmp_path / "out"),
    )
    summary = runner.run(config, show_progress=False)
    last = summary.rounds[-1]
    assert last.status == "abandoned"
    assert "group of 20 devices is below the minimum group size 30" in last.reason


def test_ray_engine_runs_device_hosts_and_groups_on_actors_with_the_same_numbers(tmp_path) -> None:
    """``--engine ray``: device hosts and the groups' SecAgg+ servers on Ray actors (a local Ray), every
    number the same as worker processes give for the same seed."""
    pytest.importorskip("ray")
    write_profile(tmp_path, "flaky", FLAKY)
    runs = {}
    for engine in ("local", "ray"):
        config = small_config(per_round=60, group_size=20, workers=2, engine=engine, out=str(tmp_path / engine))
        runs[engine] = runner.run(config, show_progress=False, profile_dir=tmp_path)
    assert runs["local"].config["group_engine"] == "process" and runs["ray"].config["group_engine"] == "ray"
    assert all(r.status == "completed" for r in runs["ray"].rounds)
    assert numbers(runs["ray"]) == numbers(runs["local"])

"""Simulated runs on the real protocol: reproducible, independent of the device hosts, ε and dropouts recorded."""

from __future__ import annotations

import json

import pytest

from fedge.simulations import runner
from tests.sim_protocol_fixtures import FLAKY, numbers, small_config, write_profile

ROUND_STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")


@pytest.fixture
def profiles(tmp_path):
    write_profile(tmp_path / "profiles", "flaky", FLAKY)
    return tmp_path / "profiles"


def test_a_seeded_run_reproduces_exactly_and_records_epsilon_and_dropouts(profiles, tmp_path, capsys) -> None:
    config = small_config(rounds=3, out=str(tmp_path / "a"))
    a = runner.run(config, profile_dir=profiles, show_progress=True)
    progress = capsys.readouterr().err
    b = runner.run(small_config(rounds=3), profile_dir=profiles, show_progress=False)
    c = runner.run(small_config(rounds=3, seed=4), profile_dir=profiles, show_progress=False)

    assert numbers(a) == numbers(b)  # same seed, same numbers (accuracy, ε, bytes, dropouts...)
    assert numbers(a) != numbers(c)
    assert "fedge protocol" in a.extra["engine"]

    eps = [r.epsilon for r in a.rounds]
    assert all(r.status == "completed" for r in a.rounds), [r.reason for r in a.rounds]
    assert all(e is not None and e > 0 for e in eps) and eps == sorted(eps) and eps[0] < eps[-1]
    for r in a.rounds:  # ε per round in the progress output
        assert f"round {r.round}/3: accuracy {r.accuracy:.4f}, ε {r.epsilon:.4g} (δ=1e-05, replace-one)" in progress

    seen_stages = set()
    for r in a.rounds:
        d = r.dropped_per_stage
        assert d["unavailable"] >= 0 and set(d) <= {"unavailable", *ROUND_STAGES}
        seen_stages |= {s for s, n in d.items() if n}
        # the coordinator's count: everyone sampled either is in the sum or dropped somewhere
        assert r.participants + r.dropped == 40
        assert sum(d.values()) >= r.dropped  # drops after the masked input still count in the sum
        assert r.bytes_up > r.participants * 650 * 4  # masked vectors plus keys, shares and signatures
        assert r.bytes_down > 0 and r.examples > 0
        assert {"advertise_keys", "share_keys", "masked_input", "unmask"} <= set(r.seconds_per_stage)
    assert {"unavailable", "advertise_keys", "masked_input"} <= seen_stages

    doc = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [r["epsilon"] for r in doc["rounds"]] == eps
    assert doc["rounds"][0]["dropped_per_stage"] == a.rounds[0].dropped_per_stage
    assert doc["rounds"][0]["status"] == "completed"


def test_one_host_or_two_worker_processes_give_identical_results(profiles) -> None:
    local = runner.run(small_config(workers=0), profile_dir=profiles, show_progress=False)
    one = runner.run(small_config(workers=1), profile_dir=profiles, show_progress=False)
    two = runner.run(small_config(workers=2), profile_dir=profiles, show_progress=False)
    assert (local.extra["hosts"], one.extra["hosts"], two.extra["hosts"]) == (1, 1, 2)
    assert numbers(local) == numbers(one) == numbers(two)


def test_without_secure_aggregation_and_dp_the_run_is_plain_fedavg_with_no_epsilon(profiles) -> None:
    s = runner.run(
        small_config(secagg=False, dp="off", noise_multiplier=0.0, rounds=3), profile_dir=profiles, show_progress=False
    )
    assert all(r.epsilon is None for r in s.rounds)
    assert all(r.status == "completed" for r in s.rounds)
    assert all(set(r.dropped_per_stage) <= {"unavailable", "report"} for r in s.rounds)
    assert s.rounds[-1].accuracy > 0.3  # 10 classes: clearly above chance after 3 rounds


#: Always there; each device drops at share_keys with 3%: a cohort of 40 loses nobody about 30% of the time.
SHAKY = (
    FLAKY.replace("availability = 0.9", "availability = 1.0")
    .replace("= 0.04", "= 0.0")
    .replace("share_keys = 0.0", "share_keys = 0.03")
)


def test_a_round_that_loses_too_many_devices_is_abandoned_with_a_reason_and_the_run_goes_on(tmp_path) -> None:
    import dataclasses

    from fedge.simulations.population import make_population
    from fedge.simulations.protocol import ProtocolEngine, ProtocolSettings
    from fedge.simulations.world import POPULATION, build_world, recipe, stream

    write_profile(tmp_path, "shaky", SHAKY)
    config = small_config(rounds=5, profiles=(("shaky", 1.0),), out=str(tmp_path / "out"))
    population = make_population(
        config.population, config.profiles, stream(config.seed, POPULATION), profile_dir=tmp_path
    )
    cfg, dropout = runner.training_config(config, population)
    assert cfg.min_clients < config.per_round  # the default tolerates the expected drops
    # a coordinator that needs every sampled device: any drop abandons the round
    strict = dataclasses.replace(cfg, min_clients=config.per_round)
    world = build_world(
        recipe(
            population=config.population,
            dataset=config.dataset,
            partition=config.partition,
            model=config.model,
            seed=config.seed,
        )
    )
    engine = ProtocolEngine(world.trainer, ProtocolSettings(strict, config.population, dropout_rate=dropout))
    s = runner.run(config, engine=engine, profile_dir=tmp_path, show_progress=False)

    assert len(s.rounds) == 5
    status = [r.status for r in s.rounds]
    assert "abandoned" in status and "completed" in status, status  # fixed seed: both happen
    for prev, r in zip((None, *s.rounds), s.rounds):
        if r.status != "abandoned":
            assert r.dropped_per_stage.get("share_keys", 0) == 0
            continue
        assert "share_keys" in r.reason and "minimum 40" in r.reason, r.reason
        assert r.participants == 0 and r.dropped == 40 and r.dropped_per_stage["share_keys"] > 0
        if prev is not None:  # the model is unchanged, and no privacy was spent
            assert r.accuracy == prev.accuracy and r.loss == prev.loss and r.epsilon == prev.epsilon
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["status"] for r in doc["rounds"]] == status


def test_synthetic_trains_the_zoo_model_whose_input_width_fits() -> None:
    from fedge.agent.training.trainer import Trainer
    from fedge.simulations.world import build_world, recipe

    world = build_world(recipe(population=50, dataset="synthetic:1,1", partition="natural", model="mlp", seed=0))
    assert isinstance(world.trainer, Trainer) and world.trainer.spec.input_shape == (60,)
    assert "zoo TFLite mlp60" in world.model_note

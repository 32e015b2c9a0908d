"""Buffered mode and the simulated clock, on the real protocol (fixed seeds)."""

from __future__ import annotations

import dataclasses

import dp_accounting
import numpy as np
import pytest

from fedge.agent.core.update import client_weight
from fedge.coordinator.rounds.buffered import group_event
from fedge.coordinator.rounds.plan import make_plan
from fedge.coordinator.rounds.server_opt import ServerOptConfig
from fedge.simulations import runner
from fedge.simulations.config import SimConfig
from fedge.simulations.hosts import device_seeds
from fedge.simulations.population import NO_DROP, RoundBehaviour, make_population
from fedge.simulations.protocol import GroupSpec, ProtocolEngine, ProtocolSettings
from fedge.simulations.world import build_world, recipe
from tests.sim_protocol_fixtures import FLAKY, numbers, write_profile

MIX = (("pi4", 0.5), ("phone", 0.3), ("car", 0.2))


def buffered_config(**overrides) -> SimConfig:
    base = dict(
        population=200,
        per_round=20,
        rounds=6,
        model="logreg",
        dataset="digits",
        partition="dirichlet:0.5",
        secagg=True,
        profiles=MIX,
        local_epochs=2,
        learning_rate=0.1,
        seed=2,
        workers=0,
        mode="buffered",
        buffer=4,
        concurrency=12,
    )
    base.update(overrides)
    return SimConfig(**base)


def _group_run(secagg: bool, cfg: SimConfig, world, clients, bases, base_of, weights, target, seed):
    population = make_population(cfg.population, (), np.random.default_rng(0))
    training, _ = runner.group_config(dataclasses.replace(cfg, secagg=secagg), population)
    engine = ProtocolEngine(world.trainer, ProtocolSettings(training, cfg.population, server_opt=cfg.server_opt))
    n = len(clients)
    behaviour = RoundBehaviour(clients, np.ones(n, bool), np.full(n, NO_DROP, np.int8), np.zeros(n), np.zeros(n))
    work = engine(
        1, target, behaviour, world.federation, np.random.default_rng(seed), group=GroupSpec(bases, base_of, weights)
    )
    return work, training


def test_a_groups_secagg_sum_is_the_plain_staleness_weighted_sum():
    cfg = buffered_config(server_opt=ServerOptConfig(learning_rate=0.5))
    world = build_world(
        recipe(population=cfg.population, dataset=cfg.dataset, partition=cfg.partition, model=cfg.model, seed=cfg.seed)
    )
    w0 = world.trainer.initial_weights()
    w1 = (w0 + np.random.default_rng(9).normal(0, 0.05, w0.size)).astype(np.float32)
    w2 = (w1 + np.random.default_rng(10).normal(0, 0.05, w0.size)).astype(np.float32)  # the target version
    clients = np.array([3, 17, 40, 111])
    base_of = np.array([0, 1, 0, 1])  # versions 0 and 1: staleness 2 and 1 against target 2
    weights = np.array([3**-0.5, 2**-0.5, 3**-0.5, 2**-0.5])
    secure, training = _group_run(True, cfg, world, clients, (w0, w1), base_of, weights, w2, seed=5)
    plain, _ = _group_run(False, cfg, world, clients, (w0, w1), base_of, weights, w2, seed=5)
    assert secure.status == plain.status == "completed" and secure.participants == 4
    # the same quantized vectors, summed through SecAgg+ masks or in the clear: the same integers
    np.testing.assert_array_equal(secure.weights, plain.weights)

    # and the plain weighted sum written out: each device trains from its own version
    root = int(np.random.default_rng(5).integers(2**63))
    plan = make_plan(training, "v", 4, 4)
    num, den = np.zeros(w0.size), 0.0
    for i, (k, b, s) in enumerate(zip(clients, base_of, weights)):
        x, y = world.federation.client(int(k))
        r = world.trainer.train(
            (w0, w1)[b],
            x,
            y,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            rng=np.random.default_rng(device_seeds(root, i)[0]),
        )
        w = client_weight(r.num_examples, plan)
        num += s * w * r.delta.astype(np.float64)
        den += w
    expected = w2 + 0.5 * num / den
    # quantization: one unit of 1/scale per device and coordinate, far below this tolerance
    np.testing.assert_allclose(secure.weights, expected, atol=1e-5)
    assert np.abs(secure.weights - w2).max() > 1e-3  # the update is not negligible


def test_stale_updates_beyond_s_are_refused_and_the_bound_binds():
    tight = runner.run(buffered_config(max_staleness=1, staleness="constant"), show_progress=False)
    loose = runner.run(buffered_config(max_staleness=50, staleness="constant"), show_progress=False)
    assert all(r.staleness_max <= 1 for r in tight.rounds)
    assert sum(r.refused for r in tight.rounds) > 0
    assert max(r.staleness_max for r in loose.rounds) > 1  # without the bound, staler updates do arrive
    assert sum(r.refused for r in loose.rounds) == 0


def test_a_seed_reproduces_a_buffered_run():
    a = runner.run(buffered_config(), show_progress=False)
    b = runner.run(buffered_config(), show_progress=False)
    c = runner.run(buffered_config(seed=3), show_progress=False)
    assert numbers(a) == numbers(b)
    assert numbers(a) != numbers(c)
    sim = [r.sim_seconds for r in a.rounds]
    ups = [r.uploads for r in a.rounds]
    assert len(a.rounds) == 6 and sim == sorted(sim) and sim[0] > 0 and ups == sorted(ups) and ups[-1] > 0


@pytest.mark.parametrize("dp", ["distributed", "local"])
def test_with_dp_epsilon_per_version_is_the_capped_unamplified_composition(dp):
    cfg = buffered_config(dp=dp, noise_multiplier=0.7, clip=1.0, delta=1e-5, max_contributions=2, rounds=4)
    summary = runner.run(cfg, show_progress=False)
    assert all(r.status == "completed" for r in summary.rounds), [r.reason for r in summary.rounds]
    population = make_population(cfg.population, cfg.profiles, np.random.default_rng(0))
    training, _ = runner.group_config(cfg, population)
    dim = summary.extra["model"]["params"]
    event = group_event(make_plan(training, "v", cfg.buffer, cfg.buffer), dim)
    assert event.sampling == "none" and 0 < event.noise_multiplier <= 0.7
    for v, r in enumerate(summary.rounds, start=1):
        m = min(v, 2)  # a device is in at most 2 groups
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(event.noise_multiplier), m)
        assert r.epsilon == pytest.approx(acc.get_epsilon(1e-5) + m * event.rdp_offset, rel=1e-9)
    assert summary.rounds[1].epsilon == summary.rounds[3].epsilon > summary.rounds[0].epsilon
    # the summary names the relation the group ledger accounted under (it read the unused round accountant)
    assert summary.extra["relation"] == "add-or-remove-one"


def test_sync_rounds_on_the_simulated_clock(tmp_path):
    """A round lasts at least its first deadline when a device drops before answering; uploads add up."""
    profiles = tmp_path / "profiles"
    write_profile(profiles, "flaky", FLAKY)
    cfg = SimConfig(
        population=200,
        per_round=20,
        rounds=4,
        model="logreg",
        dataset="digits",
        secagg=True,
        profiles=(("flaky", 1.0),),
        seed=1,
        workers=0,
    )
    summary = runner.run(cfg, profile_dir=profiles, show_progress=False)
    prev_t, total = 0.0, 0
    deadline = runner.training_config(cfg, make_population(200, (), np.random.default_rng(0)))[0].train_deadline_s
    for r in summary.rounds:
        total += r.participants if r.status == "completed" else 0
        assert r.uploads == total
        if r.dropped_per_stage.get("advertise_keys", 0) > 0:
            assert r.sim_seconds - prev_t >= deadline
        assert r.sim_seconds > prev_t
        prev_t = r.sim_seconds
    assert any(r.dropped_per_stage.get("advertise_keys", 0) > 0 for r in summary.rounds)

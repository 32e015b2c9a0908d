"""Whole rounds in memory: the coordinator's engine and the devices' participants, real trainer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError, ProtocolError
from fedge.agent.core.messages.rounds import Decline, PlainUpdate
from fedge.agent.participant import LocalResult, Participant
from fedge.coordinator.rounds.engine import PlainAggregation, RoundEngine, RoundSettings, RoundStatus
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from fedge.coordinator.rounds.selection import over_selected, select_cohort
from tests.fakes import FakeClock
from tests.round_fixtures import deliver, digits_split, make_train_fn, trainer_for


def _round(cfg, weights, cohort, participants, clock, round_id=1, drop=lambda d, m: False):
    plan = make_plan(cfg, "v0", len(cohort), 100)
    settings = RoundSettings(goal=cfg.goal, min_clients=cfg.min_clients, stage_timeout_s=cfg.stage_timeout_s)
    agg = PlainAggregation(weights.size + 1, plan.quantization.bits, cfg.goal, cfg.min_clients)
    engine = RoundEngine(round_id, plan, settings, weights, cohort, agg, clock)
    deliver(engine, participants, engine.start(), drop)
    if engine.status is RoundStatus.RUNNING:
        clock.t += plan.deadline_s + 1
        engine.tick()
    return engine


def test_plain_fedavg_improves_accuracy_on_real_digits() -> None:
    trainer = trainer_for("mlp")
    parts, (xt, yt) = digits_split(8)
    devices = [f"dev-{i}" for i in range(8)]
    cfg = TrainingConfig(epochs=2, batch_size=16, learning_rate=0.2, secagg=False, goal=8, min_clients=4)
    w = trainer.initial_weights()
    acc0 = trainer.evaluate(w, xt, yt).accuracy
    clock = FakeClock(1000.0)
    for r in range(1, 4):
        participants = {
            d: Participant(d, make_train_fn(trainer, parts[i], i), np.random.default_rng([7, r, i]))
            for i, d in enumerate(devices)
        }
        engine = _round(cfg, w, devices, participants, clock, round_id=r)
        assert engine.status is RoundStatus.COMPLETED, engine.reason
        assert engine.outcome.participants == 8
        w = engine.outcome.new_weights
    acc = trainer.evaluate(w, xt, yt).accuracy
    assert acc > acc0 + 0.3, (acc0, acc)


def test_aggregate_equals_weighted_mean_of_deltas_up_to_quantization() -> None:
    rng = np.random.default_rng(1)
    d = 50
    deltas = {f"d{i}": rng.normal(0, 0.05, d).astype(np.float32) for i in range(5)}
    counts = {f"d{i}": 10 * (i + 1) for i in range(5)}
    cfg = TrainingConfig(secagg=False, goal=5, min_clients=5, clip_norm=1.0, example_cap=100)

    def fn(dev):
        return lambda task: LocalResult(deltas[dev], counts[dev])

    parts = {k: Participant(k, fn(k), np.random.default_rng(i)) for i, k in enumerate(deltas)}
    engine = _round(cfg, np.zeros(d, np.float32), list(deltas), parts, FakeClock(1000.0))
    assert engine.status is RoundStatus.COMPLETED
    wts = np.array([counts[k] / 100 for k in deltas])
    expect = sum(wts[i] * deltas[k] for i, k in enumerate(deltas)) / wts.sum()
    scale = engine.plan.quantization.scale
    np.testing.assert_allclose(engine.outcome.aggregate.mean_delta, expect, atol=5 * 2 / scale / wts.sum())
    assert engine.outcome.aggregate.total_weight == pytest.approx(wts.sum(), abs=5 / scale)


def test_round_goes_on_with_whoever_reported_and_abandons_below_minimum() -> None:
    d = 10
    cfg = TrainingConfig(secagg=False, goal=6, min_clients=3)
    mk = lambda k: Participant(k, lambda t: LocalResult(np.full(d, 0.01, np.float32), 5), np.random.default_rng(0))  # noqa: E731
    devs = [f"d{i}" for i in range(6)]
    # two silent devices: the deadline closes the stage with four
    parts = {k: mk(k) for k in devs}
    e = _round(cfg, np.zeros(d, np.float32), devs, parts, FakeClock(1000.0), drop=lambda dev, m: dev in ("d0", "d1"))
    assert e.status is RoundStatus.COMPLETED and e.outcome.participants == 4
    assert e.outcome.dropped["report"] == 2
    # four silent devices: below the minimum cohort, abandoned with the counts in the reason
    parts = {k: mk(k) for k in devs}
    e = _round(
        cfg, np.zeros(d, np.float32), devs, parts, FakeClock(1000.0), drop=lambda dev, m: dev not in ("d0", "d1")
    )
    assert e.status is RoundStatus.ABANDONED
    assert "2 of 6" in e.reason and "minimum cohort is 3" in e.reason


def test_bad_uploads_are_refused_and_the_round_goes_on() -> None:
    d = 10
    cfg = TrainingConfig(secagg=False, goal=3, min_clients=2)
    plan = make_plan(cfg, "v0", 3, 10)
    clock = FakeClock(1000.0)
    agg = PlainAggregation(d + 1, plan.quantization.bits, 3, 2)
    e = RoundEngine(1, plan, RoundSettings(3, 2, 10), np.zeros(d, np.float32), ["a", "b", "c"], agg, clock)
    e.start()
    good = np.zeros(d + 1, np.uint32)
    good[-1] = round(plan.quantization.scale)  # weight 1
    with pytest.raises(ProtocolError, match="shape"):
        e.receive("a", PlainUpdate(1, "a", np.zeros(d, np.uint32)))
    with pytest.raises(ProtocolError, match="not in round"):
        e.receive("zz", PlainUpdate(1, "zz", good))
    with pytest.raises(ProtocolError, match="round 2"):
        e.receive("a", PlainUpdate(2, "a", good))
    with pytest.raises(ProtocolError, match="another device"):
        e.receive("a", PlainUpdate(1, "b", good))
    e.receive("a", PlainUpdate(1, "a", good))
    with pytest.raises(ProtocolError, match="duplicate"):
        e.receive("a", PlainUpdate(1, "a", good))  # a replay is never counted twice
    e.receive("b", Decline(1, "b", "budget"))
    e.receive("c", PlainUpdate(1, "c", good))
    assert e.status is RoundStatus.COMPLETED and e.outcome.participants == 2
    assert e.outcome.dropped["declined"] == 1


def test_participant_declines_instead_of_sending_non_finite_updates() -> None:
    cfg = TrainingConfig(secagg=False, goal=2, min_clients=1)
    bad = Participant("x", lambda t: LocalResult(np.array([np.nan, 1], np.float32), 3), np.random.default_rng(0))
    e = _round(cfg, np.zeros(2, np.float32), ["x"], {"x": bad}, FakeClock(1000.0))
    assert e.declined == {"x": "update must be a flat vector of finite numbers"}
    assert e.status is RoundStatus.ABANDONED


def test_distributed_dp_without_secagg_is_refused() -> None:
    with pytest.raises(ConfigError, match="secure aggregation"):
        TrainingConfig(dp_mode="distributed", noise_multiplier=1.0, secagg=False)


def test_over_selection_and_sampling() -> None:
    assert over_selected(10, 1.3) == 13 and over_selected(1, 1.0) == 1
    rng = np.random.default_rng(0)
    cands = [f"d{i}" for i in range(100)]
    drawn = [select_cohort(cands, 10, 1.3, rng) for _ in range(2000)]
    assert all(c.sampling_rate == 0.13 and c.population == 100 for c in drawn)
    picks = [c.members for c in drawn]
    assert all(len(set(p)) == len(p) for p in picks)
    freq = np.bincount([int(d[1:]) for d in itertools.chain(*picks)], minlength=100) / 2000
    assert np.allclose(freq, 0.13, atol=0.035)  # each device ~13% (4 sigma at n=2000)
    # Poisson, not fixed-size: the cohort size is Binomial(100, 0.13) (mean 13, variance 11.3),
    # and two devices join independently (P(both) = q^2 within 4 sigma)
    sizes = np.array([len(p) for p in picks])
    assert abs(sizes.mean() - 13) < 0.3 and 9.5 < sizes.var() < 13.5
    both = np.mean([("d0" in p) and ("d1" in p) for p in picks])
    assert abs(both - 0.13**2) < 4 * np.sqrt(0.13**2 / 2000)
    small = select_cohort(cands[:5], 10, 1.3, rng)
    assert sorted(small.members) == sorted(cands[:5]) and small.sampling_rate == 1.0


def test_plain_uploads_outside_the_quantization_range_are_refused() -> None:
    """One device sending huge values would wrap the sum or outweigh everyone: refused."""
    from fedge.agent.core.secagg.quantize import max_abs_int

    d = 6
    cfg = TrainingConfig(secagg=False, goal=3, min_clients=2, dp_mode="local", noise_multiplier=1.0)
    plan = make_plan(cfg, "v0", 3, 10)
    limit = max_abs_int(plan.quantization.range, plan.quantization.scale)
    agg = PlainAggregation(d + 1, plan.quantization.bits, 3, 2, max_abs=limit)
    e = RoundEngine(1, plan, RoundSettings(3, 2, 10), np.zeros(d, np.float32), ["a", "b", "c"], agg, FakeClock(1000.0))
    e.start()
    huge = np.full(d + 1, 1 << 30, np.uint32)
    with pytest.raises(ProtocolError, match="quantization range"):
        e.receive("a", PlainUpdate(1, "a", huge))
    no_weight = np.zeros(d + 1, np.uint32)
    with pytest.raises(ProtocolError, match="positive weight"):
        e.receive("a", PlainUpdate(1, "a", no_weight))
    ok = np.zeros(d + 1, np.uint32)
    ok[-1] = round(plan.quantization.scale)
    e.receive("a", PlainUpdate(1, "a", ok))  # the honest upload of the same device is still taken


def test_a_decline_after_uploading_is_refused_and_a_last_decline_finishes_the_round() -> None:
    d = 4
    cfg = TrainingConfig(secagg=False, goal=3, min_clients=1)
    plan = make_plan(cfg, "v0", 3, 10)
    clock = FakeClock(1000.0)
    e = RoundEngine(
        1,
        plan,
        RoundSettings(3, 1, 10),
        np.zeros(d, np.float32),
        ["a", "b", "c"],
        PlainAggregation(d + 1, plan.quantization.bits, 3, 1),
        clock,
    )
    e.start()
    ok = np.zeros(d + 1, np.uint32)
    ok[-1] = round(plan.quantization.scale)
    e.receive("a", PlainUpdate(1, "a", ok))
    with pytest.raises(ProtocolError, match="already answered"):
        e.receive("a", Decline(1, "a", "changed my mind"))
    e.receive("b", Decline(1, "b", "budget"))
    assert e.status is RoundStatus.RUNNING
    e.receive("c", Decline(1, "c", "not eligible"))
    # nobody is outstanding: the round completes now, not at the deadline
    assert e.status is RoundStatus.COMPLETED and e.outcome.participants == 1 and clock.t == 1000.0


def test_training_config_reads_dp_mode_and_weighting_into_their_enums_once() -> None:
    """One vocabulary: flags, files and stored plans spell the values; the config holds the enums."""
    import dataclasses

    from fedge.agent.core.errors import ConfigError
    from fedge.agent.core.messages.rounds import Weighting
    from fedge.agent.core.privacy.config import DpMode
    from fedge.coordinator.rounds.plan import TrainingConfig

    cfg = TrainingConfig(dp_mode="local", noise_multiplier=1.0, weighting="uniform", secagg=False)
    assert cfg.dp_mode is DpMode.LOCAL and cfg.weighting is Weighting.UNIFORM
    assert dataclasses.asdict(cfg)["dp_mode"] == "local"  # a stored plan still reads "local"
    assert TrainingConfig().dp_mode is DpMode.OFF and TrainingConfig().weighting is Weighting.EXAMPLES
    with pytest.raises(ConfigError, match="weighting"):
        TrainingConfig(weighting="median")
    with pytest.raises(ConfigError, match="dp"):
        TrainingConfig(dp_mode="central")

"""Whole rounds with SecAgg+ through the engine: exact sums, dropouts, certified peers, DP."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core.certs import issue_certificate
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import SecurityError
from fedge.agent.core.messages.rounds import Peers
from fedge.agent.core.messages.secagg import KeyAdvertisement, MaskedInput, SurvivorSignature
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.secure import PeerDirectory, secagg_factory, trusted_lookup
from fedge.coordinator.rounds.engine import PlainAggregation, RoundEngine, RoundSettings, RoundStatus
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from fedge.coordinator.rounds.secure import SecureAggregation
from tests.fakes import FakeClock
from tests.round_fixtures import deliver, digits_split, make_train_fn, trainer_for


def _setup(n, cfg, deltas, *, certified=False, authority=None, clock=None, round_id=1, population=1000):
    ids = {f"d{i:03d}": IdentityKey.generate() for i in range(n)}
    roster = {d: k.public_bytes() for d, k in ids.items()}
    authority = authority or IdentityKey.generate()
    certs = {d: issue_certificate(authority, d, pk) for d, pk in roster.items()}
    clock = clock or FakeClock()
    dim = next(iter(deltas.values())).size
    plan = make_plan(cfg, "v0", n, population)
    agg = SecureAggregation(
        plan,
        round_id,
        roster,
        dim + 1,
        clock,
        min_clients=cfg.min_clients,
        certificates=certs.__getitem__ if certified else None,
    )
    engine = RoundEngine(
        round_id,
        plan,
        RoundSettings(cfg.goal, cfg.min_clients, 10.0),
        np.zeros(dim, np.float32),
        list(roster),
        agg,
        clock,
    )
    parts = {}
    for i, (d, key) in enumerate(ids.items()):
        directory = (
            PeerDirectory(authority.public_bytes()) if certified else PeerDirectory(trusted=trusted_lookup(roster))
        )
        parts[d] = Participant(
            d,
            (lambda dd: lambda task: LocalResult(deltas[dd], 10))(d),
            np.random.default_rng(i),
            secagg_factory(d, key, directory),
            peers=directory,
        )
    return engine, parts, clock, authority


def _finish(engine, clock, parts=None, drop=lambda d, m: False):
    """Advance the clock past each deadline and deliver what the engine sends then."""
    while engine.status is RoundStatus.RUNNING:
        clock.t = engine.deadline + 1
        out = engine.tick()
        if parts is not None:
            deliver(engine, parts, out, drop)


@pytest.mark.parametrize("stage_drop", [None, "advertise", "shares", "masked", "consistency", "unmask"])
def test_secure_round_equals_plain_mean_with_dropouts_at_every_stage(stage_drop) -> None:
    n, dim = 16, 40
    rng = np.random.default_rng(3)
    deltas = {f"d{i:03d}": rng.normal(0, 0.05, dim).astype(np.float32) for i in range(n)}
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=8)
    engine, parts, clock, _ = _setup(n, cfg, deltas)
    kinds = {"advertise": KeyAdvertisement, "masked": MaskedInput, "consistency": SurvivorSignature}
    silent = {"d001", "d007"}

    def drop(dev, msg):
        if stage_drop is None or dev not in silent:
            return False
        name = type(msg).__name__
        return {
            "advertise": name == "KeyAdvertisement",
            "shares": name == "EncryptedShares",
            "masked": name == "MaskedInput",
            "consistency": name == "SurvivorSignature",
            "unmask": name == "UnmaskShares",
        }[stage_drop]

    del kinds
    deliver(engine, parts, engine.start(), drop)
    _finish(engine, clock, parts, drop)
    assert engine.status is RoundStatus.COMPLETED, engine.reason
    contributed = [d for d in deltas if not (stage_drop in ("advertise", "shares", "masked") and d in silent)]
    assert engine.outcome.participants == len(contributed)
    expect = np.mean([deltas[d] for d in contributed], axis=0)
    tol = 2 * len(contributed) / engine.plan.quantization.scale
    np.testing.assert_allclose(engine.outcome.aggregate.mean_delta, expect, atol=tol)
    if stage_drop:
        assert sum(engine.outcome.dropped.values()) == 2


def test_too_many_dropouts_abandon_with_stage_and_counts() -> None:
    n, dim = 10, 8
    deltas = {f"d{i:03d}": np.full(dim, 0.01, np.float32) for i in range(n)}
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=8)
    engine, parts, clock, _ = _setup(n, cfg, deltas)
    drop = lambda d, m: isinstance(m, MaskedInput) and d < "d004"  # noqa: E731
    deliver(engine, parts, engine.start(), drop)
    _finish(engine, clock, parts, drop)
    assert engine.status is RoundStatus.ABANDONED
    assert "masked_input" in engine.reason and "6 masked inputs, minimum 8" in engine.reason


def test_certified_peers_and_a_substituted_identity_is_refused() -> None:
    n, dim = 8, 6
    deltas = {f"d{i:03d}": np.full(dim, 0.02, np.float32) for i in range(n)}
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=4)
    engine, parts, clock, authority = _setup(n, cfg, deltas, certified=True)
    out = engine.start()
    assert any(isinstance(o.message, Peers) for o in out)
    deliver(engine, parts, out)
    _finish(engine, clock, parts)
    assert engine.status is RoundStatus.COMPLETED and engine.outcome.participants == n
    # a coordinator that swaps in a key of its own cannot certify it
    engine2, parts2, _, _ = _setup(n, cfg, deltas, certified=True, authority=authority, round_id=2)
    out2 = engine2.start()
    victim = next(o for o in out2 if isinstance(o.message, Peers))
    m = victim.message
    forged = Peers(
        m.round_id, m.device_ids, (IdentityKey.generate().public_bytes(),) + m.identity_keys[1:], m.certificates
    )
    p = parts2[victim.device_id]
    task = next(o.message for o in out2 if o.device_id == victim.device_id and type(o.message).__name__ == "Task")
    p.handle(task)
    with pytest.raises(SecurityError):
        p.handle(forged)


def test_secure_fedavg_with_distributed_dp_learns_real_digits() -> None:
    trainer = trainer_for("logreg")
    n = 12
    parts_data, (xt, yt) = digits_split(n, seed=1)
    cfg = TrainingConfig(
        model_name="logreg",
        secagg=True,
        goal=n,
        min_clients=10,
        dp_mode="distributed",
        noise_multiplier=0.3,
        clip_norm=2.0,
        epochs=2,
        batch_size=16,
        learning_rate=0.3,
    )
    w = trainer.initial_weights()
    acc0 = trainer.evaluate(w, xt, yt).accuracy
    for r in range(1, 5):
        ids = {f"d{i:03d}": IdentityKey.generate() for i in range(n)}
        roster = {d: k.public_bytes() for d, k in ids.items()}
        clock = FakeClock()
        plan = make_plan(cfg, "v", n, n)
        agg = SecureAggregation(plan, r, roster, w.size + 1, clock, min_clients=cfg.min_clients)
        engine = RoundEngine(r, plan, RoundSettings(n, cfg.min_clients, 10), w, list(roster), agg, clock)
        parts = {
            d: Participant(
                d,
                make_train_fn(trainer, parts_data[i], i),
                np.random.default_rng([r, i]),
                secagg_factory(d, key, PeerDirectory(trusted=trusted_lookup(roster))),
            )
            for i, (d, key) in enumerate(ids.items())
        }
        deliver(engine, parts, engine.start())
        _finish(engine, clock, parts)
        assert engine.status is RoundStatus.COMPLETED, engine.reason
        w = engine.outcome.new_weights
    acc = trainer.evaluate(w, xt, yt).accuracy
    assert acc > acc0 + 0.25, (acc0, acc)


def test_plain_and_secure_rounds_give_the_same_aggregate() -> None:
    n, dim = 9, 30
    rng = np.random.default_rng(11)
    deltas = {f"d{i:03d}": rng.normal(0, 0.1, dim).astype(np.float32) for i in range(n)}
    cfg_s = TrainingConfig(secagg=True, goal=n, min_clients=5)
    engine, parts, clock, _ = _setup(n, cfg_s, deltas)
    deliver(engine, parts, engine.start())
    _finish(engine, clock, parts)
    cfg_p = TrainingConfig(secagg=False, goal=n, min_clients=5)
    plan = make_plan(cfg_p, "v0", n, 1000)
    pe = RoundEngine(
        1,
        plan,
        RoundSettings(n, 5, 10),
        np.zeros(dim, np.float32),
        list(deltas),
        PlainAggregation(dim + 1, plan.quantization.bits, n, 5),
        FakeClock(),
    )
    pparts = {
        d: Participant(d, (lambda dd: lambda t: LocalResult(deltas[dd], 10))(d), np.random.default_rng(i))
        for i, d in enumerate(deltas)
    }
    deliver(pe, pparts, pe.start())
    assert pe.status is RoundStatus.COMPLETED
    # same rng seeds per device -> identical stochastic rounding -> identical integer sums
    np.testing.assert_array_equal(engine.outcome.aggregate.mean_delta, pe.outcome.aggregate.mean_delta)


def test_a_device_refuses_secagg_parameters_weaker_than_its_plan() -> None:
    """Distributed DP: a config that would release a sum of fewer inputs than the noise was
    planned for (or a different ring or length) is refused before any key is advertised."""
    import dataclasses

    from fedge.agent.core.errors import ProtocolError
    from fedge.agent.core.messages.secagg import SecAggConfig

    n, dim = 8, 5
    deltas = {f"d{i:03d}": np.full(dim, 0.01, np.float32) for i in range(n)}
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=6, dp_mode="distributed", noise_multiplier=0.5)
    engine, parts, _, _ = _setup(n, cfg, deltas)
    out = engine.start()
    dev = "d000"
    task = next(o.message for o in out if o.device_id == dev and type(o.message).__name__ == "Task")
    config = next(o.message for o in out if o.device_id == dev and isinstance(o.message, SecAggConfig))
    assert config.params.min_clients >= task.plan.privacy.min_clients
    weak = dataclasses.replace(config, params=dataclasses.replace(config.params, min_clients=1))
    parts[dev].handle(task)
    with pytest.raises(ProtocolError, match="noise was planned for 6"):
        parts[dev].handle(weak)
    # the honest config from the same coordinator would have been taken
    parts2 = _setup(n, cfg, deltas)[1]
    parts2[dev].handle(task)
    assert len(parts2[dev].handle(config)) == 1

"""Round outcomes that say what happened: every device counted once, and the real reason recorded."""

from __future__ import annotations

import numpy as np

from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import BudgetExhausted
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.secure import PeerDirectory, secagg_factory, trusted_lookup
from fedge.coordinator.rounds.engine import PlainAggregation, RoundEngine, RoundSettings, RoundStatus
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from fedge.coordinator.rounds.secure import SecureAggregation
from tests.fakes import FakeClock
from tests.round_fixtures import deliver

DIM = 8


def _train(declines: set[str]):
    def make(dev: str):
        def train(task):
            if dev in declines:
                raise BudgetExhausted(f"epsilon 3.10 would exceed the budget 3.00 ({dev})")
            return LocalResult(np.full(DIM, 0.01, np.float32), 10)

        return train

    return make


def _run(engine: RoundEngine, parts: dict, clock: FakeClock, declines: set[str] = frozenset()) -> RoundEngine:
    # a device that declined ignores the round's later requests (as the daemon does)
    def drop(dev, msg):
        return dev in declines and type(msg).__name__ not in ("Task", "Decline")

    deliver(engine, parts, engine.start(), drop)
    while engine.status is RoundStatus.RUNNING:
        clock.t = engine.deadline + 1
        deliver(engine, parts, engine.tick(), drop)
    return engine


def _plain(n: int, declines: set[str], goal: int, min_clients: int) -> RoundEngine:
    cfg = TrainingConfig(secagg=False, goal=goal, min_clients=min_clients)
    devs = [f"d{i}" for i in range(n)]
    plan = make_plan(cfg, "v0", n, 100)
    clock = FakeClock(1000.0)
    agg = PlainAggregation(DIM + 1, plan.quantization.bits, goal, min_clients)
    engine = RoundEngine(1, plan, RoundSettings(goal, min_clients, 10.0), np.zeros(DIM, np.float32), devs, agg, clock)
    make = _train(declines)
    parts = {d: Participant(d, make(d), np.random.default_rng(i)) for i, d in enumerate(devs)}
    return _run(engine, parts, clock)


def _secure(n: int, declines: set[str], min_clients: int) -> RoundEngine:
    ids = {f"d{i:03d}": IdentityKey.generate() for i in range(n)}
    roster = {d: k.public_bytes() for d, k in ids.items()}
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=min_clients)
    plan = make_plan(cfg, "v0", n, 1000)
    clock = FakeClock()
    agg = SecureAggregation(plan, 1, roster, DIM + 1, clock, min_clients=min_clients)
    engine = RoundEngine(
        1, plan, RoundSettings(n, min_clients, 10.0), np.zeros(DIM, np.float32), list(roster), agg, clock
    )
    make = _train(declines)
    parts = {
        d: Participant(
            d,
            make(d),
            np.random.default_rng(i),
            secagg_factory(d, key, PeerDirectory(trusted=trusted_lookup(roster))),
            peers=PeerDirectory(trusted=trusted_lookup(roster)),
        )
        for i, (d, key) in enumerate(ids.items())
    }
    return _run(engine, parts, clock, declines)


def test_declined_devices_are_counted_once_and_counts_add_up() -> None:
    e = _plain(3, {"d1", "d2"}, goal=3, min_clients=1)
    assert e.status is RoundStatus.COMPLETED, e.reason
    assert e.outcome.participants == 1
    assert e.outcome.dropped == {"declined": 2}
    assert e.outcome.participants + sum(e.outcome.dropped.values()) == 3


def test_declined_and_silent_devices_are_told_apart() -> None:
    # one declines, one never answers: the deadline closes the report stage with two
    cfg = TrainingConfig(secagg=False, goal=4, min_clients=2)
    devs = ["a", "b", "c", "d"]
    plan = make_plan(cfg, "v0", 4, 100)
    clock = FakeClock(1000.0)
    agg = PlainAggregation(DIM + 1, plan.quantization.bits, 4, 2)
    engine = RoundEngine(1, plan, RoundSettings(4, 2, 10.0), np.zeros(DIM, np.float32), devs, agg, clock)
    make = _train({"b"})
    parts = {d: Participant(d, make(d), np.random.default_rng(i)) for i, d in enumerate(devs)}
    deliver(engine, parts, engine.start(), lambda dev, m: dev == "c")
    clock.t = engine.deadline + 1
    engine.tick()
    assert engine.status is RoundStatus.COMPLETED, engine.reason
    assert engine.outcome.dropped == {"declined": 1, "report": 1}
    assert engine.outcome.participants + sum(engine.outcome.dropped.values()) == 4


def test_secagg_round_with_declines_counts_each_device_once() -> None:
    e = _secure(12, {"d003", "d009"}, min_clients=8)
    assert e.status is RoundStatus.COMPLETED, e.reason
    assert e.outcome.participants == 10
    assert e.outcome.dropped == {"declined": 2}


def test_a_round_whose_devices_all_ran_out_of_budget_says_so_not_secagg() -> None:
    devs = {f"d{i:03d}" for i in range(10)}
    e = _secure(10, devs, min_clients=8)
    assert e.status is RoundStatus.ABANDONED
    assert "10 of 10 devices declined (out of privacy budget: 10)" in e.reason, e.reason
    assert "secagg" not in e.reason.lower()
    assert e.outcome.dropped == {"declined": 10}


def test_a_plain_round_short_of_the_minimum_through_declines_names_them() -> None:
    e = _plain(3, {"d0", "d1", "d2"}, goal=3, min_clients=2)
    assert e.status is RoundStatus.ABANDONED
    assert e.reason == "3 of 3 devices declined (out of privacy budget: 3); 0 answered, minimum cohort is 2"

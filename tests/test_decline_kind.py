"""A decline says what kind it is, and the coordinator acts on the kind, never on the reason's text."""

from __future__ import annotations

import msgpack
import numpy as np

from fedge.agent.core import wire
from fedge.agent.core.messages.rounds import Decline, DeclineKind
from fedge.coordinator.rounds.engine import PlainAggregation, RoundEngine, RoundSettings
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from tests.fakes import FakeClock


def test_a_decline_from_an_older_agent_decodes_as_failed():
    magic, version, name, body = msgpack.unpackb(wire.encode(Decline(3, "dev-1", "thermal", DeclineKind.BUDGET)))
    old = msgpack.packb([magic, version, name, body[:3]], use_bin_type=True)  # no kind field yet
    assert wire.decode(old) == Decline(3, "dev-1", "thermal", DeclineKind.FAILED)
    assert wire.decode(wire.encode(Decline(3, "dev-1", "x", DeclineKind.BUDGET))).kind is DeclineKind.BUDGET


def test_the_engine_reports_budget_declines_by_kind_not_by_text():
    cfg = TrainingConfig(goal=2, min_clients=2, secagg=False)
    plan = make_plan(cfg, "v0", 2, 2)
    agg = PlainAggregation(5, plan.quantization.bits, 2, 2)
    clock = FakeClock(100.0)
    # the one place a RoundEngine is built outside the round builder: a test (as the layering rule allows)
    engine = RoundEngine(1, plan, RoundSettings(2, 2, 10.0), np.zeros(4, np.float32), ["a", "b"], agg, clock)
    engine.start()
    engine.receive("a", Decline(1, "a", "epsilon would reach 9 > 8", DeclineKind.BUDGET))
    engine.receive("b", Decline(1, "b", "budget-looking text but a thermal stop", DeclineKind.FAILED))
    clock.t = engine.deadline + 1
    engine.tick()
    assert engine.decline_kinds == {"a": DeclineKind.BUDGET, "b": DeclineKind.FAILED}
    assert "out of privacy budget: 1" in engine.reason and "budget-looking text but a thermal stop: 1" in engine.reason

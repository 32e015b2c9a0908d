"""Server optimizers (Reddi et al. 2021, Algorithm 2): known answers, state round trip, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.coordinator.rounds.server_opt import ServerOptConfig, ServerOptimizer, ServerOptKind


def _scalar_reference(kind: str, deltas: list[float], eta: float, b1=0.9, b2=0.99, tau=1e-3, mom=0.9) -> float:
    """The paper's update written out for one coordinate with plain floats."""
    x, m, v = 0.0, 0.0, tau**2
    for d in deltas:
        if kind == "fedavg":
            x += eta * d
            continue
        if kind == "fedavgm":
            m = mom * m + d
            x += eta * m
            continue
        m = b1 * m + (1 - b1) * d
        if kind == "fedadagrad":
            v = v + d * d
        elif kind == "fedadam":
            v = b2 * v + (1 - b2) * d * d
        else:
            v = v - (1 - b2) * d * d * math.copysign(1.0, v - d * d) if v != d * d else v
        x += eta * m / (math.sqrt(v) + tau)
    return x


DELTAS = [1.0, -0.5, 0.25, 2.0, -1.0]


@pytest.mark.parametrize("kind", [k.value for k in ServerOptKind])
def test_each_rule_matches_the_papers_update_coordinate_by_coordinate(kind):
    eta = 0.1 if kind != "fedavg" else 1.0
    opt = ServerOptimizer(ServerOptConfig(ServerOptKind(kind), learning_rate=eta))
    x = np.zeros(3, np.float32)
    for d in DELTAS:
        x = opt.apply(x, np.array([d, 2 * d, -d], np.float32))
    for i, scale in enumerate((1.0, 2.0, -1.0)):
        want = _scalar_reference(kind, [scale * d for d in DELTAS], eta)
        assert x[i] == pytest.approx(want, rel=1e-5, abs=1e-6), (kind, i)


def test_fedadam_first_step_known_answer():
    # m = 0.1, v = 0.99 * 1e-6 + 0.01, step = 0.1 / (sqrt(v) + 1e-3) = 0.990051...
    opt = ServerOptimizer(ServerOptConfig(ServerOptKind.FEDADAM, learning_rate=1.0))
    assert float(opt.apply(np.zeros(1, np.float32), np.ones(1, np.float32))[0]) == pytest.approx(0.990051, abs=1e-6)


def test_fedavg_at_rate_one_is_plain_fedavg():
    opt = ServerOptimizer(ServerOptConfig())
    w, d = np.arange(4, dtype=np.float32), np.full(4, 0.5, np.float32)
    assert np.array_equal(opt.apply(w, d), w + d)


def test_state_survives_json_and_continues_identically():
    a = ServerOptimizer(ServerOptConfig(ServerOptKind.FEDYOGI, learning_rate=0.05))
    x = np.zeros(2, np.float32)
    for d in DELTAS[:3]:
        x = a.apply(x, np.array([d, -d], np.float32))
    b = ServerOptimizer(ServerOptConfig(ServerOptKind.FEDYOGI, learning_rate=0.05))
    b.restore(json.loads(json.dumps(a.state())))
    for d in DELTAS[3:]:
        step = np.array([d, -d], np.float32)
        assert np.array_equal(a.apply(x, step), b.apply(x, step))
    assert a.steps == b.steps == len(DELTAS)


@pytest.mark.parametrize("bad", [dict(learning_rate=0.0), dict(beta2=1.0), dict(tau=-1.0), dict(kind="sgd")])
def test_bad_settings_are_refused(bad):
    with pytest.raises((ConfigError, ValueError)):
        ServerOptConfig(**bad)


def test_a_non_finite_or_misshapen_delta_is_refused():
    opt = ServerOptimizer(ServerOptConfig(ServerOptKind.FEDADAM, learning_rate=0.1))
    with pytest.raises(ConfigError):
        opt.apply(np.zeros(2, np.float32), np.array([np.nan, 0.0], np.float32))
    with pytest.raises(ConfigError):
        opt.apply(np.zeros(2, np.float32), np.zeros(3, np.float32))
    assert opt.steps == 0

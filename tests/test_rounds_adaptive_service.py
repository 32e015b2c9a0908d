"""Adaptive clipping through the MQTT coordinator service: each round's plan carries the C the
previous round's noisy clip-bit sum chose, and the rounds table records both."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.agent.core.transport.base import MQTT_311
from fedge.coordinator.service.service import CoordinatorService
from fedge.coordinator.store import Store
from tests.service_fixtures import AgentThreads, make_fleet, service_config


@pytest.mark.timeout(180)
def test_service_carries_next_clip_norm_into_the_next_plan(embedded_broker, tmp_path) -> None:
    fleet = make_fleet(tmp_path, 4)
    cfg = service_config(
        fleet,
        embedded_broker.url,
        rounds=3,
        mqtt_protocol=MQTT_311,
        epsilon_budget=1e6,
        training=dict(
            dp_mode="local",
            noise_multiplier=0.5,
            clip_norm=50.0,
            target_quantile=0.5,
            adaptive_learning_rate=0.5,
            clip_count_stddev=0.3,
        ),
    )
    with AgentThreads(fleet, embedded_broker.url, MQTT_311):
        reports = CoordinatorService(cfg, rng=np.random.default_rng(0)).run()
    assert [r.status for r in reports] == ["completed"] * 3
    store = Store(str(fleet.db))
    try:
        rows = list(store.rounds())
    finally:
        store.close()
    assert rows[0]["clip_norm"] == 50.0
    for prev, cur in zip(rows, rows[1:]):
        assert cur["clip_norm"] == pytest.approx(prev["next_clip_norm"])
        assert json.loads(cur["plan"])["privacy"]["clip_norm"] == pytest.approx(cur["clip_norm"])
    # C moved every round (the geometric step is exp(-0.5 (b_bar - 1/2)), never exactly 1 here)
    assert all(r["next_clip_norm"] != r["clip_norm"] for r in rows)
    assert all(json.loads(r["plan"])["privacy"]["adaptive"]["target_quantile"] == 0.5 for r in rows)

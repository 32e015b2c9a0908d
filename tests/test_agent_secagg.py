"""The agent daemon in a SecAgg+ round with distributed DP, against the real coordinator service:
three ``fedge-agent run`` processes (enrolled, trusting the enrollment authority) over Mosquitto."""

from __future__ import annotations

import sqlite3

import pytest

from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.service.demo import DEMO_TRAINING, DemoConfig, daemon_available, run_demo
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.mosquitto]


def test_three_daemons_complete_a_secagg_round_with_distributed_dp(tmp_path, mosquitto):
    assert daemon_available()
    training = TrainingConfig(
        goal=3, min_clients=2, dp_mode="distributed", noise_multiplier=0.5, secagg=True, **DEMO_TRAINING
    )
    cfg = DemoConfig(
        agents=3,
        rounds=1,
        training=training,
        broker_url=mosquitto.url,
        workdir=str(tmp_path / "demo"),
        checkin_window_s=30.0,
    )
    reports = run_demo(cfg, echo=lambda _line: None)
    assert [(r.status, r.participants) for r in reports] == [("completed", 3)], reports
    for i in range(3):
        con = sqlite3.connect(tmp_path / "demo" / f"demo-{i:02d}" / "agent.db")
        try:
            ((stage, status),) = con.execute("select stage, status from round_state where round_id = 1").fetchall()
            # the round end may reach an agent after the demo stopped it
            assert stage == "secagg.masked_input" and status in ("ended", "uploaded")
            assert con.execute("select mode from privacy_ledger").fetchall() == [("distributed",)]
            assert con.execute("select count(*) from outbox").fetchone() == (0,)
        finally:
            con.close()

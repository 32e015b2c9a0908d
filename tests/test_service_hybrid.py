"""serve --prefer-hybrid with real ``fedge-agent run`` daemons: every device runs the X25519 + ML-KEM-768
suite, so the coordinator picks it, and the round completes through it over MQTT."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from click.testing import CliRunner

from fedge.agent.core.secagg.params import SUITE_PQ, supported_suites
from fedge.coordinator.service.cli import cli
from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [
    needs_mosquitto,
    pytest.mark.mosquitto,
    pytest.mark.timeout(300),
    pytest.mark.skipif(SUITE_PQ not in supported_suites(), reason="ML-KEM-768 needs the pq extra"),
]


def test_serve_prefers_the_hybrid_suite_when_every_device_runs_it(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="fedge.coordinator.service.service")
    with DaemonFleet(tmp_path, 3, mosquitto.url, secagg_training(3)) as fleet:
        args = ["serve", "--db", str(fleet.db), "--broker", mosquitto.url, "--mqtt-protocol", "5"]
        args += ["--goal", "3", "--min-clients", "2", "--dp", "distributed", "--noise-multiplier", "0.5"]
        args += ["--epsilon-budget", "1000", "--checkin-window", "60", "--rounds", "1", "--prefer-hybrid"]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    con = sqlite3.connect(f"file:{fleet.db}?mode=ro", uri=True)
    try:
        rows = con.execute("select status, participants, reason from rounds").fetchall()
    finally:
        con.close()
    assert [(s, p) for s, p, _ in rows] == [("completed", 3)], rows
    assert f"SecAgg+ suite {SUITE_PQ} for 3 devices" in caplog.text

"""serve --group-size with real ``fedge-agent run`` daemons on Mosquitto: one round's cohort is split into
SecAgg+ groups, each group's SecAgg+ server runs in a worker process (or a Ray actor), the coordinator adds
the group sums, and the accountant's event says how many sums were revealed (each carrying the round's whole
noise)."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from fedge.agent.core.errors import ConfigError
from fedge.coordinator.service.cli import cli
from fedge.coordinator.service.config import ServiceConfig
from tests.daemon_fleet import DaemonFleet, rows, secagg_training
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.timeout(300)]


@pytest.mark.parametrize("engine", ["process", "ray"])
def test_serve_aggregates_a_round_in_secagg_groups_with_the_noise_in_every_group(tmp_path, mosquitto, caplog, engine):
    if engine == "ray":
        pytest.importorskip("ray")
    training = secagg_training(6, min_clients=4, epochs=1)
    with DaemonFleet(tmp_path, 6, mosquitto.url, training) as fleet:
        args = ["serve", "--db", str(fleet.db), "--broker", mosquitto.url, "--mqtt-protocol", "5"]
        args += ["--goal", "6", "--min-clients", "4", "--dp", "distributed", "--noise-multiplier", "0.5"]
        args += ["--epsilon-budget", "1000", "--checkin-window", "60", "--rounds", "2"]
        args += ["--group-size", "3", "--group-workers", "2", "--group-engine", engine]
        with caplog.at_level(logging.INFO, logger="fedge.coordinator.workers"):
            result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert f"2 group workers ({engine}) started" in caplog.text
    rounds = rows(fleet.db, "select * from rounds order by round_id")
    assert [r["status"] for r in rounds] == ["completed", "completed"], [r["reason"] for r in rounds]
    assert all(r["participants"] == 6 for r in rounds), rounds
    assert rounds[0]["model_in"] != rounds[1]["model_in"]  # the first round's group sums made a new model
    for r in rounds:
        # two groups of 3, each held to ceil(4 * 3 / 6) = 2 survivors, the noise split over 2 shares
        # (ungrouped it would be 4), so each revealed group sum carries all of it
        assert json.loads(r["plan"])["privacy"]["min_clients"] == 2
    events = [json.loads(e["event"]) for e in rows(fleet.db, "select event from privacy_rounds order by round_id")]
    assert [e["groups"] for e in events] == [2, 2]


def test_group_settings_are_checked_before_serving():
    with pytest.raises(ConfigError, match="group_size"):
        ServiceConfig(db_path="x.db", training=secagg_training(4), group_size=1)
    with pytest.raises(ConfigError, match="SecAgg"):
        ServiceConfig(db_path="x.db", training=secagg_training(4, secagg=False, dp_mode="local"), group_size=2)
    assert ServiceConfig(db_path="x.db", training=secagg_training(4), group_size=2).group_size == 2
    with pytest.raises(ConfigError, match="group_engine: expected one of thread, process, ray, got 'gpu'"):
        ServiceConfig(db_path="x.db", training=secagg_training(4), group_size=2, group_engine="gpu")

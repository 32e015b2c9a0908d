"""A hostile device on a real Mosquitto: one of eight ``fedge-agent run`` processes forges a Shamir
share at unmask (tests/hostile/sitecustomize.py, loaded only into that process). The coordinator
corrects it, the round completes with every device's update, and the forger is recorded and
quarantined with the reason, never selected again."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import ROOT

AGENTS = 8  # a complete graph of 8: 7 shares per secret, threshold 5, so one bad share is correctable

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.timeout(300)]


def _hostile_env(i: int) -> dict[str, str]:
    if i != 0:
        return {}
    path = os.pathsep.join(filter(None, [str(ROOT / "tests" / "hostile"), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "FEDGE_TEST_FORGE_SHARES": "1"}


def test_a_forged_share_at_unmask_is_corrected_and_its_sender_quarantined(tmp_path, mosquitto):
    training = secagg_training(AGENTS, noise_multiplier=0.5, min_clients=5)
    with DaemonFleet(tmp_path, AGENTS, mosquitto.url, training, env_for=_hostile_env) as fleet:
        first = fleet.serve(rounds=1)
        forger = fleet.devices[0]
        assert [r.status for r in first] == ["completed"], [r.reason for r in first]
        assert first[0].participants == AGENTS  # corrected, not dropped: the forger's own update counts too
        con = sqlite3.connect(fleet.db)
        try:
            quarantined = con.execute(
                "select device_id, quarantine_reason from devices where quarantined_at is not null"
            )
            rows = quarantined.fetchall()
        finally:
            con.close()
        assert rows == [(forger, "forged Shamir share at unmask (corrected or left out)")], rows
        second = fleet.serve(rounds=1)
    assert [r.status for r in second] == ["completed"], [r.reason for r in second]
    assert second[0].participants == AGENTS - 1  # never selected again
    assert "forged Shamir shares" not in fleet.log(1)

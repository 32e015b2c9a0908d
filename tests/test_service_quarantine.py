"""No single device stops a round: a cloned device (two real ``fedge-agent run`` processes with
one identity and a copy of one store, on a real Mosquitto, in a SecAgg+ round with distributed DP)
is caught by its two different messages for one round and stage, left out of the round, which
completes without it, quarantined in the coordinator's store with the reason, never selected
again, and listed and lifted by ``fedge-coordinator devices``. A device whose forged Shamir share
was corrected at unmask is quarantined too."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading

import pytest
from click.testing import CliRunner

from fedge.coordinator.service.cli import cli
from tests.agent_fixtures import start_agent, stop, wait_for
from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import mosquitto, needs_mosquitto  # noqa: F401

AGENTS = 3


def _rows(db, sql: str, args: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(str(db), timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


@needs_mosquitto
@pytest.mark.mosquitto
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_cloned_device_is_quarantined_and_the_round_completes_without_it(tmp_path, mosquitto):  # noqa: F811
    # long local training; the twin (same identity, a copy of the store) starts while the device
    # trains: it takes the device's MQTT session over, the broker hands it the unacknowledged task,
    # and both processes train and advertise different SecAgg+ keys for the same round
    fleet = DaemonFleet(tmp_path / "w", AGENTS, mosquitto.url, secagg_training(AGENTS, epochs=300))
    victim = fleet.agents[0]
    twin_dir = tmp_path / "twin"
    shutil.copytree(victim.profile.parent, twin_dir)
    twin_profile = twin_dir / victim.profile.name
    twin_profile.write_text(
        re.sub(r'^db_path = ".*"$', f'db_path = "{twin_dir / victim.db.name}"', twin_profile.read_text(), flags=re.M)
    )
    twins: list = []

    def start_twin_mid_training() -> None:
        wait_for(
            lambda: fleet.agent_rows(0, "select status from round_state where round_id = 1") == [("training",)],
            120,
            "the device to start training",
            step=0.005,
        )
        twins.append(start_agent(twin_profile, tmp_path / "twin.log"))

    injector = threading.Thread(target=start_twin_mid_training, daemon=True)
    try:
        with fleet:
            injector.start()
            (first,) = fleet.serve()
            (second,) = fleet.serve()
    finally:
        injector.join(5)
        for t in twins:
            stop(t)
    assert len(twins) == 1
    # the round goes on: the clone is left out at the stage it is caught in while its input can still
    # be taken out (participants AGENTS - 1); caught later (its masked input already in the sum, or
    # its shares needed at unmask) it finishes the round flagged (AGENTS)
    assert first.status == "completed" and first.participants in (AGENTS - 1, AGENTS), first
    (reason,) = _rows(
        fleet.db,
        "select quarantine_reason from devices where device_id = ? and quarantined_at is not null",
        (victim.device_id,),
    )
    assert "cloned device" in reason[0] and "round 1" in reason[0], reason
    assert _rows(
        fleet.db, "select count(*) from rejections where kind = 'conflict' and device_id = ?", (victim.device_id,)
    ) >= [(1,)]
    # never selected again: round 2 runs with the others only
    assert (second.status, second.participants) == ("completed", AGENTS - 1), second
    members = {d for (d,) in _rows(fleet.db, "select device_id from round_members where round_id = 2")}
    assert victim.device_id not in members and members == set(fleet.devices[1:])

    runner = CliRunner()
    listed = runner.invoke(cli, ["devices", "list", "--db", str(fleet.db), "--json"])
    assert listed.exit_code == 0, listed.output
    by_id = {d["device_id"]: d for d in json.loads(listed.output)}
    assert "cloned device" in by_id[victim.device_id]["quarantined"]
    assert all(by_id[d]["quarantined"] is None for d in fleet.devices[1:])
    table = runner.invoke(cli, ["devices", "list", "--db", str(fleet.db)])
    assert re.search(rf"^{re.escape(victim.device_id)} .* quarantined .*cloned device", table.output, re.M), (
        table.output
    )
    lifted = runner.invoke(cli, ["devices", "unquarantine", victim.device_id, "--db", str(fleet.db)])
    assert lifted.exit_code == 0 and "cloned device" in lifted.output, lifted.output
    assert _rows(fleet.db, "select quarantined_at from devices where device_id = ?", (victim.device_id,)) == [(None,)]
    again = runner.invoke(cli, ["devices", "unquarantine", victim.device_id, "--db", str(fleet.db)])
    assert again.exit_code != 0 and "not quarantined" in again.output

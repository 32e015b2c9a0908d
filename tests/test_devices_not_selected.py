"""Devices the coordinator stops selecting are listed with the reason: a device that declined for lack
of privacy budget is skipped by every later round (kept in SQLite), and ``devices list`` says so
instead of leaving the operator with "0 eligible devices" while the device reports itself eligible."""

from __future__ import annotations

import json
import subprocess
import sys

import sqlite_utils

from fedge.coordinator.service.privacy_budget import mark_exhausted, selectable_devices

COORD = [sys.executable, "-c", "from fedge.coordinator.service.cli import main; main()", "--log-level", "WARNING"]


def _cli(tmp_path, *args: str) -> str:
    out = subprocess.run([*COORD, *args, "--db", "c.db"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_device_out_of_budget_is_listed_as_not_selected_with_the_reason(tmp_path) -> None:
    for dev in ("pi-1", "pi-2"):
        _cli(tmp_path, "devices", "enroll", "--device-id", dev, "--identity", dev[-1] * 64, "--class", "pi4")
    db = sqlite_utils.Database(tmp_path / "c.db")
    mark_exhausted(db, "pi-2", clock=lambda: 1_800_000_000.0)
    assert selectable_devices(db, ["pi-1", "pi-2"], {}, float("inf")) == ["pi-1"]  # what rounds do with it
    db.conn.close()
    rows = {d["device_id"]: d for d in json.loads(_cli(tmp_path, "devices", "list", "--json"))}
    assert rows["pi-1"]["not_selected"] is None
    assert rows["pi-2"]["not_selected"] == "privacy budget spent (declined for it 2027-01-15 08:00 UTC)"
    table = _cli(tmp_path, "devices", "list")
    line = next(ln for ln in table.splitlines() if ln.startswith("pi-2"))
    assert "not selected: privacy budget spent" in line
    assert "not selected" not in next(ln for ln in table.splitlines() if ln.startswith("pi-1"))


def test_a_round_without_selectable_devices_says_they_are_out_of_budget(tmp_path) -> None:
    """Two devices check in eligible, both were marked out of budget: the round's reason says so,
    instead of "0 eligible devices checked in" while every device reports itself eligible."""
    from fedge.agent.core.transport.base import MQTT_311
    from fedge.coordinator.service.broker import EmbeddedBroker
    from fedge.coordinator.service.service import CoordinatorService
    from tests.service_fixtures import AgentThreads, make_fleet, service_config

    fleet = make_fleet(tmp_path, 2)
    db = sqlite_utils.Database(fleet.db)
    for dev in fleet.devices:
        mark_exhausted(db, dev)
    db.conn.close()
    with EmbeddedBroker() as broker, AgentThreads(fleet, broker.url, MQTT_311):
        (report,) = CoordinatorService(service_config(fleet, broker.url, rounds=1, mqtt_protocol=MQTT_311)).run()
    assert report.status == "abandoned"
    assert report.reason == (
        "check-in: 0 eligible devices checked in (2 more out of privacy budget, see devices list), minimum cohort is 2"
        " (of 2 enrolled: 2 answered eligible, 0 ineligible, 0 silent)"
    ), report.reason


def test_a_check_in_window_reports_its_count_while_it_waits_and_when_it_closes(tmp_path) -> None:
    """Three devices enrolled, two running: the operator sees "2/3 checked in" while the window is
    open and once more when it closes with one silent, instead of nothing until the round's line."""
    from fedge.agent.core.transport.base import MQTT_311
    from fedge.coordinator.service.broker import EmbeddedBroker
    from fedge.coordinator.service.service import CoordinatorService, checkin_printer
    from tests.service_fixtures import AgentThreads, make_fleet, service_config

    fleet = make_fleet(tmp_path, 3)
    import dataclasses

    two = dataclasses.replace(fleet, devices=fleet.devices[:2])
    lines: list[str] = []
    with EmbeddedBroker() as broker, AgentThreads(two, broker.url, MQTT_311):
        cfg = service_config(fleet, broker.url, rounds=1, mqtt_protocol=MQTT_311, checkin_window_s=7.0)
        (report,) = CoordinatorService(cfg, on_checkin=checkin_printer(lines.append)).run()
    assert report.status == "completed" and report.participants == 2, report.reason
    waiting = [ln for ln in lines if "s left)" in ln]
    assert waiting and all(ln.startswith("round 1: ") and "/3 enrolled devices checked in" in ln for ln in waiting)
    assert lines[-1] == "round 1: 2/3 enrolled devices checked in, 2 eligible (window closed)", lines

"""The live privacy audit: ``serve --audit-canaries`` runs canary clients inside the coordinator
that take part in SecAgg+ rounds with real ``fedge-agent run`` daemons (certified like any peer,
masked, noised), are never counted as devices, and the audit is reported per round."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from click.testing import CliRunner

from fedge.coordinator.fleet.dashboard import render_page, rounds_data
from fedge.coordinator.service.cli import cli
from fedge.coordinator.store import Store
from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import needs_mosquitto

AGENTS, PAIRS, ROUNDS = 3, 8, 2

pytestmark = [pytest.mark.timeout(240)]


@needs_mosquitto
@pytest.mark.mosquitto
def test_serve_with_audit_canaries_reports_the_audit_per_round(tmp_path, mosquitto):
    training = secagg_training(AGENTS, noise_multiplier=1.0)
    with DaemonFleet(tmp_path, AGENTS, mosquitto.url, training) as fleet:
        reports = fleet.serve(rounds=ROUNDS, audit_canaries=PAIRS)
    assert [r.status for r in reports] == ["completed"] * ROUNDS, [r.reason for r in reports]
    for r in reports:
        # canaries are extra clients of the round, never devices: the count is the daemons'
        assert r.participants == AGENTS and "audit canaries" in r.reason, r
        assert r.epsilon is not None and math.isfinite(r.epsilon)
        assert r.epsilon_empirical is not None and math.isfinite(r.epsilon_empirical)
        assert r.epsilon_lower_bound is not None and 0.0 <= r.epsilon_lower_bound <= math.log(PAIRS) + 1e-9
    store = Store(str(fleet.db))
    try:
        rounds = rounds_data(store)
        page = render_page(rounds, [], [])
        members = {m["device_id"] for m in store.db.query("select device_id from round_members")}
        devices = {d["device_id"] for d in store.db.query("select device_id from devices")}
        uploads = {u["device_id"] for u in store.db.query("select device_id from uploads")}
        plans = [json.loads(r["plan"]) for r in store.db.query("select plan from rounds")]
    finally:
        store.close()
    assert members == devices == uploads == set(fleet.devices)
    # canaries add no noise share (the coordinator knows their randomness): the devices' noise is
    # split over the campaign's min_clients (2), not min_clients + canaries
    assert plans and all(p["privacy"]["min_clients"] == training.min_clients for p in plans), plans
    # the dashboard shows the audit beside epsilon, and charts it with epsilon
    assert "audit, replace-one (estimate / 95% lower bound)" in page and "epsilon (add-or-remove-one)" in page
    assert "audit 95% lower bound (replace-one)" in page and "ε (accountant, add-or-remove-one)" in page
    assert all(r["epsilon_lower_bound"] is not None for r in rounds)
    out = CliRunner().invoke(cli, ["rounds", "--db", str(fleet.db)])
    assert out.exit_code == 0, out.output
    relation, header, *rows = out.output.strip().splitlines()
    assert "add-or-remove-one" in relation  # every epsilon names its neighbouring relation
    assert relation.startswith("epsilon at delta ")  # and its delta
    assert "audit-est, audit-lb: replace-one" in relation  # and so does every audit figure
    doc = CliRunner().invoke(cli, ["rounds", "--db", str(fleet.db), "--json"])
    assert all(r["relation"] == "add-or-remove-one" for r in json.loads(doc.output)["rounds"])
    assert all(0 < r["delta"] < 1 for r in json.loads(doc.output)["rounds"])
    from fedge.coordinator.service.service import round_report
    from fedge.coordinator.service.service_cli import format_round

    db = sqlite3.connect(fleet.db)
    db.row_factory = sqlite3.Row
    try:
        line = format_round(round_report(dict(db.execute("select * from rounds order by round_id desc").fetchone())))
    finally:
        db.close()
    assert " at delta " in line and line.index(" at delta ") < line.index("(add-or-remove-one)"), line
    assert all(r["audit_relation"] == "replace-one" for r in json.loads(doc.output)["rounds"])
    assert "audit-est" in header and "audit-lb" in header and len(rows) == ROUNDS
    assert all(row.split()[6] != "-" and row.split()[7] != "-" for row in rows), out.output


def test_the_serve_command_on_the_embedded_broker_prints_the_audit_per_round(tmp_path, embedded_broker):
    """`fedge-coordinator serve --audit-canaries` as an operator runs it, on the embedded broker (MQTT
    3.1.1), with real `fedge-agent run` processes: one line per round carries the audit beside epsilon."""
    from fedge.agent.core.cliutil import run as run_cli

    training = secagg_training(AGENTS, noise_multiplier=1.0)
    args = ["serve", "--db", str(tmp_path / "coordinator.db"), "--broker", embedded_broker.url]
    args += ["--mqtt-protocol", "3.1.1", "--rounds", str(ROUNDS), "--audit-canaries", str(PAIRS)]
    args += ["--goal", str(AGENTS), "--min-clients", "2", "--dp", "distributed", "--noise-multiplier", "1.0"]
    args += ["--epsilon-budget", "1000", "--checkin-window", "60"]
    runner = CliRunner()
    with DaemonFleet(tmp_path, AGENTS, embedded_broker.url, training, protocol="3.1.1") as fleet:
        args += ["--eval-data", str(fleet.test_data)]
        with runner.isolation() as (out, _err, *_):
            code = run_cli(cli, "fedge-coordinator", args)
            lines = out.getvalue().decode().splitlines()
    assert code == 0, lines
    rounds = [ln for ln in lines if ln.startswith("round ") and "accuracy" in ln]
    assert len(rounds) == ROUNDS, lines
    for ln in rounds:
        assert "completed" in ln and f"participants {AGENTS}" in ln, ln
        assert "(add-or-remove-one)" in ln and "(audit, replace-one: estimate " in ln, ln

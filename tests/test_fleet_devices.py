"""``devices list``: last seen, participation, epsilon and eligibility history from what the service stored."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from fedge.agent.core import wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.messages.rounds import CheckIn
from fedge.coordinator.service.cli import cli
from fedge.coordinator.service.device_report import activity
from fedge.coordinator.service.enrollment import enroll
from fedge.coordinator.store import Store


def _populate(path: str) -> None:
    store = Store(path)
    try:
        for d in ("pi-1", "pi-2"):
            enroll(store, d, IdentityKey.generate().public_bytes().hex(), "pi4", ("lab",), clock=lambda: 100.0)
        for rid, (eligible, eps, picked) in enumerate([(True, 0.5, True), (False, 0.5, False), (True, 0.9, True)], 1):
            store.open_round(rid, goal=1, model_in="m", plan={}, now=100.0 + rid)
            store.record_upload(
                rid,
                "pi-1",
                "round.checkin",
                wire.encode(CheckIn("pi-1", rid, "pi4", "m", eligible, 10, eps)),
                100.0 + rid,
            )
            if picked:
                store.add_members(rid, ["pi-1"], 100.0 + rid)
                store.record_upload(rid, "pi-1", "round.plain_update", b"update", 101.0 + rid)
        store.db.execute("update uploads set status = 'rejected' where round_id = 3 and stage = 'round.plain_update'")
        store.touch("pi-1", 1_700_000_000.0)
    finally:
        store.close()


def test_activity_counts_selection_contribution_epsilon_and_eligibility(tmp_path):
    path = str(tmp_path / "c.db")
    _populate(path)
    store = Store(path)
    try:
        a = activity(store, "pi-1")
        assert (a.selected, a.contributed) == (2, 1)  # round 3's update was rejected
        assert a.epsilon_spent == 0.9 and a.history() == "YNY"
        assert a.last_seen == 1_700_000_000.0
        b = activity(store, "pi-2")
        assert (b.selected, b.contributed, b.epsilon_spent, b.history(), b.last_seen) == (0, 0, None, "-", None)
    finally:
        store.close()


def test_devices_list_shows_activity_as_table_and_json(tmp_path):
    path = str(tmp_path / "c.db")
    _populate(path)
    out = CliRunner().invoke(cli, ["devices", "list", "--db", path])
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if ln.startswith("pi-1"))
    assert "2023-11-14 22:13" in line and "2/1" in line and "0.9" in line and "YNY" in line
    rows = json.loads(CliRunner().invoke(cli, ["devices", "list", "--json", "--db", path]).output)
    assert rows[0]["rounds_contributed"] == 1 and [e["eligible"] for e in rows[0]["eligibility"]] == [True, False, True]
    assert np.isclose(rows[0]["epsilon_spent"], 0.9)
    # every epsilon names its neighbouring relation: the device ledger's add-or-remove-one
    assert rows[0]["epsilon_relation"] == "add-or-remove-one"
    assert out.output.splitlines()[0].startswith("epsilon: add-or-remove-one")

"""``--json`` on every command that lists or reports something, in both operator-facing commands."""

from __future__ import annotations

import json

import click
import pytest

from fedge.agent.cli import cli as agent_cli
from fedge.agent.cli import main as agent_main
from fedge.agent.core.privacy.ledger import Contribution, DeviceLedger
from fedge.agent.store import Store
from fedge.coordinator.rounds.accounting import RoundEvent, epsilon
from fedge.coordinator.service.cli import cli as coordinator_cli
from fedge.coordinator.service.cli import main as coordinator_main
from fedge.coordinator.service.privacy_budget import CampaignBudget
from fedge.coordinator.store import Store as CoordinatorStore

#: Command names that report rather than act.
REPORTING = {"list", "show", "status", "stats", "history", "rounds", "identity", "epsilon"}

#: The reporting commands as they are today: a new one (or a rename) must be looked at here.
EXPECTED = {
    "fedge-coordinator": {
        "devices list",
        "rounds",
        "releases list",
        "releases show",
        "rollouts list",
        "rollouts show",
        "privacy history",
        "privacy epsilon",
    },
    "fedge-agent": {"status", "identity", "data stats", "privacy status"},
}


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + " ")
        else:
            yield path, cmd


@pytest.mark.parametrize("prog, group", [("fedge-coordinator", coordinator_cli), ("fedge-agent", agent_cli)])
def test_every_reporting_command_takes_json(prog, group) -> None:
    reporting = {p: c for p, c in _commands(group) if p.split()[-1] in REPORTING}
    assert set(reporting) == EXPECTED[prog]
    missing = [p for p, c in reporting.items() if not any("--json" in o.opts for o in c.params)]
    assert not missing, f"{prog}: no --json on {missing}"


def _run(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_privacy_history_json(tmp_path, capsys) -> None:
    path = tmp_path / "coord.db"
    budget = CampaignBudget(CoordinatorStore(str(path)).db, "c1", budget_epsilon=10.0, delta=1e-5)
    for r in range(3):
        budget.record_round(r, RoundEvent(1.0, 0.05))
    code, out, _ = _run(
        coordinator_main, ["privacy", "history", "--db", str(path), "--campaign", "c1", "--json"], capsys
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["campaign"] == "c1" and [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    assert doc["rounds"][-1]["epsilon"] == pytest.approx(budget.epsilon_so_far(), rel=1e-9)
    assert doc["relation"] == "add-or-remove-one" and doc["delta"] == 1e-5
    assert {r["relation"] for r in doc["rounds"]} == {"add-or-remove-one"}


def test_privacy_epsilon_json(capsys) -> None:
    code, out, _ = _run(
        coordinator_main,
        ["privacy", "epsilon", "-z", "1.1", "-q", "0.02", "--rounds", "300", "--delta", "1e-6", "--json"],
        capsys,
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["epsilon"] == pytest.approx(epsilon(1.1, 0.02, 300, 1e-6), rel=1e-9)
    assert doc["delta"] == 1e-6 and doc["accountant"] == "rdp" and doc["rounds"] == 300


def test_agent_reports_take_json(tmp_path, capsys) -> None:
    path = tmp_path / "agent.db"
    with Store(path) as store:
        DeviceLedger(store.db).record(Contribution(7, "local", 3.0, 1.0, 0.1, 1e-5))
    code, out, _ = _run(agent_main, ["privacy", "status", "--db", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out)["contributions"] == 1


def test_agent_identity_json(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.profiles_fixtures import PROFILE_DIR

    agent = [sys.executable, "-c", "from fedge.agent.cli import main; main()", "--log-level", "WARNING"]
    trial = str(PROFILE_DIR / "trial" / "local.toml")
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), HOME=str(tmp_path))
    init = subprocess.run(
        [*agent, "init", "--profile", trial, "--device-id", "pi-7"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    out = subprocess.run(
        [*agent, "identity", "--profile", trial, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["device_id"] == "pi-7" and init.stdout.split() == ["pi-7", doc["identity"]]
    assert doc["store"].startswith(str(tmp_path / "state"))

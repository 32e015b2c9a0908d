"""The privacy commands: coordinator epsilon calculator and campaign history, agent ledger status."""

from __future__ import annotations

import json

import pytest

from fedge.agent.cli import main as agent_main
from fedge.agent.core.privacy.ledger import Contribution, DeviceLedger
from fedge.agent.store import Store
from fedge.coordinator.rounds.accounting import RoundEvent, epsilon
from fedge.coordinator.service.cli import main as coordinator_main
from fedge.coordinator.service.privacy_budget import CampaignBudget
from fedge.coordinator.store import Store as CoordinatorStore


def _run(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_coordinator_epsilon_prints_dp_accounting_figure(capsys):
    code, out, _ = _run(
        coordinator_main,
        ["privacy", "epsilon", "-z", "1.1", "-q", "0.02", "--rounds", "300", "--delta", "1e-6"],
        capsys,
    )
    assert code == 0
    assert float(out.split()[1]) == pytest.approx(epsilon(1.1, 0.02, 300, 1e-6), rel=1e-5)
    code, _, err = _run(
        coordinator_main,
        ["privacy", "epsilon", "-z", "1", "-q", "0.1", "--rounds", "3", "--delta", "1e-5", "--sampling", "fixed"],
        capsys,
    )
    assert code == 2 and "population" in err


def test_coordinator_history_prints_epsilon_per_round(tmp_path, capsys):
    path = tmp_path / "coord.db"
    budget = CampaignBudget(CoordinatorStore(str(path)).db, "c1", budget_epsilon=10.0, delta=1e-5)
    for r in range(3):
        budget.record_round(r, RoundEvent(1.0, 0.05))
    code, out, _ = _run(coordinator_main, ["privacy", "history", "--db", str(path), "--campaign", "c1"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert [ln.split()[1] for ln in lines] == ["0", "1", "2"]
    assert float(lines[-1].split()[3]) == pytest.approx(budget.epsilon_so_far(), rel=1e-5)
    # every epsilon names its delta and neighbouring relation (Poisson-sampled rounds: add-or-remove-one)
    assert all(ln.endswith("at delta 1e-05 (add-or-remove-one)") for ln in lines), lines
    code, _, err = _run(coordinator_main, ["privacy", "history", "--db", str(path), "--campaign", "nope"], capsys)
    assert code == 2 and "nope" in err


def test_agent_privacy_status_reads_the_ledger(tmp_path, capsys):
    path = tmp_path / "agent.db"
    with Store(path) as store:
        DeviceLedger(store.db).record(Contribution(7, "local", 3.0, 1.0, 0.1, 1e-5))
    code, out, _ = _run(agent_main, ["privacy", "status", "--db", str(path)], capsys)
    status = json.loads(out)
    assert code == 0 and status["contributions"] == 1
    assert status["epsilon_spent"] == pytest.approx(epsilon(3.0, 1.0, 1, 1e-5, accountant="pld"), rel=1e-3)

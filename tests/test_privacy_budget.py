"""Budgets: a device over budget refuses, the coordinator stops selecting it and stops the campaign."""

from __future__ import annotations

import math

import pytest
import sqlite_utils

from fedge.agent.core import migrations
from fedge.agent.core.errors import BudgetExhausted, ConfigError, ProtocolError
from fedge.agent.core.privacy.ledger import Contribution, DeviceLedger
from fedge.agent.store import Store as AgentStore
from fedge.coordinator.rounds.accounting import RoundEvent, epsilon_of_events
from fedge.coordinator.service.privacy_budget import (
    CampaignBudget,
    campaign_history,
    mark_exhausted,
    selectable_devices,
)
from fedge.coordinator.store import MIGRATIONS as COORDINATOR_MIGRATIONS
from fedge.coordinator.store import Store as CoordinatorStore


def _contribution(round_id: int, z: float = 2.0, mode: str = "local") -> Contribution:
    return Contribution(round_id, mode, z, 1.0, 0.1, 1e-5)


def _coord(path) -> sqlite_utils.Database:
    return CoordinatorStore(str(path)).db


def test_a_budget_made_before_its_migration_is_kept(tmp_path):
    """Before ``012_privacy_budget`` the budget made its tables on first use: a store with a campaign
    and those tables, migrated up to 011, opens with the campaign and its marks intact."""
    path = tmp_path / "coord.db"
    old = sqlite_utils.Database(path)
    migrations.apply(old, COORDINATOR_MIGRATIONS[:-1])
    assert COORDINATOR_MIGRATIONS[-1][0] == "012_privacy_budget"
    COORDINATOR_MIGRATIONS[-1][1](old)  # the same calls the budget made on first use
    old["privacy_campaigns"].insert(
        {"campaign_id": "c1", "budget_epsilon": 2.0, "delta": 1e-5, "accountant": "rdp", "stopped": 0}
    )
    old["privacy_rounds"].insert({"campaign_id": "c1", "round_id": 1, "event": "{}", "epsilon": 0.5, "recorded_at": 0})
    mark_exhausted(old, "dev1", clock=lambda: 0.0)
    old.conn.close()
    db = _coord(path)
    assert migrations.applied(db)[-1] == "012_privacy_budget"
    assert campaign_history(db, "c1") == [(1, 0.5)]
    assert selectable_devices(db, ["dev1", "dev2"], {}, 3.0) == ["dev2"]


def test_history_of_a_store_without_budget_tables_is_a_config_error(tmp_path):
    """``privacy history`` reads the file as it is: a store migrated before 012 that never ran a
    campaign has no budget tables, and that is "no privacy budget is stored", not a SQLite error."""
    db = sqlite_utils.Database(tmp_path / "coord.db")
    migrations.apply(db, COORDINATOR_MIGRATIONS[:-1])
    with pytest.raises(ConfigError, match="no privacy budget"):
        campaign_history(db, "c1")


def test_device_refuses_over_budget_even_after_reopen(tmp_path):
    path = tmp_path / "agent.db"
    ledger = DeviceLedger(AgentStore(path).db, clock=lambda: 1.0)
    budget = 3.0
    r = 0
    while True:
        try:
            ledger.check_can_contribute(budget, _contribution(r))
        except BudgetExhausted:
            break
        ledger.record(_contribution(r))
        r += 1
    assert r >= 1
    spent = ledger.epsilon_spent(1e-5)
    assert spent <= budget
    # the same figure as dp-accounting's PLD accountant composing r unsampled Gaussians with z = 2
    assert spent == pytest.approx(epsilon_of_events([RoundEvent(2.0, 1.0, "none")] * r, 1e-5, "pld"), rel=1e-3)
    # a restart: a fresh connection to the same file still refuses
    reopened = DeviceLedger(AgentStore(path).db)
    assert reopened.epsilon_spent(1e-5) == pytest.approx(spent)
    with pytest.raises(BudgetExhausted, match="budget"):
        reopened.check_can_contribute(budget, _contribution(r))
    # a noisier round may still fit
    reopened.check_can_contribute(budget + 5, _contribution(r, z=50.0))


def test_ledger_rejects_double_recording_and_mode_off_is_infinite(tmp_path):
    ledger = DeviceLedger(AgentStore(tmp_path / "agent.db").db)
    ledger.record(_contribution(1))
    with pytest.raises(ProtocolError):
        ledger.record(_contribution(1))
    ledger.record(_contribution(2, mode="off"))
    assert math.isinf(ledger.epsilon_spent(1e-5))
    with pytest.raises(BudgetExhausted):
        ledger.check_can_contribute(100.0, _contribution(3))


def test_campaign_stops_at_budget_and_stays_stopped_after_restart(tmp_path):
    path = tmp_path / "coord.db"
    event = RoundEvent(1.0, 0.05)
    budget = CampaignBudget(_coord(path), "c1", budget_epsilon=2.0, delta=1e-5, clock=lambda: 0.0)
    r = 0
    with pytest.raises(BudgetExhausted, match="stopped"):
        while True:
            budget.record_round(r, event)
            r += 1
    history = budget.history()
    assert len(history) == r and r > 1
    assert all(a[1] < b[1] for a, b in zip(history, history[1:]))  # epsilon recorded per round, growing
    assert history[-1][1] <= 2.0
    assert history[-1][1] == pytest.approx(epsilon_of_events([event] * r, 1e-5), rel=1e-9)
    restarted = CampaignBudget(_coord(path), "c1", budget_epsilon=2.0, delta=1e-5)
    assert restarted.stopped
    assert restarted.epsilon_so_far() == pytest.approx(history[-1][1])
    with pytest.raises(BudgetExhausted):
        restarted.check_round(RoundEvent(100.0, 0.001))


def test_a_check_counts_the_rounds_still_running_as_spent(tmp_path):
    """Buffered groups run at once: a group is checked as if the running ones were recorded first."""
    event = RoundEvent(2.0, 1.0, "none", rdp_offset=1e-6)
    budget = CampaignBudget(_coord(tmp_path / "coord.db"), "c1", budget_epsilon=50.0, delta=1e-5, clock=lambda: 0.0)
    budget.record_round(0, event)
    for pending in (0, 2):
        want = epsilon_of_events([event] * (2 + pending), 1e-5)
        assert budget.check_round(event, 1, pending=pending) == pytest.approx(want, rel=1e-9)
    three = epsilon_of_events([event] * 3, 1e-5)
    tight = CampaignBudget(_coord(tmp_path / "b.db"), "c2", budget_epsilon=three * 1.001, delta=1e-5)
    tight.record_round(0, event)
    tight.check_round(event, 1, pending=1)  # two running or recorded, plus this one: within budget
    with pytest.raises(BudgetExhausted):
        tight.check_round(event, 1, pending=2)


def test_campaign_refuses_changed_settings(tmp_path):
    db = _coord(tmp_path / "coord.db")
    CampaignBudget(db, "c1", budget_epsilon=2.0, delta=1e-5)
    with pytest.raises(Exception, match="differ"):
        CampaignBudget(db, "c1", budget_epsilon=20.0, delta=1e-5)


def test_coordinator_stops_selecting_spent_devices(tmp_path):
    path = tmp_path / "coord.db"
    db = _coord(path)
    devices = ["a", "b", "c", "d"]
    assert selectable_devices(db, devices, {}, 3.0) == devices
    mark_exhausted(db, "b", clock=lambda: 0.0)
    reported = {"c": 3.0, "d": 2.9}
    # after a restart, the marks are still there
    again = _coord(path)
    assert selectable_devices(again, devices, reported, 3.0) == ["a", "d"]


def test_device_and_coordinator_agree_end_to_end(tmp_path):
    """A device declines when over budget; the coordinator marks it and never selects it again."""
    agent_db = AgentStore(tmp_path / "agent.db").db
    coord_db = _coord(tmp_path / "coord.db")
    ledger = DeviceLedger(agent_db)
    selected_rounds = []
    for r in range(20):
        if "dev1" not in selectable_devices(coord_db, ["dev1"], {"dev1": ledger.epsilon_spent(1e-5)}, 4.0):
            break
        selected_rounds.append(r)
        try:
            ledger.check_can_contribute(4.0, _contribution(r))
            ledger.record(_contribution(r))
        except BudgetExhausted:
            mark_exhausted(coord_db, "dev1")
    assert selected_rounds and selected_rounds[-1] < 19
    assert ledger.epsilon_spent(1e-5) <= 4.0


def test_contribution_of_config_uses_the_accounted_noise():
    from fedge.agent.core.privacy.config import PrivacyConfig
    from fedge.agent.core.privacy.discrete import DiscreteNoisePlan

    local = Contribution.of(
        PrivacyConfig(mode="local", noise_multiplier=1.5, clip_norm=0.3), 4, sampling_rate=0.1, delta=1e-6
    )
    assert local == Contribution(4, "local", 1.5, 0.3, 0.1, 1e-6, 0.0)
    plan = DiscreteNoisePlan(clip_norm=1.0, central_stddev=2.0, scale=2.0**8, bits=32, min_clients=10, dimension=4096)
    dist = Contribution.of(
        PrivacyConfig(mode="distributed", noise_multiplier=2.0, min_clients=10),
        5,
        sampling_rate=0.1,
        delta=1e-6,
        discrete=plan,
    )
    assert dist.noise_multiplier == pytest.approx(2.0 * 256 / (256 + 64))
    assert dist.rdp_offset == plan.rdp_offset


@pytest.mark.parametrize("zs,delta", [([3.0], 1e-5), ([1.0] * 10, 1e-6), ([5.0] * 50, 1e-5), ([0.8, 2.0, 4.0], 1e-5)])
def test_ledger_closed_form_matches_dp_accounting_pld(zs, delta):
    """The ledger's exact Gaussian composition (mu-GDP) equals dp-accounting's PLD within 0.1%."""
    from fedge.agent.core.privacy.ledger import composed_epsilon

    cs = [Contribution(i, "local", z, 1.0, 0.1, delta) for i, z in enumerate(zs)]
    pld = epsilon_of_events([RoundEvent(z, 1.0, "none") for z in zs], delta, "pld")
    assert composed_epsilon(cs, delta) == pytest.approx(pld, rel=1e-3)
    # and never above the looser RDP figure
    assert composed_epsilon(cs, delta) <= epsilon_of_events([RoundEvent(z, 1.0, "none") for z in zs], delta, "rdp")


def test_device_daemon_does_not_load_dp_accounting():
    """The ledger needs no accountant library: the daemon stays light (scipy is 64 MiB)."""
    import subprocess
    import sys

    code = "import sys, fedge.agent.daemon; print('dp_accounting' in sys.modules or 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

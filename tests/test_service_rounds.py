"""Round outcomes the service records: revoked devices kept out, too few check-ins, the privacy
budget, a restart that finds an open round, and ``fedge-coordinator rounds`` over the result."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fedge.agent.core.transport.base import MQTT_311
from fedge.coordinator.service.cli import cli
from fedge.coordinator.service.enrollment import revoke
from fedge.coordinator.service.service import RESTARTED, CoordinatorService
from fedge.coordinator.store import Store
from tests.service_fixtures import AgentThreads, make_fleet, service_config


@pytest.mark.timeout(120)
def test_revoked_device_is_rejected_and_never_selected(embedded_broker, tmp_path) -> None:
    fleet = make_fleet(tmp_path, 4)
    store = Store(str(fleet.db))
    revoke(store, "dev-03")
    store.close()
    cfg = service_config(fleet, embedded_broker.url, rounds=1, mqtt_protocol=MQTT_311)
    with AgentThreads(fleet, embedded_broker.url, MQTT_311):
        [report] = CoordinatorService(cfg, rng=np.random.default_rng(0)).run()
    assert report.status == "completed" and report.participants == 3
    store = Store(str(fleet.db))
    try:
        assert "dev-03" not in store.members(1)
        rej = [r for r in store.db["rejections"].rows if r["device_id"] == "dev-03"]
        assert rej and {r["kind"] for r in rej} == {"unknown_device"}
        assert not list(store.db.query("select * from uploads where device_id = 'dev-03'"))
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_too_few_checkins_abandon_with_a_reason(embedded_broker, tmp_path) -> None:
    fleet = make_fleet(tmp_path, 3)
    cfg = service_config(
        fleet, embedded_broker.url, rounds=1, mqtt_protocol=MQTT_311, checkin_window_s=1.0, training=dict(min_clients=2)
    )
    with AgentThreads(fleet, embedded_broker.url, MQTT_311, devices=("dev-00",)), _Stranger(embedded_broker.url):
        [report] = CoordinatorService(cfg).run()
    assert report.status == "abandoned"
    # counts that add up to the enrolled devices, and the unknown device that tried
    assert report.reason == (
        "check-in: 1 eligible devices checked in, minimum cohort is 2 (of 3 enrolled: 1 answered eligible, "
        "0 ineligible, 2 silent, and 1 unknown devices refused (see rejections))"
    ), report.reason


class _Stranger:
    """A device nobody enrolled, checking in to every announcement."""

    def __init__(self, url: str) -> None:
        import threading

        from fedge.agent.core.transport import open_transport
        from fedge.agent.core.transport.base import TransportConfig

        self.t = open_transport(TransportConfig(broker_url=url, client_id="stranger", protocol=MQTT_311))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from fedge.agent.core import topics, wire
        from fedge.agent.core.messages.rounds import CheckIn, RoundAnnounce

        while not self.stop.is_set():
            inbound = self.t.receive(0.1)
            if inbound is None:
                continue
            self.t.ack(inbound)
            msg = wire.decode(inbound.payload)
            if isinstance(msg, RoundAnnounce):
                checkin = CheckIn("stranger", msg.round_id, "pi4", msg.model_version, True, 100, 0.0)
                self.t.publish(topics.device_out("stranger"), wire.encode(checkin))

    def __enter__(self) -> _Stranger:
        from fedge.agent.core import topics

        self.t.connect()
        self.t.subscribe(topics.ROUNDS)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.t.close()


@pytest.mark.timeout(120)
def test_privacy_budget_records_epsilon_and_stops_the_campaign(embedded_broker, tmp_path) -> None:
    fleet = make_fleet(tmp_path, 4)
    # local DP, z = 1, all 4 of 4 sampled, delta 1e-6: epsilon 5.22 after one round, 7.77 after two (rdp)
    cfg = service_config(
        fleet,
        embedded_broker.url,
        rounds=3,
        mqtt_protocol=MQTT_311,
        epsilon_budget=6.0,
        training=dict(dp_mode="local", noise_multiplier=1.0, clip_norm=1.0),
    )
    with AgentThreads(fleet, embedded_broker.url, MQTT_311):
        reports = CoordinatorService(cfg).run()
    assert [r.status for r in reports] == ["completed", "abandoned"]
    assert reports[0].epsilon == pytest.approx(5.2215, abs=1e-3)
    assert (
        reports[1].reason.startswith("privacy budget:")
        and "7.766" in reports[1].reason
        and "budget of 6" in reports[1].reason
    )
    store = Store(str(fleet.db))
    try:
        r1 = store.round(1)
        assert r1["epsilon"] == pytest.approx(reports[0].epsilon) and r1["delta"] == 1e-6
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_restart_abandons_the_open_round_and_rounds_cli_shows_it(embedded_broker, tmp_path, isolated_logging) -> None:
    fleet = make_fleet(tmp_path, 2)
    store = Store(str(fleet.db))
    store.open_round(1, goal=2, model_in="mlp-0", plan={}, now=1.0)
    store.add_members(1, ["dev-00", "dev-01"], 1.0)
    store.close()
    cfg = service_config(fleet, embedded_broker.url, rounds=1, mqtt_protocol=MQTT_311)
    with AgentThreads(fleet, embedded_broker.url, MQTT_311):
        [report] = CoordinatorService(cfg).run()
    assert report.round_id == 2 and report.status == "completed"
    out = CliRunner().invoke(cli, ["rounds", "--json", "--db", str(fleet.db)])
    assert out.exit_code == 0, out.output
    rounds = json.loads(out.stdout)["rounds"]
    assert [(r["round"], r["status"], r["reason"]) for r in rounds][0] == (1, "abandoned", RESTARTED)
    assert rounds[1]["status"] == "completed" and rounds[1]["participants"] == 2 and rounds[1]["accuracy"] > 0
    table = CliRunner().invoke(cli, ["rounds", "--db", str(fleet.db)]).stdout
    assert RESTARTED in table and "completed" in table


@pytest.mark.timeout(60)
def test_an_error_inside_a_round_abandons_it_with_that_reason(embedded_broker, tmp_path, monkeypatch) -> None:
    import fedge.coordinator.service.service as service_module
    from fedge.agent.core.errors import ConfigError

    fleet = make_fleet(tmp_path, 2)
    cfg = service_config(fleet, embedded_broker.url, rounds=1, mqtt_protocol=MQTT_311, checkin_window_s=0.5)

    def unplannable(*_a, **_k):
        raise ConfigError("cohort cannot be planned")

    monkeypatch.setattr(service_module, "select_cohort", unplannable)
    with pytest.raises(ConfigError):
        CoordinatorService(cfg).run()
    store = Store(str(fleet.db))
    try:
        [r] = list(store.rounds())
        assert (r["status"], r["reason"]) == ("abandoned", "ConfigError: cohort cannot be planned")
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_a_device_that_declines_for_budget_is_never_selected_again(embedded_broker, tmp_path) -> None:
    from fedge.agent.core.errors import BudgetExhausted

    fleet = make_fleet(tmp_path, 3)
    cfg = service_config(
        fleet,
        embedded_broker.url,
        rounds=2,
        mqtt_protocol=MQTT_311,
        checkin_window_s=5.0,
        training=dict(secagg=False, goal=3, min_clients=2),
    )
    agents = AgentThreads(fleet, embedded_broker.url, MQTT_311)
    spent = agents.loops[0]

    def over_budget(task):
        raise BudgetExhausted("epsilon would reach 9.1 > budget 8")

    spent.train = over_budget
    with agents:
        reports = CoordinatorService(cfg).run()
    assert [r.status for r in reports] == ["completed", "completed"], [r.reason for r in reports]
    store = Store(str(fleet.db))
    try:
        assert spent.device_id in store.members(1) and spent.device_id not in store.members(2)
        assert [r["device_id"] for r in store.db["privacy_exhausted_devices"].rows] == [spent.device_id]
    finally:
        store.close()

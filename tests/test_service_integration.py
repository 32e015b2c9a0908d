"""The coordinator service end to end: a real broker (Mosquitto, and the embedded amqtt), the
service, 10 agent processes, 3 rounds with SecAgg+, real TFLite training on digits; global accuracy
improves and the SQLite state holds every round, member, upload and model exactly once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.agent.core.transport.base import MQTT_5, MQTT_311
from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer
from fedge.coordinator.service.service import CoordinatorService
from fedge.coordinator.store import Store
from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import AgentProcesses, make_fleet, service_config

AGENTS = 10
ROUNDS = 3

BROKERS = [
    pytest.param(("mosquitto", MQTT_5), id="mosquitto", marks=[needs_mosquitto, pytest.mark.mosquitto]),
    pytest.param(("embedded_broker", MQTT_311), id="embedded"),
]


def initial_accuracy(db: str, test_npz: str) -> float:
    store = Store(db)
    try:
        w = store.model("mlp-0").weights
    finally:
        store.close()
    with np.load(test_npz) as f:
        return Trainer(load_spec("mlp")).evaluate(w, f["x"], f["y"]).accuracy


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", BROKERS)
def test_ten_agent_processes_three_secure_rounds_accuracy_improves(broker, request, tmp_path) -> None:
    fixture, protocol = broker
    url = request.getfixturevalue(fixture).url
    fleet = make_fleet(tmp_path, AGENTS, seed=1)
    # check-in closes as soon as all 10 checked in; the long window only covers slow process starts.
    # On amqtt a device whose connection the broker dropped may never check in again (see below), so
    # there the window is shorter: the rounds go on without it instead of outliving the test timeout.
    window = 120.0 if fixture == "mosquitto" else 40.0
    cfg = service_config(
        fleet,
        url,
        rounds=ROUNDS,
        mqtt_protocol=protocol,
        checkin_window_s=window,
        training=dict(
            secagg=True, goal=AGENTS, min_clients=6, learning_rate=0.2, train_deadline_s=20.0, stage_timeout_s=5.0
        ),
    )
    with AgentProcesses(fleet, url, protocol):
        reports = CoordinatorService(cfg, rng=np.random.default_rng(0)).run()

    assert [r.status for r in reports] == ["completed"] * ROUNDS, [r.reason for r in reports]
    if fixture == "mosquitto":
        assert all(r.participants == AGENTS and r.dropped == 0 for r in reports)
    else:
        # amqtt (0.12.1 here) sometimes drops a connection when many clients subscribe at once (RuntimeError
        # "dictionary changed size during iteration" in Broker._handle_client_session): a device
        # may then miss a stage. The round must still complete with everyone else, counted once.
        assert all(r.participants >= 6 and r.participants + r.dropped <= AGENTS for r in reports)
    acc0 = initial_accuracy(str(fleet.db), str(fleet.test_data))
    accs = [r.accuracy for r in reports]
    # mlp on 1,497 digits split 10 ways, one epoch per round: chance is ~0.1 (stated tolerance 0.25)
    assert accs[-1] >= acc0 + 0.25 and accs[-1] >= accs[0], (acc0, accs)

    store = Store(str(fleet.db))
    try:
        rounds = list(store.rounds())
        assert [r["status"] for r in rounds] == ["completed"] * ROUNDS
        for r in rounds:
            rid = r["round_id"]
            assert r["model_out"] == f"mlp-r{rid}" and store.model(r["model_out"]).produced_by_round == rid
            assert json.loads(r["plan"])["secagg"] is True
            # every device's SecAgg+ messages stored exactly once per stage
            rows = list(store.uploads(rid))
            keys = [(u["device_id"], u["stage"]) for u in rows]
            assert len(keys) == len(set(keys))
            assert r["participants"] <= store.count_uploads(rid, "secagg.masked_input") <= len(store.members(rid))
            assert r["bytes_up"] > 0 and r["bytes_down"] > 0
            if fixture == "mosquitto":
                assert len(store.members(rid)) == AGENTS
                assert {u["status"] for u in rows} == {"accepted"}
                assert store.count_uploads(rid, "secagg.masked_input") == AGENTS
        if fixture == "mosquitto":
            assert list(store.db["rejections"].rows) == []
    finally:
        store.close()

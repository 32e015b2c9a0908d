"""End to end over a real Mosquitto: a rollout moves real ``fedge-agent run`` daemons from the zoo
``mlp`` to a built model (``agent/models/specs/digits_cnn``) that travels inside the signed
release, and a SecAgg+ round with distributed DP then trains the new model on them."""

from __future__ import annotations

import dataclasses
import time

import pytest

from fedge.agent.releases import ReleaseManager
from fedge.agent.store import Store as AgentStore
from fedge.agent.training.models import MODELS_DIR
from fedge.coordinator.fleet.controller import create_rollout, get_rollout
from fedge.coordinator.fleet.releases import import_model, trusted_keys
from fedge.coordinator.fleet.rollouts import Spec, Status, Target
from fedge.coordinator.service.config import ServiceConfig
from fedge.coordinator.service.service import CoordinatorService
from fedge.coordinator.store import Store
from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.slow]


def test_a_rollout_moves_daemons_to_a_built_model_and_a_round_trains_it(tmp_path, mosquitto):  # noqa: F811
    fleet = DaemonFleet(tmp_path / "w", 2, mosquitto.url, secagg_training(2))
    store = Store(str(fleet.db))
    try:
        import_model(store, MODELS_DIR / "specs" / "digits_cnn.tflite", version="dcnn-0")
        keys = trusted_keys(store)
    finally:
        store.close()
    for a in fleet.agents:  # enrollment hands the device the release key (fedge-agent init --release-key)
        with AgentStore(a.db) as s:
            for public in keys.values():
                ReleaseManager(s.db, a.device_id).trust_key(public)

    cfg = ServiceConfig(
        db_path=str(fleet.db),
        training=fleet.training,
        broker_url=mosquitto.url,
        rounds=0,
        checkin_window_s=30.0,
        eval_data=str(fleet.test_data),
        mqtt_protocol="5",
        epsilon_budget=1000.0,
    )
    with fleet:
        deadline = time.monotonic() + 60  # commands to a device with no session yet would be lost
        while not all("connected to" in fleet.log(i) for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.2)
        service = CoordinatorService(cfg).start()
        try:
            ops = Store(str(fleet.db))
            try:
                create_rollout(ops, Spec("to-cnn", "dcnn-0", Target(device_class="pi4")))
            finally:
                ops.close()
            deadline = time.monotonic() + 90
            while get_rollout(service.store, "to-cnn").progress.status is Status.ACTIVE and time.monotonic() < deadline:
                service.idle(0.5)
            view = get_rollout(service.store, "to-cnn")
            assert view.progress.status is Status.COMPLETED and view.counts["installed"] == 2, view.to_dict()
        finally:
            service.shutdown()
        for i in range(2):
            assert "now training model digits_cnn" in fleet.log(i)

        # the campaign now trains the imported model: serve --model digits_cnn
        fleet.training = dataclasses.replace(fleet.training, model_name="digits_cnn")
        (report,) = fleet.serve(rounds=1)
        assert (report.status, report.participants) == ("completed", 2), report
        assert report.model_version == "digits_cnn-r1" and report.accuracy is not None
        for i in range(2):
            assert fleet.trained(i, report.round_id) == 1, fleet.log(i)
            assert fleet.agent_rows(i, "select version from releases where slot = 'current'") == [("dcnn-0",)]

    store = Store(str(fleet.db))
    try:
        out = store.model("digits_cnn-r1")
        assert out.architecture == "digits_cnn" and out.parent == "dcnn-0"
        assert out.weights.size == store.model("dcnn-0").weights.size
        row = next(store.db.query("select model_sha256 from releases where version = 'digits_cnn-r1'"))
        assert row["model_sha256"]  # the round's output is a release that carries the model too
    finally:
        store.close()

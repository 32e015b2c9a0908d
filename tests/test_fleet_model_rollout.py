"""End to end over a real Mosquitto: a rollout moves real ``fedge-agent run`` daemons from the zoo
``mlp`` to a built model (``agent/models/specs/digits_cnn``) that travels inside the signed
release, and a SecAgg+ round with distributed DP then trains the new model on them."""

from __future__ import annotations

import dataclasses

import pytest

from fedge.agent.training.models import MODELS_DIR
from fedge.coordinator.fleet.rollouts import Status
from fedge.coordinator.store import Store
from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.slow]


def test_a_rollout_moves_daemons_to_a_built_model_and_a_round_trains_it(tmp_path, mosquitto):  # noqa: F811
    fleet = DaemonFleet(tmp_path / "w", 2, mosquitto.url, secagg_training(2))
    fleet.release_model(MODELS_DIR / "specs" / "digits_cnn.tflite", "dcnn-0")
    with fleet:
        fleet.wait_connected()
        view = fleet.roll_out("dcnn-0", "to-cnn")
        assert view.progress.status is Status.COMPLETED and view.counts["installed"] == 2, view.to_dict()
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

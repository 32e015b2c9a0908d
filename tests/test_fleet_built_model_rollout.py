"""End to end over a real Mosquitto, for each of the two built example models a user brings: a
signed release carries the committed model (the Embedding + GRU Shakespeare model
``agent/models/specs/shakespeare_gru``, 80 character ids in, the next character out; the 1-D CNN
``har_cnn1d``, 128 samples of 6 phone sensor channels in, one of 12 activities out), a rollout
installs it on real ``fedge-agent run`` daemons, and one SecAgg+ round with distributed DP then
trains it on their local data through ``serve``'s code."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from fedge.agent.local_data import import_examples
from fedge.agent.store import Store as AgentStore
from fedge.agent.training.models import MODELS_DIR, load_spec
from fedge.coordinator.fleet.rollouts import Status
from fedge.coordinator.store import Store
from fedge.simulations.shakespeare import SEQ_LEN, encode
from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.slow]

GRU = MODELS_DIR / "specs" / "shakespeare_gru.tflite"
HAR = MODELS_DIR / "specs" / "har_cnn1d.tflite"
#: Each device's lines (Sonnet 18 and Hamlet, public domain), long enough for a few dozen windows.
TEXTS = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: Rough winds do "
    "shake the darling buds of May, And summer's lease hath all too short a date; Sometime too hot the "
    "eye of heaven shines, And often is his gold complexion dimm'd; And every fair from fair sometime "
    "declines, By chance or nature's changing course untrimm'd;",
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer The slings "
    "and arrows of outrageous fortune, Or to take arms against a sea of troubles And by opposing end "
    "them. To die: to sleep; No more; and by a sleep to say we end The heart-ache and the thousand "
    "natural shocks That flesh is heir to,",
)


def windows(text: str, path: Path, stride: int = 8) -> Path:
    """80 character ids in, the next one out: an .npz of float ids (exact in float32) and labels."""
    ids = encode(text)
    starts = range(0, len(ids) - SEQ_LEN, stride)
    x = np.stack([ids[s : s + SEQ_LEN] for s in starts]).astype(np.float32)
    y = np.array([ids[s + SEQ_LEN] for s in starts], np.int64)
    np.savez(path, x=x, y=y)
    return path


def text_data(tmp: Path) -> tuple[list[Path], Path]:
    """Each device's own lines as windows, and both texts as the held-out set."""
    return [windows(t, tmp / f"text-{i}.npz") for i, t in enumerate(TEXTS)], windows(
        " ".join(TEXTS), tmp / "test.npz", stride=16
    )


def sensor_data(tmp: Path) -> tuple[list[Path], Path]:
    """UCI HAPT's raw windows (``--dataset har:windows``): users 1 and 2 are the devices, user 3 the held-out set."""
    from fedge.simulations.har import hapt_windows

    x, y, users = hapt_windows()
    paths = []
    for i, user in enumerate((1, 2, 3)):
        mine = users == user
        paths.append(tmp / f"user-{user}.npz")
        np.savez(paths[-1], x=x[mine], y=y[mine])
    return paths[:2], paths[2]


CASES = [
    pytest.param(GRU, (SEQ_LEN,), 80, text_data, 1.0, id="shakespeare_gru"),
    pytest.param(HAR, (128, 6), 12, sensor_data, 0.05, id="har_cnn1d"),
]


@pytest.mark.parametrize(("model", "shape", "classes", "data", "lr"), CASES)
def test_a_rollout_installs_a_built_model_and_a_secagg_dp_round_trains_it(
    tmp_path, mosquitto, model, shape, classes, data, lr
):
    name = model.stem
    fleet = DaemonFleet(tmp_path / "w", 2, mosquitto.url, secagg_training(2, batch_size=10, learning_rate=lr))
    spec = load_spec(model)
    assert spec.input_shape == shape and spec.num_classes == classes
    local, fleet.test_data = data(tmp_path)

    fleet.release_model(model, f"{name}-0")
    t0 = time.monotonic()
    with fleet:
        fleet.wait_connected()
        # The daemons started on the zoo's mlp and the digits they were made with. Each device's own
        # data (text or sensor windows) replaces them before the rollout: a daemon loads its
        # examples for the new architecture when the release installs.
        for i, a in enumerate(fleet.agents):
            with AgentStore(a.db) as s:
                with s.db.conn:
                    s.db.execute("delete from examples")
                got = import_examples(s, local[i], spec)
                assert got.train >= 30
        view = fleet.roll_out(f"{name}-0")
        assert view.progress.status is Status.COMPLETED and view.counts["installed"] == 2, view.to_dict()
        for i in range(2):
            assert f"now training model {name}" in fleet.log(i)
            assert fleet.agent_rows(i, "select version from releases where slot = 'current'") == [(f"{name}-0",)]

        # serve --model NAME: one SecAgg+ round with distributed DP on the installed model
        fleet.training = dataclasses.replace(fleet.training, model_name=name)
        (report,) = fleet.serve(rounds=1)
        assert (report.status, report.participants) == ("completed", 2), report
        assert report.model_version == f"{name}-r1" and report.accuracy is not None
        assert report.epsilon is not None and report.epsilon > 0
        for i in range(2):
            assert fleet.trained(i, report.round_id) == 1, fleet.log(i)
            log = fleet.log(i)
            assert "sent secagg.masked_input" in log and "contribution recorded: mode distributed z 0.5" in log
    assert time.monotonic() - t0 < 90

    store = Store(str(fleet.db))
    try:
        before, after = store.model(f"{name}-0"), store.model(f"{name}-r1")
        assert after.architecture == name and after.parent == f"{name}-0"
        assert after.weights.size == before.weights.size == spec.num_params
        assert not np.array_equal(after.weights, before.weights)  # the round moved the weights
        row = next(store.db.query("select model_sha256 from releases where version = ?", [f"{name}-r1"]))
        assert row["model_sha256"]
    finally:
        store.close()

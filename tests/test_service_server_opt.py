"""serve --server-opt/--server-lr/--prox-mu with real daemons on Mosquitto: the plan carries FedProx's
mu to the devices, the server's FedAdam step moves no weight by more than its learning rate, and
its state is saved each round and restored by the next coordinator process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.coordinator.rounds.server_opt import ServerOptConfig, ServerOptKind
from fedge.coordinator.store import Store
from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.timeout(240)]

ETA = 0.01


def test_fedadam_on_the_released_mean_and_fedprox_on_devices_across_a_restart(tmp_path, mosquitto):
    training = secagg_training(2, prox_mu=0.1)
    opt = ServerOptConfig(ServerOptKind.FEDADAM, learning_rate=ETA)
    with DaemonFleet(tmp_path, 2, mosquitto.url, training) as fleet:
        first = fleet.serve(rounds=1, server_opt=opt)
        second = fleet.serve(rounds=1, server_opt=opt)  # a new coordinator process on the same store
    assert [r.status for r in first + second] == ["completed", "completed"], [r.reason for r in first + second]
    store = Store(str(fleet.db))
    try:
        rows = list(store.rounds())
        assert [json.loads(r["plan"])["training"]["prox_mu"] for r in rows] == [0.1, 0.1]
        state = store.server_opt_state("fedadam")
        assert state is not None and state["steps"] == 2  # restored after the restart, then stepped again
        moved = [np.abs(store.model(r["model_out"]).weights - store.model(r["model_in"]).weights).max() for r in rows]
        # FedAdam's first step moves no coordinate by more than eta (m/(sqrt(v)+tau) <= 1); its second by
        # at most 0.19/sqrt(0.0199) < 1.35 eta for a steady delta (bounded here by 2 eta)
        assert 0 < moved[0] <= ETA * 1.01 and 0 < moved[1] <= 2 * ETA, moved
    finally:
        store.close()

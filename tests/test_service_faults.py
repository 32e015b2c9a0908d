"""Faults mid-round, each judged by the SQLite state afterwards: the coordinator process is killed
(SIGKILL) and restarted; the broker is killed and restarted. Every round completes or is abandoned
with a reason, and no upload is lost from a completed round or counted twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from fedge.agent.core import wire
from fedge.agent.core.messages.rounds import RoundPlan
from fedge.agent.core.transport.base import MQTT_5
from fedge.agent.core.update import decode_aggregate
from fedge.coordinator.service.service import RESTARTED, CoordinatorService
from fedge.coordinator.store import Store
from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import ROOT, AgentThreads, make_fleet, serve_command, service_config, wait_for_row

pytestmark = [needs_mosquitto, pytest.mark.mosquitto]
AGENTS = 4


def check_exactly_once(store: Store) -> None:
    """Each round ended with a reason; each completed round counted at most its accepted uploads.

    One stored upload per (round, device, stage) is the table's primary key, so it is not asserted
    here; that nothing was counted twice is shown by the aggregate itself (the broker test
    rebuilds FedAvg from the stored uploads).
    """
    for r in store.rounds():
        assert r["status"] in ("completed", "abandoned") and r["reason"], r
        if r["status"] == "completed":
            first = json.loads(r["plan"])["secagg"] and "secagg.masked_input" or "round.plain_update"
            accepted = store.db.execute(
                "select count(*) from uploads where round_id = ? and stage = ? and status = 'accepted'",
                [r["round_id"], first],
            ).fetchone()[0]
            assert 0 < r["participants"] <= accepted <= r["selected"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_coordinator_killed_mid_round_and_restarted(mosquitto, tmp_path) -> None:
    fleet = make_fleet(tmp_path, AGENTS)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with AgentThreads(fleet, mosquitto.url, MQTT_5, delay_s=1.5), open(tmp_path / "coordinator.log", "wb") as log:
        first = subprocess.Popen(serve_command(fleet, mosquitto.url, 3), cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            # round 1 completes; kill while round 2's cohort is training
            wait_for_row(fleet.db, "select * from rounds where round_id = 2 and status = 'open' and selected > 0")
            time.sleep(0.5)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = time.time()
        finally:
            if first.poll() is None:
                first.kill()
        second = subprocess.run(
            serve_command(fleet, mosquitto.url, 2), cwd=ROOT, env=env, stdout=log, stderr=log, timeout=120
        )
    assert second.returncode == 0, (tmp_path / "coordinator.log").read_text()[-3000:]
    store = Store(str(fleet.db))
    try:
        rounds = {r["round_id"]: r for r in store.rounds()}
        assert [rounds[i]["status"] for i in (1, 2, 3, 4)] == ["completed", "abandoned", "completed", "completed"]
        assert rounds[2]["reason"] == RESTARTED
        check_exactly_once(store)
        # nothing of the dead round was counted after the restart: late copies were rejected as stale
        late = store.db.execute(
            "select count(*) from uploads where round_id = 2 and received_at > ?", [killed_at]
        ).fetchone()[0]
        assert late == 0
        stale = [r for r in store.db["rejections"].rows if r["kind"] == "stale"]
        assert all(r["round_id"] == 2 for r in stale)
        assert {m.version for m in [store.model(rounds[i]["model_out"]) for i in (1, 3, 4)]} == {
            "mlp-r1",
            "mlp-r3",
            "mlp-r4",
        }
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_broker_killed_mid_round_and_restarted(mosquitto, tmp_path) -> None:
    fleet = make_fleet(tmp_path, AGENTS)
    cfg = service_config(
        fleet,
        mosquitto.url,
        rounds=2,
        mqtt_protocol=MQTT_5,
        checkin_window_s=20.0,
        training=dict(secagg=False, train_deadline_s=40.0),
    )
    restarted = threading.Event()

    def crash_broker() -> None:
        wait_for_row(fleet.db, "select * from rounds where round_id = 1 and status = 'open' and selected > 0")
        time.sleep(0.3)  # tasks are out, the agents are training
        mosquitto.kill()
        time.sleep(1.0)
        mosquitto.start()
        restarted.set()

    killer = threading.Thread(target=crash_broker, daemon=True)
    killer.start()
    with AgentThreads(fleet, mosquitto.url, MQTT_5, delay_s=2.0):
        reports = CoordinatorService(cfg, rng=np.random.default_rng(0)).run()
    killer.join(5)
    assert restarted.is_set()
    assert all(r.status in ("completed", "abandoned") and r.reason for r in reports)
    assert reports[-1].status == "completed"
    store = Store(str(fleet.db))
    try:
        check_exactly_once(store)
        # the new model is exactly FedAvg of the stored, accepted uploads: each counted once
        for r in store.rounds():
            if r["status"] != "completed":
                continue
            plan = RoundPlan.from_dict(json.loads(r["plan"]))
            w_in, w_out = store.model(r["model_in"]).weights, store.model(r["model_out"]).weights
            total = np.zeros(w_in.size + 1, np.uint64)
            for u in store.uploads(r["round_id"], "round.plain_update"):
                if u["status"] == "accepted":
                    total += wire.decode(u["payload"]).vector
            mask = np.uint64((1 << plan.quantization.bits) - 1)
            agg = decode_aggregate((total & mask).astype(np.uint32), plan, w_in.size)
            np.testing.assert_allclose(w_out, w_in + agg.mean_delta, rtol=0, atol=1e-6)
            assert r["participants"] == sum(
                1 for u in store.uploads(r["round_id"], "round.plain_update") if u["status"] == "accepted"
            )
    finally:
        store.close()

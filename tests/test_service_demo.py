"""The README's main job, small: ``fedge-coordinator demo`` as a user runs it, with ``--json``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer
from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.service.demo import DemoConfig, daemon_available, run_demo
from fedge.coordinator.store import Store
from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import ROOT


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_runs_and_writes_the_rounds_json(tmp_path) -> None:
    out = tmp_path / "rounds.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fedge.coordinator.service.cli import main; main()",
            "--log-level",
            "WARNING",
            "demo",
            "--agents",
            "4",
            "--rounds",
            "2",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "dp distributed, secagg on" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("round ")]
    assert len(lines) == 2 and all("accuracy" in ln and "epsilon" in ln for ln in lines)
    rounds = json.loads(out.read_text())["rounds"]
    assert [set(r) for r in rounds] == [{"round", "accuracy", "loss", "participants", "dropped", "epsilon"}] * 2
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["participants"] == 4 and r["dropped"] == 0 and 0 <= r["accuracy"] <= 1 for r in rounds)
    assert 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"]  # composed across rounds
    # every agent process was stopped: none outlives the demo
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_demo_runs_buffered_mode_and_counts_versions(tmp_path) -> None:
    out = tmp_path / "rounds.json"
    args = ["--log-level", "WARNING", "demo", "--mode", "buffered", "--buffer", "2", "--agents", "4"]
    args += ["--rounds", "3", "--json", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(
        [sys.executable, "-c", "from fedge.coordinator.service.cli import main; main()", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "buffered mode without DP" in proc.stdout and "dp off, secagg on" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("version ")]
    assert [ln.split(":")[0] for ln in lines] == ["version 1/3", "version 2/3", "version 3/3"], proc.stdout
    rounds = json.loads(out.read_text())["rounds"]
    assert len(rounds) == 3 and all(r["participants"] == 2 and r["epsilon"] is None for r in rounds), rounds


@pytest.mark.slow
@pytest.mark.mosquitto
@needs_mosquitto
@pytest.mark.timeout(240)
def test_ten_fedge_agent_run_processes_on_mosquitto_learn_with_secagg(mosquitto, tmp_path) -> None:
    """The real daemon, not the stand-in: 10 ``fedge-agent run`` processes, 3 SecAgg+ rounds."""
    if not daemon_available():
        pytest.skip("no agent daemon in this install")
    training = TrainingConfig(
        goal=10,
        min_clients=6,
        secagg=True,
        dp_mode="off",
        epochs=2,
        learning_rate=0.2,
        batch_size=16,
        train_deadline_s=60.0,
        stage_timeout_s=10.0,
    )
    cfg = DemoConfig(
        agents=10,
        rounds=3,
        training=training,
        broker_url=mosquitto.url,
        json_path=str(tmp_path / "rounds.json"),
        workdir=str(tmp_path / "work"),
        checkin_window_s=120.0,
    )
    lines: list[str] = []
    reports = run_demo(cfg, echo=lines.append)
    assert not any("stand-in" in ln for ln in lines), lines
    assert [r.status for r in reports] == ["completed"] * 3, [r.reason for r in reports]
    assert all(r.participants == 10 for r in reports)
    store = Store(str(tmp_path / "work" / "coordinator.db"))
    try:
        w0 = store.model("mlp-0").weights
        assert all(json.loads(r["plan"])["secagg"] for r in store.rounds())
        assert store.count_uploads(3, "secagg.masked_input") == 10
    finally:
        store.close()
    with np.load(tmp_path / "work" / "test.npz") as f:
        acc0 = Trainer(load_spec("mlp")).evaluate(w0, f["x"], f["y"]).accuracy
    assert reports[-1].accuracy >= acc0 + 0.25, (acc0, [r.accuracy for r in reports])


@pytest.mark.timeout(240)
def test_demo_with_a_given_broker_that_speaks_only_mqtt_311_finds_its_version(embedded_broker, tmp_path) -> None:
    """``demo --broker URL`` does not force MQTT 5: on the embedded broker (3.1.1 only) the coordinator
    and the real agent daemons fall back to 3.1.1 and the round completes (it waited 10 s and exited 9)."""
    if not daemon_available(embedded=True):
        pytest.skip("no agent daemon in this install")
    training = TrainingConfig(goal=2, min_clients=2, secagg=True, dp_mode="off", epochs=1, train_deadline_s=60.0)
    cfg = DemoConfig(
        agents=2,
        rounds=1,
        training=training,
        broker_url=embedded_broker.url,
        workdir=str(tmp_path / "work"),
        checkin_window_s=60.0,
    )
    lines: list[str] = []
    reports = run_demo(cfg, echo=lines.append)
    assert not any("stand-in" in ln for ln in lines), lines
    assert [r.status for r in reports] == ["completed"], [r.reason for r in reports]
    assert reports[0].participants == 2

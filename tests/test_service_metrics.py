"""Prometheus text metrics (``serve --metrics-port``): scraped from a running coordinator with real agents on
Mosquitto, and through the CLI; the values match what the store recorded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedge.agent.core.transport.base import MQTT_5
from fedge.coordinator.fleet.controller import create_rollout
from fedge.coordinator.fleet.rollouts import Criteria, Spec, Target
from fedge.coordinator.service.broker import free_port
from fedge.coordinator.service.enrollment import revoke
from fedge.coordinator.service.metrics import MetricsServer
from fedge.coordinator.service.service import CoordinatorService
from fedge.coordinator.store import Store
from tests.fleet_fixtures import Fleet, put_release, truth
from tests.service_fixtures import ROOT, AgentThreads, make_fleet, service_config

pytestmark = pytest.mark.mosquitto


def _scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


@pytest.mark.timeout(180)
def test_metrics_of_a_running_coordinator_match_its_rounds(mosquitto, tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, 4)
    store = Store(str(fleet.db))
    revoke(store, "dev-03")  # its check-ins are refused: a rejection of kind unknown_device
    store.close()
    cfg = service_config(
        fleet,
        mosquitto.url,
        rounds=2,
        mqtt_protocol=MQTT_5,
        epsilon_budget=100.0,
        training=dict(dp_mode="local", noise_multiplier=1.0, clip_norm=1.0, min_clients=2),
    )
    scrapes: list[dict] = []
    service = CoordinatorService(
        cfg, rng=np.random.default_rng(0), on_round=lambda r: scrapes.append(_scrape(metrics.url)[1])
    )
    metrics = MetricsServer(
        str(fleet.db), port=0, broker_connected=lambda: service.transport is not None and service.transport.connected
    )
    with metrics, AgentThreads(fleet, mosquitto.url, MQTT_5):
        reports = service.run()
        assert [r.status for r in reports] == ["completed", "completed"], [r.reason for r in reports]
        text, after = _scrape(metrics.url)  # the service has shut down: no broker session
    assert len(scrapes) == 2
    last = scrapes[-1]
    assert last[("fedge_rounds_total", (("status", "completed"),))] == 2
    assert last[("fedge_rounds_total", (("status", "abandoned"),))] == 0
    assert last[("fedge_round_participants_total", ())] == sum(r.participants for r in reports) == 6
    assert last[("fedge_last_round_participants", ())] == 3
    assert last[("fedge_broker_connected", ())] == 1
    assert last[("fedge_epsilon_spent", ())] == pytest.approx(reports[-1].epsilon)
    assert last[("fedge_epsilon_delta", ())] > 0
    help_line = next(ln for ln in text.splitlines() if ln.startswith("# HELP fedge_epsilon_spent"))
    assert "add-or-remove-one" in help_line  # every epsilon names its neighbouring relation
    assert last[("fedge_rejections_total", (("kind", "unknown_device"),))] >= 1
    assert scrapes[0][("fedge_rounds_total", (("status", "completed"),))] == 1
    assert after[("fedge_broker_connected", ())] == 0
    drops = {k[1][0][1]: v for k, v in last.items() if k[0] == "fedge_round_drops_total"}
    assert sum(drops.values()) == sum(r.dropped for r in reports)


def test_drops_per_stage_rollout_progress_and_no_store(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, 10)
    store, clock = fleet.store, fleet.clock
    for rid, (status, dropped) in enumerate(
        [("completed", {"declined": 2, "masked_input": 1}), ("abandoned", {"advertise_keys": 4}), ("completed", {})],
        start=1,
    ):
        store.open_round(rid, goal=10, model_in="m", plan={}, now=clock())
        store.finish_round(
            rid, status, "r", clock() + 5, participants=0 if status == "abandoned" else 7, dropped=dropped, epsilon=None
        )
    store.open_round(4, goal=10, model_in="m", plan={}, now=clock())
    put_release(store, "logreg-r5", truth(), None, clock)
    create_rollout(
        store,
        Spec(
            "canary-1",
            "logreg-r5",
            Target(device_class="pi4"),
            phases=(0.2, 1.0),
            criteria=Criteria(min_executed=2),
            phase_wait_s=3600,
        ),
        clock=clock,
    )
    fleet.pump(rounds=3)  # phase 1 (2 devices) installs
    fleet.close()
    with MetricsServer(str(tmp_path / "coordinator.db"), port=0) as m:
        text, s = _scrape(m.url)
    assert s[("fedge_rounds_total", (("status", "completed"),))] == 2
    assert s[("fedge_rounds_total", (("status", "abandoned"),))] == 1
    assert s[("fedge_rounds_total", (("status", "open"),))] == 1
    assert s[("fedge_round_drops_total", (("stage", "declined"),))] == 2
    assert s[("fedge_round_drops_total", (("stage", "masked_input"),))] == 1
    assert s[("fedge_round_drops_total", (("stage", "advertise_keys"),))] == 4
    assert s[("fedge_last_round_participants", ())] == 7
    assert "fedge_epsilon_spent" not in text  # DP off: no epsilon, not a 0
    assert "fedge_broker_connected" not in text  # no live transport given
    key = (("rollout", "canary-1"), ("state", "installed"), ("version", "logreg-r5"))
    assert s[("fedge_rollout_devices", key)] == 2
    assert s[("fedge_rollout_phase", (("rollout", "canary-1"),))] == 1  # phase 2 waits for the soak time
    assert s[("fedge_rollout_status", (("rollout", "canary-1"), ("status", "active")))] == 1
    with MetricsServer(str(tmp_path / "missing.db"), port=0) as m:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(m.url, timeout=10)
        assert e.value.code == 503


def test_serve_metrics_port_serves_metrics_from_the_cli(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    log = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "wb") as f:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from fedge.coordinator.service.cli import main; main()",
                "serve",
                "--rounds",
                "0",
                "--local-port",
                str(port),
                "--db",
                "c.db",
                "--metrics-port",
                str(mport),
            ],
            cwd=tmp_path,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "no training rounds" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        assert f"metrics on http://127.0.0.1:{mport}/metrics" in log.read_text()
        text, samples = _scrape(f"http://127.0.0.1:{mport}/metrics")
        assert samples[("fedge_broker_connected", ())] == 1
        assert samples[("fedge_rounds_total", (("status", "completed"),))] == 0
        assert re.search(r"^# TYPE fedge_rounds_total counter$", text, re.M)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/", timeout=10)
        assert e.value.code == 404
    finally:
        serve.terminate()
        assert serve.wait(30) == 0, log.read_text()[-2000:]

"""The headline path says which broker it uses and prints no broker warning or traceback: with
Mosquitto installed, ``demo`` (and ``serve``) start it instead of the embedded amqtt broker, which
forgets a message after a 5 s PUBACK wait and queued nothing for offline sessions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import ROOT


@pytest.mark.slow
@needs_mosquitto
@pytest.mark.timeout(240)
def test_demo_uses_mosquitto_names_it_and_prints_no_broker_warning(tmp_path) -> None:
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
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "(Mosquitto 2." in proc.stdout.splitlines()[0], proc.stdout
    for bad in ("Traceback", "amqtt", "PUBACK", "RuntimeError", "Task was destroyed"):
        assert bad not in out, out[-3000:]
    rounds = [ln for ln in proc.stdout.splitlines() if ln.startswith("round ")]
    assert len(rounds) == 2 and all("participants 4 dropped 0" in ln for ln in rounds), rounds
    # epsilon is never printed without its delta and its neighbouring relation
    assert all(ln.endswith("at delta 1e-06 (add-or-remove-one)") for ln in rounds), rounds
    assert "waits up to 60 s for them to check in" in proc.stdout  # says what it waits for
    assert " INFO " not in out  # the demo's own lines, not the coordinator's INFO log

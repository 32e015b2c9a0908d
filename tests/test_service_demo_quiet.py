"""The headline path says only what it is doing: ``fedge-coordinator demo --agents 8 --rounds 5`` prints its
own lines and no warning, traceback or runtime banner (the banner's own tests: test_training_runtime.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.mqtt_fixtures import needs_mosquitto

PY = [sys.executable, "-c"]


@needs_mosquitto
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_of_8_agents_and_5_rounds_prints_no_warning(tmp_path) -> None:
    r = subprocess.run(
        [
            *PY,
            "from fedge.coordinator.service.cli import main; main()",
            "demo",
            "--agents",
            "8",
            "--rounds",
            "5",
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stderr == ""
    assert "warning" not in r.stdout.lower() and "traceback" not in r.stdout.lower()
    rounds = [ln for ln in r.stdout.splitlines() if ln.startswith("round ")]
    assert len(rounds) == 5 and all("participants 8 dropped 0" in ln for ln in rounds), r.stdout

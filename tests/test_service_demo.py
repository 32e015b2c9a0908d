"""The README's main job, small: ``fedge-coordinator demo`` as a user runs it, with ``--json``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.service_fixtures import ROOT


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_runs_and_writes_the_rounds_json(tmp_path) -> None:
    out = tmp_path / "rounds.json"
    proc = subprocess.run(
        [sys.executable, "-c", "from coordinator.cli import main; main()", "--log-level", "WARNING", "demo",
         "--agents", "4", "--rounds", "2", "--json", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=220,
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

"""``fedge-coordinator serve --rounds 0`` keeps serving the fleet between training campaigns: a device
enrolled while it runs takes a rollout created from the CLI, through serve's own local broker, with
the real ``fedge-agent run`` daemon; SIGTERM stops it with exit 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedge.coordinator.service.broker import free_port
from tests.profiles_fixtures import PROFILE_DIR
from tests.service_fixtures import ROOT

AGENT = [sys.executable, "-c", "from fedge.agent.cli import main; main()", "--log-level", "WARNING"]
COORD = [sys.executable, "-c", "from fedge.coordinator.service.cli import main; main()"]


def _cli(cmd: list[str], cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{cmd}\n{out.stderr[-2000:]}"
    return out.stdout


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.read_text()[-2000:] if log else ''}"
        assert proc is None or proc.poll() is None, (
            f"exited while waiting for {what}: {log.read_text()[-2000:] if log else ''}"
        )
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_serve_rounds_0_serves_enrollment_and_a_rollout_until_stopped(tmp_path: Path) -> None:
    port = free_port()
    profile = tmp_path / "local.toml"
    profile.write_text(
        (PROFILE_DIR / "trial" / "local.toml").read_text().replace("127.0.0.1:1883", f"127.0.0.1:{port}")
    )
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((60, 64), dtype=np.float32), y=rng.integers(0, 10, 60))
    adb = str(tmp_path / "agent.db")
    _cli([*AGENT, "data", "import", "d.npz", "--model", "mlp", "--test-fraction", "0.2", "--db", adb], tmp_path)

    serve_log = tmp_path / "serve.log"
    with open(serve_log, "wb") as f:
        serve = subprocess.Popen(
            [*COORD, "serve", "--rounds", "0", "--local-port", str(port), "--db", "c.db"],
            cwd=tmp_path,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    agent = None
    try:
        _wait(lambda: "no training rounds" in serve_log.read_text(), 30, "serve", serve, serve_log)
        identity = _cli(
            [*AGENT, "init", "--profile", str(profile), "--device-id", "pi-9", "--db", adb], tmp_path
        ).split()[1]
        enrolled = _cli(
            [
                *COORD,
                "devices",
                "enroll",
                "--device-id",
                "pi-9",
                "--identity",
                identity,
                "--class",
                "pi4",
                "--db",
                "c.db",
            ],
            tmp_path,
        )  # while serve runs
        release_key = re.search(r"release key ([0-9a-f]{64})", enrolled).group(1)
        _cli(
            [
                *AGENT,
                "init",
                "--profile",
                str(profile),
                "--device-id",
                "pi-9",
                "--db",
                adb,
                "--release-key",
                release_key,
            ],
            tmp_path,
        )
        agent_log = tmp_path / "agent.log"
        with open(agent_log, "wb") as f:
            agent = subprocess.Popen(
                [*AGENT[:-2], "run", "--profile", str(profile), "--db", adb],
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _cli(
            [
                *COORD,
                "rollouts",
                "create",
                "--release",
                "mlp-0",
                "--class",
                "pi4",
                "--min-executed",
                "1",
                "--db",
                "c.db",
            ],
            tmp_path,
        )

        def done() -> bool:
            view = json.loads(_cli([*COORD, "rollouts", "show", "r1", "--json", "--db", "c.db"], tmp_path))
            return view["status"] == "completed"

        _wait(done, 90, "the rollout", serve, serve_log)
        view = json.loads(_cli([*COORD, "rollouts", "show", "r1", "--json", "--db", "c.db"], tmp_path))
        assert sum(p["installed"] for p in view["phases"]) == 1, view
        assert serve.poll() is None  # still serving after the rollout
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve_log.read_text()[-2000:]
    finally:
        for p in (serve, agent):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert _cli([*COORD, "rounds", "--json", "--db", "c.db"], tmp_path).count('"round_id"') == 0  # no training

"""The device install: ``pip install .`` with no extras, in a fresh venv, is what a device needs.

It imports as ``fedge.agent`` only (``agent``, ``coordinator``, ``simulations`` fail), carries no
dp-accounting, scipy or cryptography, runs ``fedge-agent run`` through a real round on a real
Mosquitto, and a coordinator command says which extra it lacks in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_fixtures import FakeSysfs, MiniCoordinator, db_rows, digits_npz, stop, wait_for, write_profile
from tests.checkout import checkout_copy
from tests.mqtt_fixtures import needs_mosquitto

ROOT = Path(__file__).resolve().parent.parent
DEV = "dev-install"
COORDINATOR_ONLY = {"dp-accounting", "scipy", "cryptography"}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("device") / "venv"
    src = checkout_copy(tmp_path_factory.mktemp("src"))  # a build in the checkout would leave build/ there
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    out = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return venv


def _python(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_one_import_name(device_venv, tmp_path) -> None:
    assert _python(device_venv, "import fedge.agent.daemon, fedge.agent.cli", tmp_path).returncode == 0
    for name in ("agent", "coordinator", "simulations"):
        for cwd in (tmp_path, ROOT):  # from the repository root the folder is found, and refuses
            out = _python(device_venv, f"import {name}", cwd)
            assert out.returncode != 0 and ("ModuleNotFoundError" in out.stderr or "ImportError" in out.stderr), (
                name,
                cwd,
            )


def test_no_coordinator_dependencies_on_a_device(device_venv) -> None:
    out = subprocess.run(
        [str(device_venv / "bin" / "pip"), "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = {p["name"].lower() for p in json.loads(out.stdout)}
    assert not installed & COORDINATOR_ONLY, installed & COORDINATOR_ONLY
    assert {"numpy", "pynacl", "paho-mqtt", "msgpack", "click", "sqlite-utils"} <= installed


def test_a_coordinator_command_names_its_extra(device_venv, tmp_path) -> None:
    out = subprocess.run(
        [str(device_venv / "bin" / "fedge-coordinator"), "rounds"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 69
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'fedge[coordinator]'" in lines[0], out.stderr


@needs_mosquitto
def test_fedge_agent_run_from_the_device_install_takes_part_in_a_round(device_venv, tmp_path, mosquitto) -> None:
    fs = FakeSysfs(tmp_path / "sys").supply("AC", "Mains", online=1).zone(0, 40.0).set_metered(False)
    db = tmp_path / "agent.db"
    profile = write_profile(tmp_path / "profile.toml", mosquitto.url, db, fs)
    data = digits_npz(tmp_path / "digits.npz")
    agent = str(device_venv / "bin" / "fedge-agent")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    init = subprocess.run(
        [agent, "init", "--profile", str(profile), "--device-id", DEV],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert init.returncode == 0, init.stderr
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [agent, "run", "--profile", str(profile), "--data", str(data)],
            stdout=out,
            stderr=out,
            cwd=tmp_path,
            env=env,
            start_new_session=True,
        )
    try:
        with MiniCoordinator(mosquitto.url) as c:
            c.announce(1)
            wait_for(lambda: DEV in c.checkins.get(1, {}), 60, "check-in")
            c.start_round(1, [DEV])
            wait_for(lambda: c.count(1, DEV) == 1, 60, "the upload")
            c.end_round(1)
            wait_for(
                lambda: db_rows(db, "select status from round_state where round_id = 1") == [("ended",)], 20, "end"
            )
        assert stop(proc) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()

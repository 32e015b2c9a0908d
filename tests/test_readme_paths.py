"""The README's device-owner and operator paths, run end to end as a user would in a fresh directory.

Every command below is taken from the README's code blocks (the test fails if a line it runs is
no longer there) and run by bash in a temporary directory holding a copy of ``firmware_configs/``,
with HOME pointing there. Only what the machine imposes is substituted: the HEX placeholders by the
keys the previous commands printed, the trial profile's broker port 1883 and the dashboard's 8765
by free ports (``serve`` gets ``--local-port`` for it). The rest runs word for word: the device's
one store in the XDG state directory, ``serve``'s local broker, three rounds with the real daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedge.coordinator.service.broker import free_port
from tests.docs_fixtures import readme_commands, readme_snippet
from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import ROOT

BIN = Path(sys.executable).parent


class Shell:
    """Runs README lines with bash in ``cwd``, as a user with a fresh HOME and the venv on PATH."""

    def __init__(self, cwd: Path, owner: list[str], operator: list[str]) -> None:
        self.cwd, self.owner, self.operator = cwd, owner, operator
        self.env = {k: v for k, v in os.environ.items() if k not in ("XDG_STATE_HOME", "STATE_DIRECTORY", "PYTHONPATH")}
        self.env.update(HOME=str(cwd), PATH=f"{BIN}{os.pathsep}{self.env.get('PATH', '')}")

    def line(self, text: str) -> str:
        assert text in self.owner + self.operator, f"no longer in the README: {text}"
        return text

    def run(self, text: str, *subs: tuple[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = self.line(text)
        for old, new in subs:
            assert old in cmd, (old, cmd)
            cmd = cmd.replace(old, new, 1)
        out = subprocess.run(
            ["bash", "-c", cmd], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert out.returncode == 0, f"{cmd}\nexit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        return out

    def start(
        self, text: str, *extra: str, log: str, subs: tuple[tuple[str, str], ...] = ()
    ) -> subprocess.Popen[bytes]:
        cmd = self.line(text)
        for old, new in subs:
            cmd = cmd.replace(old, new, 1)
        cmd = " ".join([cmd, *extra])
        with open(self.cwd / log, "wb") as f:
            return subprocess.Popen(
                ["bash", "-c", f"exec {cmd}"], cwd=self.cwd, env=self.env, stdout=f, stderr=f, start_new_session=True
            )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -9


@pytest.mark.slow
@needs_mosquitto
@pytest.mark.timeout(400)
def test_device_owner_and_operator_paths_work_as_written(tmp_path: Path) -> None:
    owner, operator = readme_commands("fedge-agent"), readme_commands("fedge-coordinator")
    assert len(owner) >= 10 and len(operator) >= 20
    sh = Shell(tmp_path, owner, operator)
    shutil.copytree(ROOT / "firmware_configs", tmp_path / "firmware_configs")
    port = free_port()
    trial = tmp_path / "firmware_configs" / "trial" / "local.toml"
    trial.write_text(trial.read_text().replace("127.0.0.1:1883", f"127.0.0.1:{port}"))
    P = "firmware_configs/trial/local.toml"

    # ---- the device owner, before the device is enrolled
    sh.run("fedge-agent --help")
    ok = sh.run("fedge-agent check-config firmware_configs/*.toml firmware_configs/trial/local.toml")
    assert ok.stdout.count("OK ") == 4
    subprocess.run(
        ["bash", "-c", readme_snippet(r"python -c \"from sklearn[^`]*")],
        cwd=tmp_path,
        env=sh.env,
        check=True,
        timeout=60,
    )
    imported = sh.run(f"fedge-agent data import digits.npz --model mlp --test-fraction 0.2 --profile {P}")
    store = tmp_path / ".local" / "state" / "fedge" / "agent.db"
    assert str(store) in imported.stdout and store.is_file()  # the XDG state directory, no root needed
    stats = json.loads(sh.run(f"fedge-agent data stats --profile {P}").stdout)
    assert stats["train"]["examples"] + stats["test"]["examples"] == 1797
    assert json.loads(sh.run(f"fedge-agent privacy status --profile {P} --delta 1e-5").stdout)["contributions"] == 0
    device_id, identity = sh.run(f"fedge-agent init --profile {P} --device-id pi-0042").stdout.split()
    assert device_id == "pi-0042"
    assert sh.run(f"fedge-agent identity --profile {P}").stdout.split() == [device_id, identity]

    # ---- the operator enrolls it; the device trusts the keys printed
    eps = sh.run("fedge-coordinator privacy epsilon -z 1.0 -q 0.01 --rounds 1000 --delta 1e-6")
    assert eps.stdout.startswith("epsilon ")
    enrolled = sh.run(
        "fedge-coordinator devices enroll --device-id pi-0042 --identity HEX --class pi4 --tag lab", ("HEX", identity)
    ).stdout
    authority = re.search(r"enrollment authority ([0-9a-f]{64})", enrolled).group(1)
    release_key = re.search(r"release key ([0-9a-f]{64})", enrolled).group(1)
    sh.run(
        f"fedge-agent init --profile {P} --device-id pi-0042 --authority HEX --release-key HEX",
        ("HEX", authority),
        ("HEX", release_key),
    )
    assert "pi-0042" in sh.run("fedge-coordinator devices list [--json]", (" [--json]", "")).stdout

    # ---- three rounds: serve's own local broker, the real daemon on the trial profile
    serve = sh.start(
        "fedge-coordinator serve --rounds 3 --goal 1 --min-clients 1 --no-secagg --dp local "
        "--noise-multiplier 1.1 --clip 1.0",
        f"--local-port {port}",
        log="serve.log",
    )
    agent = None
    try:
        deadline = time.monotonic() + 30
        while "coordinator ready" not in (tmp_path / "serve.log").read_text() and time.monotonic() < deadline:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        agent = sh.start(f"fedge-agent run --profile {P}", log="agent.log")
        assert serve.wait(180) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        _stop(serve)
        agent_rc = _stop(agent) if agent is not None else None
    serve_log = (tmp_path / "serve.log").read_text()
    assert "Mosquitto" in serve_log and "Traceback" not in serve_log
    assert agent_rc == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert len(re.findall(r"round \d: completed .* participants 1 dropped 0", serve_log)) == 3, serve_log[-3000:]

    # ---- after the campaign, both sides read their own stores
    status = json.loads(sh.run(f"fedge-agent status --profile {P}").stdout)
    assert status["device_id"] == "pi-0042" and len(status["rounds"]) == 3
    assert json.loads(sh.run(f"fedge-agent privacy status --profile {P} --delta 1e-5").stdout)["contributions"] == 3
    rounds_table = sh.run("fedge-coordinator rounds [--json]", ("[--json]", "")).stdout
    assert rounds_table.count("completed") == 3
    assert len(json.loads(sh.run("fedge-coordinator rounds [--json]", ("[--json]", "--json")).stdout)["rounds"]) == 3
    assert sh.run("fedge-coordinator privacy history --campaign default").stdout.count("round ") == 3
    assert "mlp-r3" in sh.run("fedge-coordinator releases list [--json]", ("[--json]", "")).stdout
    sh.run("fedge-coordinator releases show mlp-r1")
    _weights_file(tmp_path)
    sh.run("fedge-coordinator releases import w.npz --version fix-1 --architecture mlp --parent mlp-r1")
    sh.run("fedge-coordinator releases sign mlp-r1")
    sh.run("fedge-coordinator releases rotate-key")
    created = sh.run(
        "fedge-coordinator rollouts create --release fix-1 --class pi4 --phases 5,25,100 "
        "--max-failure-pct 10 --min-executed 5"
    ).stdout
    assert created.startswith("rollout r1: fix-1") and "1 devices" in created
    assert "r1" in sh.run("fedge-coordinator rollouts list [--json]", ("[--json]", "")).stdout
    sh.run("fedge-coordinator rollouts show r1 [--json]", (" [--json]", ""))
    assert sh.run("fedge-coordinator rollouts pause r1").stdout.strip() == "rollout r1: paused"
    sh.run("fedge-coordinator rollouts resume r1")
    sh.run("fedge-coordinator rollouts rollback r1")
    sh.run("fedge-coordinator rollouts pin device:pi-0042 mlp-r1")
    dash = sh.start("fedge-coordinator dashboard --port 8765", log="dash.log", subs=(("8765", "0"),))
    try:
        deadline = time.monotonic() + 30
        while (
            "dashboard on http://127.0.0.1:" not in (tmp_path / "dash.log").read_text() and time.monotonic() < deadline
        ):
            assert dash.poll() is None, (tmp_path / "dash.log").read_text()
            time.sleep(0.1)
        url = re.search(r"dashboard on (http://\S+)", (tmp_path / "dash.log").read_text()).group(1)
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200
    finally:
        _stop(dash)


def _weights_file(cwd: Path) -> None:
    """w.npz for `releases import`: the flat weights of a stored model (what an operator would export)."""
    import numpy as np

    from fedge.coordinator.store import Store

    store = Store(str(cwd / "fedge-coordinator.db"))
    try:
        np.savez(cwd / "w.npz", weights=np.asarray(store.model("mlp-r1").weights, dtype=np.float32))
    finally:
        store.close()

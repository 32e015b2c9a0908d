"""The agent daemon's footprint: peak RSS while it trains the MLP in a real round, against a
process that only imports the TFLite runtime and numpy (and one that also trains the same MLP
on the same data, without the daemon), plus the CPU seconds it uses idle between rounds.

Two floors put the ratio in context: the same training in a process that imports every
third-party package the daemon imports (``dependency_floor``), and in one that imports only
the least an MQTT+SecAgg agent needs (paho with ssl, pynacl, sqlite3, msgpack:
``minimal_floor``). Both are measured in the same run.

Everything runs in this machine's same session: Mosquitto (or the embedded broker when no
mosquitto binary is installed), one ``fedge-agent run`` subprocess, a test-side coordinator
running the real RoundEngine. Peak RSS is the kernel's VmHWM of each process.

Per SecAgg+ suite (``--suites``, default every suite this machine runs): ``--devices`` enrolled
``fedge-agent run`` daemons whose profiles require the suite (``[secagg] require_suite``, so the
coordinator can pick no other) and the real coordinator service in this process run one SecAgg+
round with distributed DP over Mosquitto. For each daemon: VmRSS once connected (``startup``),
VmHWM after the round (``peak``), VmRSS after the round ended and ``--idle-s`` of idling
(``steady``), and whether ``cryptography`` is mapped into it; the means over the daemons, and
each suite's over the classic suite's (ChaCha20) of the same run. Mosquitto is required here.

Run: ``.venv/bin/python bench/agent_rss.py [--epochs N] [--part plain|suites|all]``; the last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from fedge.agent.core.secagg.params import SUITE, SUITE_AES, SUITE_PQ, supported_suites  # noqa: E402
from fedge.coordinator.service.broker import EmbeddedBroker, free_port  # noqa: E402
from tests.agent_fixtures import (  # noqa: E402
    FakeSysfs,
    MiniCoordinator,
    agent_cmd,
    db_rows,
    digits_npz,
    start_agent,
    stop,
    wait_for,
    write_profile,
)

DEV = "bench-dev"
_HWM = "import re; print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)))"
BASELINE = "import numpy, tflite_runtime.interpreter; " + _HWM
TRAIN_ONLY = (
    "import sys, numpy as np; from fedge.agent.training.models import load_spec; from fedge.agent.training.trainer import Trainer; "
    "d = np.load(sys.argv[1]); t = Trainer(load_spec('mlp'), num_threads=1); "
    "t.train(t.initial_weights(), d['x'], d['y'].astype(np.int32), epochs=int(sys.argv[2]), batch_size=16, "
    "learning_rate=0.1, rng=np.random.default_rng(0)); " + _HWM
)


#: Every third-party package the daemon imports, then the same MLP training: the floor that
#: fedge's own code cannot go below with the chosen dependencies.
DEPENDENCY_FLOOR = (
    "import sys; sys.modules['pandas'] = None; import click, msgpack, nacl.bindings, paho.mqtt.client, sqlite_utils; "
    + TRAIN_ONLY
)

#: The least any MQTT+SecAgg agent needs on this stack: paho (with ssl, for TLS), pynacl,
#: stdlib sqlite3 and msgpack, no cryptography and no sqlite-utils, then the same training.
MINIMAL_FLOOR = "import msgpack, nacl.bindings, paho.mqtt.client, sqlite3, logging; " + TRAIN_ONLY

#: What each dependency group adds on top of the baseline (each in its own fresh process).
IMPORT_GROUPS = {
    "sqlite_utils (pandas blocked)": "import sys; sys.modules['pandas'] = None; import sqlite_utils",
    "paho_mqtt": "import paho.mqtt.client",
    "crypto (pynacl)": "import fedge.agent.core.crypto",
    "dp_accounting (scipy; the daemon never imports it)": "import dp_accounting",
    "whole daemon module": "import sys; sys.modules['pandas'] = None; import fedge.agent.daemon",
    "ML-KEM-768 (cryptography; the hybrid suite loads it)": "from fedge.agent.core.crypto import kem; kem.load()",
}


def vm_kib(pid: int, field: str) -> int:
    """A memory field of /proc/<pid>/status (VmHWM: peak resident, VmRSS: resident now), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def vm_hwm_kib(pid: int) -> int:
    return vm_kib(pid, "VmHWM")


def maps_cryptography(pid: int) -> bool:
    """Whether ``cryptography``'s compiled core is mapped into the process (it was imported)."""
    with open(f"/proc/{pid}/maps") as f:
        return any("cryptography/hazmat/bindings" in line for line in f)


def run_py(code: str, *args: str) -> int:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def start_broker(tmp: Path):
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if os.path.exists(mosq):
        from tests.mqtt_fixtures import MosquittoProcess

        port = free_port()
        conf = tmp / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{user}persistence false\nlog_dest stderr\n")
        b = MosquittoProcess(conf, port).start()
        return b.url, b.kill
    b = EmbeddedBroker().start()
    return b.url, b.stop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--idle-s", type=float, default=3.0)
    ap.add_argument("--part", choices=("all", "plain", "suites"), default="all")
    ap.add_argument("--suites", action="append", choices=(SUITE, SUITE_AES, SUITE_PQ), help="repeatable")
    ap.add_argument("--devices", type=int, default=3, help="daemons per SecAgg+ round")
    a = ap.parse_args()
    result: dict = {}
    if a.part in ("all", "plain"):
        result |= plain_round(a)
    if a.part in ("all", "suites"):
        result["secagg_suites"] = suite_rounds(a)
    print(json.dumps(result))


def plain_round(a: argparse.Namespace) -> dict:
    """The daemon in a plain (no SecAgg) round against the floors, as described above."""
    tmp = Path(tempfile.mkdtemp(prefix="fedge-agent-rss-"))
    url, stop_broker = start_broker(tmp)
    try:
        fs = FakeSysfs(tmp / "sys").supply("AC", "Mains", online=1).zone(0, 40.0).set_metered(False)
        db = tmp / "agent.db"
        profile = write_profile(tmp / "profile.toml", url, db, fs)
        data = digits_npz(tmp / "digits.npz", n=1797)
        subprocess.run(
            agent_cmd("init", "--profile", str(profile), "--device-id", DEV), check=True, capture_output=True, cwd=ROOT
        )
        baseline = run_py(BASELINE)
        train_only = run_py(TRAIN_ONLY, str(data), str(a.epochs))
        floor = run_py(DEPENDENCY_FLOOR, str(data), str(a.epochs))
        minimal = run_py(MINIMAL_FLOOR, str(data), str(a.epochs))
        breakdown = {
            name: round(
                (run_py("import numpy, tflite_runtime.interpreter; " + code + "; " + _HWM) - baseline) / 1024, 1
            )
            for name, code in IMPORT_GROUPS.items()
        }

        proc = start_agent(profile, tmp / "agent.log", "--data", str(data), env={"PYTHONPATH": str(ROOT)})
        try:
            with MiniCoordinator(url, epochs=a.epochs) as c:
                c.announce(1)
                wait_for(lambda: DEV in c.checkins.get(1, {}), 120, "check-in")
                after_startup = vm_hwm_kib(proc.pid)
                t0 = time.monotonic()
                c.start_round(1, [DEV])
                wait_for(lambda: c.count(1, DEV) == 1, 300, "the upload")
                round_s = time.monotonic() - t0
                c.end_round(1)
                wait_for(
                    lambda: db_rows(db, "select status from round_state where round_id = 1") == [("ended",)], 30, "end"
                )
                agent_peak = vm_hwm_kib(proc.pid)
                p = psutil.Process(proc.pid)
                time.sleep(0.5)
                cpu0 = sum(p.cpu_times()[:2])
                time.sleep(a.idle_s)
                idle_cpu = sum(p.cpu_times()[:2]) - cpu0
                rc = stop(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        stop_broker()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "baseline_import_tflite_numpy_mib": round(baseline / 1024, 1),
        "train_only_mib": round(train_only / 1024, 1),
        "agent_after_startup_mib": round(after_startup / 1024, 1),
        "agent_peak_training_mib": round(agent_peak / 1024, 1),
        "agent_peak_vs_baseline": round(agent_peak / baseline, 2),
        "agent_peak_vs_train_only": round(agent_peak / train_only, 2),
        "dependency_floor_mib": round(floor / 1024, 1),
        "dependency_floor_vs_baseline": round(floor / baseline, 2),
        "agent_peak_vs_dependency_floor": round(agent_peak / floor, 2),
        "minimal_floor_vs_baseline": round(minimal / baseline, 2),
        "target_ratio": 1.3,
        "adds_over_baseline_mib": breakdown,
        "idle_cpu_s": round(idle_cpu, 3),
        "idle_window_s": a.idle_s,
        "round_s": round(round_s, 2),
        "epochs": a.epochs,
        "exit_code": rc,
    }


class _Lines(logging.Handler):
    """Keeps the messages logged to it (the coordinator names each round's suite)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def suite_rounds(a: argparse.Namespace) -> dict:
    """One real SecAgg+ round per suite; the daemons' RSS, and ratios to the classic suite's."""
    from tests.daemon_fleet import DaemonFleet, secagg_training

    if not os.path.exists(shutil.which("mosquitto") or "/usr/sbin/mosquitto"):
        raise SystemExit("the SecAgg+ suite rounds need a mosquitto binary (the daemons speak MQTT 5)")
    suites = a.suites or list(supported_suites())
    out: dict[str, dict] = {}
    for suite in suites:
        tmp = Path(tempfile.mkdtemp(prefix="fedge-agent-rss-suite-"))
        url, stop_broker = start_broker(tmp)
        said = _Lines()
        logger = logging.getLogger("fedge.coordinator.service.service")
        logger.addHandler(said)
        logger.setLevel(logging.INFO)
        try:
            fleet = DaemonFleet(tmp / "fleet", a.devices, url, secagg_training(a.devices, epochs=a.epochs))
            for agent in fleet.agents:
                with open(agent.profile, "a") as f:
                    f.write(f'\n[secagg]\nrequire_suite = "{suite}"\n')
            with fleet:
                pids = [p.pid for p in fleet.procs]
                for i in range(a.devices):
                    wait_for(lambda i=i: "connected to" in fleet.log(i), 60, "the daemon to connect")
                time.sleep(0.5)
                startup = [vm_kib(pid, "VmRSS") for pid in pids]
                t0 = time.monotonic()
                reports = fleet.serve(rounds=1)
                round_s = time.monotonic() - t0
                peak = [vm_kib(pid, "VmHWM") for pid in pids]
                time.sleep(a.idle_s)
                steady = [vm_kib(pid, "VmRSS") for pid in pids]
                loaded = [maps_cryptography(pid) for pid in pids]
        finally:
            stop_broker()
            shutil.rmtree(tmp, ignore_errors=True)
            logger.removeHandler(said)
        if [r.status for r in reports] != ["completed"]:
            raise SystemExit(f"{suite}: the round did not complete: {reports}")
        if not any(f"SecAgg+ suite {suite} for" in m for m in said.lines):
            raise SystemExit(f"{suite}: the coordinator did not run the round with it: {said.lines}")

        def mib(values: list[int]) -> float:
            return round(sum(values) / len(values) / 1024, 2)

        out[suite] = {
            "startup_mib": mib(startup),
            "peak_mib": mib(peak),
            "steady_mib": mib(steady),
            "per_device_peak_mib": [round(v / 1024, 2) for v in peak],
            "per_device_steady_mib": [round(v / 1024, 2) for v in steady],
            "cryptography_loaded": loaded,
            "participants": reports[0].participants,
            "round_s": round(round_s, 2),
        }
    if SUITE in out:
        base = out[SUITE]
        for suite, row in out.items():
            if suite != SUITE:
                row["vs_classic"] = {
                    "peak": round(row["peak_mib"] / base["peak_mib"], 3),
                    "steady": round(row["steady_mib"] / base["steady_mib"], 3),
                    "peak_extra_mib": round(row["peak_mib"] - base["peak_mib"], 2),
                    "steady_extra_mib": round(row["steady_mib"] - base["steady_mib"], 2),
                }
    return {"devices": a.devices, "epochs": a.epochs, "idle_s": a.idle_s, "suites": out}


if __name__ == "__main__":
    main()

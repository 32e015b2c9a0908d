"""Helpers for agent daemon tests: fake sysfs trees, device profiles, the agent as a subprocess,
and a small test-side coordinator that runs one plain round with the real RoundEngine over MQTT.

Import explicitly: ``from tests.agent_fixtures import FakeSysfs, write_profile, MiniCoordinator``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedge.agent.core import topics, wire
from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.messages.device import DeviceStatus
from fedge.agent.core.messages.rounds import CheckIn, Decline, PlainUpdate, RoundAnnounce, RoundEnd
from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.coordinator.rounds.engine import PlainAggregation, RoundEngine, RoundSettings, RoundStatus
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan

ROOT = Path(__file__).resolve().parent.parent


class FakeSysfs:
    """A real directory tree shaped like /sys/class/{power_supply,thermal} plus loadavg and a metered flag."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.power = root / "power_supply"
        self.thermal = root / "thermal"
        self.loadavg = root / "loadavg"
        self.metered = root / "metered"
        self.power.mkdir(parents=True, exist_ok=True)
        self.thermal.mkdir(parents=True, exist_ok=True)
        self.set_load(0.0)

    def supply(self, name: str, kind: str, **files: str | int) -> FakeSysfs:
        d = self.power / name
        d.mkdir(exist_ok=True)
        (d / "type").write_text(kind + "\n")
        for k, v in files.items():
            (d / k).write_text(f"{v}\n")
        return self

    def zone(self, index: int, celsius: float) -> FakeSysfs:
        d = self.thermal / f"thermal_zone{index}"
        d.mkdir(exist_ok=True)
        (d / "temp").write_text(f"{int(celsius * 1000)}\n")
        return self

    def set_load(self, one_minute: float) -> FakeSysfs:
        self.loadavg.write_text(f"{one_minute:.2f} 0.10 0.05 1/123 4567\n")
        return self

    def set_metered(self, metered: bool) -> FakeSysfs:
        self.metered.write_text("1\n" if metered else "0\n")
        return self


PROFILE = """\
[device]
class = "pi4"

[compute]
threads = 1
memory_mb = 256
max_train_seconds = 120

[eligibility]
requires_charging = true
requires_idle = false
requires_unmetered = true
min_battery_pct = 20
max_temperature_c = 75
power_supply_dir = "{power}"
thermal_dir = "{thermal}"
metered_flag_file = "{metered}"

[network]
broker_url = "{broker}"
keepalive_s = 10

[privacy]
mode = "local"
clip_norm = 1.0
noise_multiplier = 1.0
epsilon_budget = {budget}

[model]
name = "mlp"
input_shape = [64]
num_classes = 10

[storage]
db_path = "{db}"
"""


def write_profile(path: Path, broker: str, db: Path, sysfs: FakeSysfs, *, budget: float = 1000.0) -> Path:
    path.write_text(
        PROFILE.format(
            power=sysfs.power, thermal=sysfs.thermal, metered=sysfs.metered, broker=broker, db=db, budget=budget
        )
    )
    return path


def digits_npz(path: Path, n: int = 400, seed: int = 0) -> Path:
    """A shard of scikit-learn's digits as the agent's local data file."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    np.savez(path, x=(x[idx] / 16.0).astype(np.float32), y=y[idx].astype(np.int64))
    return path


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedge.agent.cli import main; main()", *args]


def start_agent(profile: Path, log: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``fedge-agent run --profile`` as a subprocess (its own process group), logging to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            agent_cmd("--log-level", "DEBUG", "run", "--profile", str(profile), *extra),
            stdout=out,
            stderr=out,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def db_rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Read the agent's store from outside (WAL: readers never block the writer)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


class MiniCoordinator:
    """The coordinator's side of plain rounds, for tests: announce, collect check-ins, send tasks
    from the real :class:`RoundEngine`, and count every upload it accepted and every redelivery
    the engine refused. Its receive loop runs on a thread; messages are acked after handling."""

    def __init__(self, broker_url: str, *, epochs: int = 1) -> None:
        from tests.round_fixtures import trainer_for

        self.weights = trainer_for("mlp").initial_weights()
        self.cfg = TrainingConfig(
            epochs=epochs,
            batch_size=16,
            learning_rate=0.1,
            dp_mode="local",
            noise_multiplier=1.0,
            secagg=False,
            goal=2,
            min_clients=1,
            train_deadline_s=60.0,
        )
        self.t = MqttTransport(TransportConfig(broker_url=broker_url, client_id="mini-coordinator", clean_start=True))
        self.lock = threading.Lock()
        self.checkins: dict[int, dict[str, CheckIn]] = {}
        self.accepted: Counter[tuple[int, str]] = Counter()
        self.refused: list[tuple[int, str, str]] = []
        self.declines: list[Decline] = []
        self.statuses: list[DeviceStatus] = []
        self.engines: dict[int, RoundEngine] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MiniCoordinator:
        self.t.connect()
        self.t.subscribe(topics.ALL_DEVICES_OUT)
        self.t.subscribe(topics.ALL_DEVICES_STATUS)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.t.close()

    def announce(self, round_id: int, checkin_s: float = 60.0) -> None:
        self.t.publish(
            topics.ROUNDS, wire.encode(RoundAnnounce(round_id, "mlp", "v0", time.time() + checkin_s)), retain=True
        )

    def start_round(self, round_id: int, cohort: list[str]) -> RoundEngine:
        """Tasks for ``cohort`` (plus a ghost that never answers, so the report stage stays open)."""
        members = [*cohort, "ghost-device"]
        plan = make_plan(self.cfg, "v0", len(members), 100)
        settings = RoundSettings(goal=len(members), min_clients=1, stage_timeout_s=30)
        agg = PlainAggregation(self.weights.size + 1, plan.quantization.bits, len(members), 1)
        engine = RoundEngine(round_id, plan, settings, self.weights, members, agg, time.monotonic)
        with self.lock:
            self.engines[round_id] = engine
            out = engine.start()
        for o in out:
            if o.device_id != "ghost-device":
                self.t.publish(topics.device_in(o.device_id), wire.encode(o.message))
        return engine

    def end_round(self, round_id: int) -> None:
        self.t.publish(topics.ROUNDS, wire.encode(RoundEnd(round_id, "completed", "test", "v1")), retain=True)

    def count(self, round_id: int, device: str) -> int:
        with self.lock:
            return self.accepted[(round_id, device)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            inbound = self.t.receive(timeout=0.1)
            if inbound is None:
                continue
            try:
                self._handle(inbound.topic, wire.decode(inbound.payload))
            finally:
                self.t.ack(inbound)

    def _handle(self, topic: str, msg: object) -> None:
        device = topics.device_of(topic)
        with self.lock:
            if isinstance(msg, DeviceStatus):
                self.statuses.append(msg)
            elif isinstance(msg, CheckIn):
                self.checkins.setdefault(msg.round_id, {})[device] = msg
            elif isinstance(msg, (PlainUpdate, Decline)):
                if isinstance(msg, Decline):
                    self.declines.append(msg)
                engine = self.engines.get(msg.round_id)
                if engine is None:
                    self.refused.append((msg.round_id, device, "no such round"))
                    return
                try:
                    engine.receive(device, msg)
                except ProtocolError as e:  # a redelivery: (round, device, stage) seen before
                    self.refused.append((msg.round_id, device, str(e)))
                    return
                if isinstance(msg, PlainUpdate):
                    self.accepted[(msg.round_id, device)] += 1
                assert engine.status is RoundStatus.RUNNING or engine.status is RoundStatus.COMPLETED

"""A small enrolled fleet for coordinator service tests: digits split across devices, real keys,
agent processes (``tests.service_agent``) or in-process agent threads over a real broker.

Import explicitly: ``from tests.service_fixtures import make_fleet, AgentProcesses, AgentThreads``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.agent.core.crypto import IdentityKey
from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.service.config import ServiceConfig
from fedge.coordinator.service.enrollment import authority, enroll
from fedge.coordinator.store import Store
from tests.round_fixtures import digits_split
from tests.service_agent import AgentLoop

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Fleet:
    db: Path
    devices: tuple[str, ...]
    data: dict[str, Path]
    test_data: Path
    keys: dict[str, bytes]  # identity private seeds
    authority: bytes  # enrollment authority public key


def make_fleet(tmp: Path, n: int, *, seed: int = 0, prefix: str = "dev") -> Fleet:
    """Enroll ``n`` devices (fresh Ed25519 keys) in a new coordinator db; one digits shard each."""
    parts, test = digits_split(n, seed)
    db = tmp / "coordinator.db"
    data, keys = {}, {}
    with_store = Store(str(db))
    try:
        for i, (x, y) in enumerate(parts):
            dev = f"{prefix}-{i:02d}"
            key = IdentityKey.generate()
            enroll(with_store, dev, key.public_bytes().hex(), "pi4")
            keys[dev] = key.private_bytes()
            p = tmp / f"{dev}.npz"
            np.savez(p, x=x, y=y)
            data[dev] = p
        auth = authority(with_store).public_bytes()
    finally:
        with_store.close()
    tp = tmp / "test.npz"
    np.savez(tp, x=test[0], y=test[1])
    return Fleet(db, tuple(data), data, tp, keys, auth)


def service_config(fleet: Fleet, broker_url: str | None, **kw: object) -> ServiceConfig:
    """A fast test campaign: plain aggregation, short windows, evaluation on the held-out split."""
    training = dict(
        model_name="mlp",
        epochs=1,
        batch_size=16,
        learning_rate=0.1,
        dp_mode="off",
        secagg=False,
        goal=len(fleet.devices),
        min_clients=2,
        train_deadline_s=30.0,
        stage_timeout_s=10.0,
    )
    training.update(kw.pop("training", {}))  # type: ignore[arg-type]
    args: dict[str, object] = dict(
        db_path=str(fleet.db),
        broker_url=broker_url,
        rounds=3,
        checkin_window_s=8.0,
        eval_data=str(fleet.test_data),
        training=TrainingConfig(**training),
    )
    args.update(kw)
    return ServiceConfig(**args)  # type: ignore[arg-type]


class AgentProcesses:
    """One ``python -m tests.service_agent`` process per device."""

    def __init__(
        self, fleet: Fleet, url: str, protocol: str, devices: tuple[str, ...] | None = None, delay_s: float = 0.0
    ) -> None:
        self.fleet, self.url, self.protocol, self.delay_s = fleet, url, protocol, delay_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.devices = devices or fleet.devices

    def start(self) -> AgentProcesses:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.log = open(self.fleet.db.parent / "agents.log", "ab")  # never a pipe nobody reads
        for i, d in enumerate(self.devices):
            self.procs[d] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.service_agent",
                    "--broker",
                    self.url,
                    "--device-id",
                    d,
                    "--data",
                    str(self.fleet.data[d]),
                    "--protocol",
                    self.protocol,
                    "--seed",
                    str(i),
                    "--identity-seed",
                    self.fleet.keys[d].hex(),
                    "--authority",
                    self.fleet.authority.hex(),
                    "--delay",
                    str(self.delay_s),
                ],
                cwd=ROOT,
                env=env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()

    def __enter__(self) -> AgentProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AgentThreads:
    """In-process agent loops (one thread each, real MQTT): cheaper than processes for unit-level tests."""

    def __init__(
        self, fleet: Fleet, url: str, protocol: str, devices: tuple[str, ...] | None = None, delay_s: float = 0.0
    ) -> None:
        self.loops = []
        for i, d in enumerate(devices or fleet.devices):
            with np.load(fleet.data[d]) as f:
                self.loops.append(
                    AgentLoop(
                        url,
                        d,
                        f["x"],
                        f["y"],
                        protocol=protocol,
                        seed=i,
                        identity=IdentityKey.from_private_bytes(fleet.keys[d]),
                        authority=fleet.authority,
                        delay_s=delay_s,
                    )
                )
        self.threads = [threading.Thread(target=lp.run, daemon=True) for lp in self.loops]

    def __enter__(self) -> AgentThreads:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for lp in self.loops:
            lp.stop.set()
        for t in self.threads:
            t.join(10)


def wait_for_row(db: Path, sql: str, args: tuple = (), timeout: float = 60.0) -> dict:
    """Poll the coordinator's SQLite file (read-only, beside the writer) until ``sql`` returns a row."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            conn.row_factory = sqlite3.Row
            try:
                row = conn.execute(sql, args).fetchone()
            finally:
                conn.close()
            if row is not None:
                return dict(row)
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no row for {sql!r} within {timeout} s")


def serve_command(fleet: Fleet, url: str, rounds: int, *extra: str) -> list[str]:
    """``fedge-coordinator serve`` as a subprocess against ``url`` for this fleet."""
    return [
        sys.executable,
        "-c",
        "from fedge.coordinator.service.cli import main; main()",
        "--log-level",
        "INFO",
        "serve",
        "--db",
        str(fleet.db),
        "--broker",
        url,
        "--rounds",
        str(rounds),
        "--goal",
        str(len(fleet.devices)),
        "--min-clients",
        "2",
        "--checkin-window",
        "20",
        "--eval-data",
        str(fleet.test_data),
        *extra,
    ]

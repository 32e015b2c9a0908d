"""The demo: a whole federation on one machine. Broker, coordinator and N agent processes on loopback.

:func:`run_demo` makes a working directory, splits scikit-learn's digits across the agents (each
agent's shard imported into its own SQLite store, a held-out test split kept for the
coordinator), gives each agent a profile derived from ``firmware_configs/pi4.toml`` and an
identity, enrolls them, starts a local broker (Mosquitto when installed, else the embedded amqtt;
unless a URL is given), the coordinator
service in this process and the agents as subprocesses, prints one line per round and with
``json_path`` writes ``{"rounds": [...]}``. Every process is stopped on the way out, Ctrl-C too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedge.agent.core.errors import ConfigError, RoundFailed
from fedge.agent.core.profiles import shipped_profiles
from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.service.broker import EmbeddedBroker, MosquittoBroker, local_broker
from fedge.coordinator.service.config import ServiceConfig
from fedge.coordinator.service.enrollment import authority_public_hex, enroll
from fedge.coordinator.service.service import SERVICE_RELATION, CoordinatorService, RoundReport, checkin_printer, serve
from fedge.coordinator.store import Store

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


TEST_EXAMPLES = 300
#: Local training of the demo campaign (the rest comes from the command line).
DEMO_TRAINING = {"epochs": 2, "batch_size": 16, "learning_rate": 0.2}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What ``fedge-coordinator demo`` runs."""

    agents: int = 8
    rounds: int = 5
    training: TrainingConfig = TrainingConfig(goal=8)
    broker_url: str | None = None
    json_path: str | None = None
    workdir: str | None = None
    epsilon_budget: float = 50.0
    checkin_window_s: float = 60.0
    seed: int = 0
    agent_start_timeout_s: float = 60.0
    #: ``buffered``: devices train as they are free and groups of ``buffer`` make the versions (``rounds``)
    mode: str = "sync"
    buffer: int = 2

    def __post_init__(self) -> None:
        if not 2 <= self.agents <= 200:
            raise ConfigError(f"agents: expected 2..200, got {self.agents}")
        if self.rounds < 1:
            raise ConfigError(f"rounds: expected >= 1, got {self.rounds}")
        if self.training.model_name not in ("mlp", "logreg"):
            raise ConfigError(f"the demo trains on 8x8 digits: model mlp or logreg, not {self.training.model_name!r}")


def split_digits(agents: int, seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits (1,797 real 8x8 images), shuffled, split IID across agents, 300 held out."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype(np.int32)
    parts = np.array_split(np.arange(TEST_EXAMPLES, len(x)), agents)
    return [(x[p], y[p]) for p in parts], (x[:TEST_EXAMPLES], y[:TEST_EXAMPLES])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(doc: dict[str, Any]) -> str:
    """A profile (tables of scalars, one level of sub-tables) as TOML text."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        subs = {}
        for k, v in body.items():
            if isinstance(v, dict):
                subs[k] = v
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
        for k, v in subs.items():
            table(f"{name}.{k}", v)

    for name, body in doc.items():
        table(name, body)
    return "\n".join(lines)


def agent_profile(
    broker_url: str, db_path: Path, training: TrainingConfig, protocol: str | None = None
) -> dict[str, Any]:
    """The pi4 profile with this demo's broker, store and model, and eligibility that a busy laptop passes."""
    with open(shipped_profiles() / "pi4.toml", "rb") as f:
        doc = tomllib.load(f)
    net = {k: v for k, v in doc["network"].items() if not k.startswith("tls_")}
    net["broker_url"] = broker_url
    if protocol is not None and daemon_available(embedded=True):
        net["protocol"] = protocol
    doc["network"] = net
    doc["storage"] = {"db_path": str(db_path)}
    doc["model"] = {"name": training.model_name, "input_shape": [64], "num_classes": 10}
    doc["compute"].update(
        threads=1,
        epochs=training.epochs,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        max_train_seconds=60,
    )
    doc["eligibility"].update(requires_charging=False, requires_idle=False, max_temperature_c=125)
    doc["privacy"].update(
        mode=training.dp_mode,
        clip_norm=training.clip_norm,
        noise_multiplier=training.noise_multiplier or 1.0,
        epsilon_budget=1000.0,
    )
    return doc


def daemon_available(embedded: bool = False) -> bool:
    """Whether this install has an agent daemon (``fedge-agent run``) that can reach the broker.

    The embedded broker (amqtt) speaks MQTT 3.1.1 only: the daemon can use it once device profiles
    can say so (``[network] protocol``).
    """
    if importlib.util.find_spec("fedge.agent.daemon") is None:
        return False
    if not embedded:
        return True
    from fedge.agent.core.profiles import NetworkConfig

    return "protocol" in {f.name for f in dataclasses.fields(NetworkConfig)}


def _agent_cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedge.agent.cli import main; main()", *args]


@dataclasses.dataclass(frozen=True)
class DemoAgent:
    device_id: str
    profile: Path
    db: Path
    data: Path
    identity_hex: str
    #: the stand-in agent's identity seed (hex); the daemon keeps its own in its store
    identity_seed: str = ""


def prepare_agents(
    cfg: DemoConfig, work: Path, broker_url: str, authority_hex: str, *, use_daemon: bool, protocol: str
) -> tuple[list[DemoAgent], Path]:
    """Data shards, profiles, identities and agent stores; returns the agents and the test split file."""
    from fedge.agent.core.crypto import IdentityKey
    from fedge.agent.local_data import import_examples
    from fedge.agent.store import Store as AgentStore
    from fedge.agent.training.models import load_spec

    parts, test = split_digits(cfg.agents, cfg.seed)
    test_path = work / "test.npz"
    np.savez(test_path, x=test[0], y=test[1])
    spec = load_spec(cfg.training.model_name)
    agents = []
    for i, (x, y) in enumerate(parts):
        dev = f"demo-{i:02d}"
        d = work / dev
        d.mkdir()
        data, db, profile = d / "digits.npz", d / "agent.db", d / "profile.toml"
        np.savez(data, x=x, y=y)
        profile.write_text(dump_toml(agent_profile(broker_url, db, cfg.training, protocol)))
        with AgentStore(db) as store:
            import_examples(
                store, data, spec, split="train", test_fraction=0.0, rng=np.random.default_rng([cfg.seed, i])
            )
        if use_daemon:
            out = subprocess.run(
                _agent_cli("init", "--profile", str(profile), "--device-id", dev, "--authority", authority_hex),
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode != 0:
                raise ConfigError(f"fedge-agent init failed for {dev}: {out.stderr.strip()[-500:]}")
            identity = out.stdout.strip().split()[-1]  # "<device id> <public key hex>"
            seed = ""
        else:
            key = IdentityKey.generate()
            identity, seed = key.public_bytes().hex(), key.private_bytes().hex()
        agents.append(DemoAgent(dev, profile, db, data, identity, seed))
    return agents, test_path


def agent_command(
    agent: DemoAgent, broker_url: str, protocol: str, index: int, authority_hex: str, use_daemon: bool
) -> list[str]:
    """``fedge-agent run`` for one agent, or the test suite's stand-in loop where no daemon is usable."""
    if use_daemon:
        return _agent_cli("--log-level", "WARNING", "run", "--profile", str(agent.profile))
    if not (ROOT / "tests" / "service_agent.py").exists():
        raise ConfigError("this install has no agent daemon (fedge-agent run) to run the demo with")
    return [
        sys.executable,
        "-m",
        "tests.service_agent",
        "--broker",
        broker_url,
        "--device-id",
        agent.device_id,
        "--data",
        str(agent.data),
        "--protocol",
        protocol,
        "--seed",
        str(index),
        "--identity-seed",
        agent.identity_seed,
        "--authority",
        authority_hex,
    ]


class AgentFleet:
    """The agent subprocesses: started together, stopped with SIGTERM then SIGKILL after a bound."""

    def __init__(self, commands: list[list[str]], logs: Path) -> None:
        self.commands, self.logs = commands, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> AgentFleet:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        for i, cmd in enumerate(self.commands):
            with open(self.logs / f"agent-{i:02d}.log", "wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        return self

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def stop(self, timeout: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_demo(cfg: DemoConfig, *, echo: Callable[[str], None] = print) -> list[RoundReport]:
    """Run the demo end to end; return the round reports (also written to ``cfg.json_path``)."""
    for name in ("fedge.agent.core.migrations", "fedge.coordinator.service.enrollment", "fedge.agent.local_data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="fedge-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | MosquittoBroker | None = None
    fleet: AgentFleet | None = None
    reports: list[RoundReport] = []
    try:
        url = cfg.broker_url
        if url is None:
            broker = local_broker().start()  # Mosquitto when installed, else the embedded amqtt
            url = broker.url
        # a broker given by --broker: MQTT 5, else 3.1.1 when it refuses 5 (the daemon and serve both fall back)
        protocol = broker.protocol if broker is not None else "auto"
        use_daemon = daemon_available(embedded=protocol != "5")
        echo(
            f"demo: {cfg.agents} agents, {cfg.rounds} rounds, broker {url} "
            f"({broker.description if broker else 'given by --broker'}), dp {cfg.training.dp_mode}, "
            f"secagg {'on' if cfg.training.secagg else 'off'}"
        )
        db = work / "coordinator.db"
        store = Store(str(db))
        try:
            authority_hex = authority_public_hex(store)
            agents, test_path = prepare_agents(cfg, work, url, authority_hex, use_daemon=use_daemon, protocol=protocol)
            for a in agents:
                enroll(store, a.device_id, a.identity_hex, "pi4", ("demo",))
        finally:
            store.close()
        if not use_daemon:
            echo("demo: no fedge-agent run that can reach this broker; using the test suite's stand-in agent loop")
        commands = [agent_command(a, url, protocol, i, authority_hex, use_daemon) for i, a in enumerate(agents)]
        fleet = AgentFleet(commands, work).start()
        echo(
            f"demo: started {len(commands)} agent processes; each round waits up to {cfg.checkin_window_s:g} s "
            "for them to check in"
        )
        service_cfg = ServiceConfig(
            db_path=str(db),
            training=cfg.training,
            broker_url=url,
            rounds=cfg.rounds,
            checkin_window_s=cfg.checkin_window_s,
            epsilon_budget=cfg.epsilon_budget,
            eval_data=str(test_path),
            mqtt_protocol=protocol,
            mode=cfg.mode,
            buffer=cfg.buffer,
            concurrency=cfg.agents,
            max_staleness=max(4, cfg.agents // cfg.buffer),
        )

        done = [0]

        def progress(r: RoundReport) -> None:
            done[0] += 1
            # buffered: training tasks share the round ids, so the group's id is not a count of versions
            step = f"round {r.round_id}/{cfg.rounds}" if cfg.mode == "sync" else f"version {done[0]}/{cfg.rounds}"
            line = (
                f"{step}: accuracy {_fmt(r.accuracy, '.3f')} loss {_fmt(r.loss, '.3f')} "
                f"participants {r.participants} dropped {r.dropped} epsilon {_fmt(r.epsilon, '.3g')}"
                + (f" at delta {cfg.training.delta:g} ({SERVICE_RELATION})" if r.epsilon is not None else "")
            )
            echo(line if r.status == "completed" else f"{line} abandoned: {r.reason}")
            if fleet is not None and fleet.alive() < len(fleet.procs):
                echo(f"demo: warning: {len(fleet.procs) - fleet.alive()} agent processes exited (logs in {work})")

        service = CoordinatorService(service_cfg, on_round=progress, on_checkin=checkin_printer(echo))
        reports = serve(service)
        if cfg.json_path:
            Path(cfg.json_path).write_text(json.dumps({"rounds": [_json_round(r) for r in reports]}, indent=2) + "\n")
            echo(f"demo: wrote {cfg.json_path}")
        if not any(r.status == "completed" for r in reports):
            raise RoundFailed(f"no round completed; agent logs are in {work}")
        return reports
    finally:
        if fleet is not None:
            fleet.stop()
        if broker is not None:
            broker.stop()
        if cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _json_round(r: RoundReport) -> dict[str, Any]:
    return {
        "round": r.round_id,
        "accuracy": r.accuracy,
        "loss": r.loss,
        "participants": r.participants,
        "dropped": r.dropped,
        "epsilon": r.epsilon,
    }

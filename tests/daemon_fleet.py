"""Real ``fedge-agent run`` daemons (enrolled, with their own stores) and the real coordinator
service in this process, over a real broker, for fault tests. Each daemon can reach the broker
through its own :class:`~tests.mqtt_proxy.MqttProxy`, so one device's link can be broken.

Import explicitly: ``from tests.daemon_fleet import DaemonFleet``.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.service.config import ServiceConfig
from fedge.coordinator.service.demo import DemoConfig, prepare_agents
from fedge.coordinator.service.enrollment import authority_public_hex, enroll
from fedge.coordinator.service.service import CoordinatorService, RoundReport
from fedge.coordinator.store import Store
from tests.agent_fixtures import start_agent, stop
from tests.mqtt_proxy import MqttProxy

if TYPE_CHECKING:
    from fedge.coordinator.fleet.controller import RolloutView


def rows(db: Path | str, sql: str) -> list[dict]:
    """``sql``'s rows as dicts, read from the coordinator's store read-only (the service may still hold it)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


def secagg_training(agents: int, **kw: object) -> TrainingConfig:
    """SecAgg+ with distributed DP, every device in the cohort, short local training."""
    args: dict[str, object] = dict(
        goal=agents,
        min_clients=2,
        dp_mode="distributed",
        noise_multiplier=0.5,
        secagg=True,
        epochs=2,
        batch_size=16,
        learning_rate=0.2,
        train_deadline_s=60.0,
        stage_timeout_s=20.0,
    )
    args.update(kw)
    return TrainingConfig(**args)  # type: ignore[arg-type]


class DaemonFleet:
    """``agents`` enrolled daemons; ``url_for(i)`` is the broker URL daemon ``i`` is given."""

    def __init__(
        self,
        work: Path,
        agents: int,
        broker_url: str,
        training: TrainingConfig,
        url_for: Callable[[int], str] | None = None,
        protocol: str = "5",
        env_for: Callable[[int], dict[str, str]] | None = None,
    ) -> None:
        self.work, self.training, self.broker_url = work, training, broker_url
        self.env_for = env_for
        work.mkdir(parents=True, exist_ok=True)
        self.db = work / "coordinator.db"
        store = Store(str(self.db))
        try:
            authority = authority_public_hex(store)
            demo = DemoConfig(agents=agents, rounds=1, training=training, broker_url=broker_url, workdir=str(work))
            self.agents, self.test_data = prepare_agents(
                demo, work, broker_url, authority, use_daemon=True, protocol=protocol
            )
            for a in self.agents:
                enroll(store, a.device_id, a.identity_hex, "pi4", ("test",))
        finally:
            store.close()
        for i, a in enumerate(self.agents):
            url = url_for(i) if url_for else broker_url
            text = a.profile.read_text()
            a.profile.write_text(re.sub(r'^broker_url = ".*"$', f'broker_url = "{url}"', text, flags=re.M))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def devices(self) -> list[str]:
        return [a.device_id for a in self.agents]

    def start(self) -> DaemonFleet:
        for i, a in enumerate(self.agents):
            env = self.env_for(i) if self.env_for else None
            self.procs.append(start_agent(a.profile, self.work / f"{a.device_id}.log", env=env))
        return self

    def stop(self) -> None:
        for p in self.procs:
            stop(p)

    def __enter__(self) -> DaemonFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def service_config(self, rounds: int, **kw: object) -> ServiceConfig:
        """The coordinator's config for this fleet: its store, training, broker and test data, MQTT 5,
        a 60 s check-in window and a budget no test spends; ``kw`` overrides any of them."""
        args: dict[str, object] = dict(
            db_path=str(self.db),
            training=self.training,
            broker_url=self.broker_url,
            rounds=rounds,
            checkin_window_s=60.0,
            eval_data=str(self.test_data),
            mqtt_protocol="5",
            epsilon_budget=1000.0,
        )
        args.update(kw)
        return ServiceConfig(**args)  # type: ignore[arg-type]

    def serve(self, rounds: int = 1, **kw: object) -> list[RoundReport]:
        return CoordinatorService(self.service_config(rounds, **kw)).run()

    def release_model(self, model: Path, version: str) -> None:
        """Import a built ``.tflite`` as signed release ``version``, and have every daemon trust the
        release key (what ``fedge-agent init --release-key`` does at enrollment). Before :meth:`start`."""
        from fedge.agent.releases import ReleaseManager
        from fedge.agent.store import Store as AgentStore
        from fedge.coordinator.fleet.releases import import_model, trusted_keys

        store = Store(str(self.db))
        try:
            import_model(store, model, version=version)
            keys = trusted_keys(store)
        finally:
            store.close()
        for a in self.agents:
            with AgentStore(a.db) as s:
                for public in keys.values():
                    ReleaseManager(s.db, a.device_id).trust_key(public)

    def wait_connected(self, timeout_s: float = 60.0) -> None:
        """Until every started daemon logged its connection (commands to a device with no session yet
        would be lost)."""
        deadline = time.monotonic() + timeout_s
        while not all("connected to" in self.log(i) for i in range(len(self.agents))) and time.monotonic() < deadline:
            time.sleep(0.2)

    def roll_out(self, version: str, rollout_id: str = "to-built", timeout_s: float = 90.0) -> RolloutView:
        """``serve --rounds 0`` on this fleet's store while a rollout of ``version`` to every daemon (all
        are class pi4) runs, until it leaves ``active`` or ``timeout_s`` passes; the rollout as it ended."""
        from fedge.coordinator.fleet.controller import create_rollout, get_rollout
        from fedge.coordinator.fleet.rollouts import Spec, Status, Target

        service = CoordinatorService(self.service_config(0, checkin_window_s=30.0)).start()
        try:
            ops = Store(str(self.db))
            try:
                create_rollout(ops, Spec(rollout_id, version, Target(device_class="pi4")))
            finally:
                ops.close()
            deadline = time.monotonic() + timeout_s
            while (
                get_rollout(service.store, rollout_id).progress.status is Status.ACTIVE and time.monotonic() < deadline
            ):
                service.idle(0.5)
            return get_rollout(service.store, rollout_id)
        finally:
            service.shutdown()

    def log(self, i: int) -> str:
        return (self.work / f"{self.agents[i].device_id}.log").read_text()

    def trained(self, i: int, round_id: int) -> int:
        """How often daemon ``i`` trained in a round (its own INFO lines)."""
        return sum(1 for line in self.log(i).splitlines() if f"round={round_id}] trained " in line)

    def agent_rows(self, i: int, sql: str) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.agents[i].db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


def proxies_for(broker_port: int, agents: int, **kw: object) -> list[MqttProxy]:
    return [MqttProxy(broker_port, **kw) for _ in range(agents)]  # type: ignore[arg-type]

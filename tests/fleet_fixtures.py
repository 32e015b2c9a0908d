"""A simulated fleet for rollout tests: a coordinator store and FleetController, and agents with their
own real SQLite stores and TFLite evaluators, all speaking real wire messages over the in-memory broker.

Data: the logreg model (64 features, 10 classes) on examples labelled by a fixed linear "truth",
so a release close to the truth scores near 1.0 on every device's held-out data and a random
release about 0.1.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fedge.agent.core import topics, wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import TrainingError
from fedge.agent.core.messages.fleet import ReleaseManifest
from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.memory import InMemoryBroker, InMemoryTransport
from fedge.agent.local_data import import_examples
from fedge.agent.releases import LocalEvaluator, ReleaseManager
from fedge.agent.store import Store as AgentStore
from fedge.agent.training.models import load_spec
from fedge.coordinator.fleet.controller import FleetController, retained_rotations
from fedge.coordinator.fleet.releases import create_release, release_key, trusted_keys
from fedge.coordinator.service.enrollment import enroll
from fedge.coordinator.store import Store
from tests.fakes import FakeClock

ARCH = "logreg"
FEATURES, CLASSES = 64, 10


def truth(seed: int = 7) -> np.ndarray:
    """The linear rule that labels the data, as flat logreg weights (w then b)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=FEATURES * CLASSES), np.zeros(CLASSES)]).astype(np.float32)


def held_out(path: Path, n: int, seed: int) -> Path:
    """An .npz of ``n`` examples labelled by :func:`truth`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    w = truth()[: FEATURES * CLASSES].reshape(FEATURES, CLASSES)
    np.savez(path, x=x, y=(x @ w).argmax(axis=1))
    return path


def put_release(store: Store, version: str, weights: np.ndarray, parent: str | None, clock: FakeClock) -> None:
    store.put_model(version, weights, architecture=ARCH, parent=parent, now=clock())
    create_release(store, version, clock=clock)


class SimAgent:
    """One device: its own agent store with held-out data, a ReleaseManager, and a transport."""

    def __init__(
        self,
        broker: InMemoryBroker,
        workdir: Path,
        device_id: str,
        clock: FakeClock,
        *,
        trainers: dict[str, Any],
        fail_versions: Iterable[str] = (),
    ) -> None:
        self.device_id = device_id
        self.store = AgentStore(workdir / f"{device_id}.db")
        import_examples(
            self.store,
            held_out(workdir / f"{device_id}.npz", 20, zlib.crc32(device_id.encode())),
            load_spec(ARCH),
            split="test",
        )
        self.fail_versions = set(fail_versions)
        local = LocalEvaluator(self.store, trainers=trainers)
        self.manager = ReleaseManager(self.store.db, device_id, evaluator=self._evaluate, clock=clock)
        self._local = local
        self.transport = InMemoryTransport(TransportConfig("memory://", device_id), broker)
        self.transport.connect()
        self.transport.subscribe(topics.device_in(device_id))
        self.transport.subscribe(topics.RELEASE_KEYS + "/#")
        self.handled: list[Any] = []

    def _evaluate(self, manifest: ReleaseManifest, weights: np.ndarray) -> tuple[float, int] | None:
        if manifest.version in self.fail_versions:
            raise TrainingError("injected install failure")
        return self._local(manifest, weights)

    def pump(self) -> int:
        """Handle every queued message; return how many."""
        n = 0
        while (inbound := self.transport.receive(timeout=0)) is not None:
            msg = wire.decode(inbound.payload)
            self.handled.append(msg)
            for report in self.manager.handle(msg):
                self.transport.publish(topics.device_out(self.device_id), wire.encode(report))
            self.transport.ack(inbound)
            n += 1
        return n

    def close(self) -> None:
        self.transport.close()
        self.store.close()


class Fleet:
    """A coordinator and ``n`` enrolled simulated devices on one in-memory broker."""

    def __init__(self, workdir: Path, n: int, *, device_class: str = "pi4", tags: tuple[str, ...] = ("lab",)) -> None:
        self.workdir = workdir
        self.clock = FakeClock(1_000_000.0)
        self.broker = InMemoryBroker()
        self.store = Store(str(workdir / "coordinator.db"))
        self.controller = FleetController(self.store, clock=self.clock)
        self.transport = InMemoryTransport(TransportConfig("memory://", "coordinator"), self.broker)
        self.transport.connect()
        self.transport.subscribe(topics.ALL_DEVICES_OUT)
        self.trainers: dict[str, Any] = {}
        self.agents: dict[str, SimAgent] = {}
        self.rejected: list[str] = []
        release_key(self.store, self.clock)  # generated before enrollment, which hands devices its public key
        for i in range(n):
            self.add_agent(f"dev-{i:03d}", device_class, tags)

    def add_agent(self, device_id: str, device_class: str, tags: tuple[str, ...], **kw: Any) -> SimAgent:
        agent = SimAgent(self.broker, self.workdir, device_id, self.clock, trainers=self.trainers, **kw)
        enroll(self.store, device_id, IdentityKey.generate().public_bytes().hex(), device_class, tags, clock=self.clock)
        for public in trusted_keys(self.store).values():  # what enrollment hands the device
            agent.manager.trust_key(public)
        self.agents[device_id] = agent
        return agent

    def publish_rotations(self) -> None:
        for topic, msg in retained_rotations(self.store):
            self.transport.publish(topic, wire.encode(msg), retain=True)

    def pump(self, *, rounds: int = 50, step_s: float = 1.0, until: Callable[[], bool] | None = None) -> None:
        """Alternate coordinator ticks and agent handling until nothing moves (or ``until``)."""
        for _ in range(rounds):
            moved = 0
            while (inbound := self.transport.receive(timeout=0)) is not None:
                try:
                    self.controller.handle(topics.device_of(inbound.topic), wire.decode(inbound.payload))
                except Exception as e:  # noqa: BLE001 - recorded for the test to assert on
                    self.rejected.append(str(e))
                self.transport.ack(inbound)
                moved += 1
            for o in self.controller.tick():
                self.transport.publish(topics.device_in(o.device_id), wire.encode(o.message))
                moved += 1
            for a in self.agents.values():
                moved += a.pump()
            if until is not None and until():
                return
            if not moved:
                return
            self.clock.advance(step_s)

    def running(self) -> dict[str, str]:
        return {d: a.manager.running() for d, a in self.agents.items()}

    def close(self) -> None:
        for a in self.agents.values():
            a.close()
        self.transport.close()
        self.store.close()

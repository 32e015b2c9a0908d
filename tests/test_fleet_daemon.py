"""The agent daemon takes releases through its real loop: install, on-device evaluation, key rotation."""

from __future__ import annotations

import threading
import time

import numpy as np

from fedge.agent.cli import main as agent_main
from fedge.agent.config import resolve
from fedge.agent.core import topics, wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.messages.common import Ack
from fedge.agent.core.messages.fleet import InstallReport, InstallResult
from fedge.agent.core.release import key_id
from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.memory import InMemoryBroker, InMemoryTransport
from fedge.agent.daemon import AgentDaemon
from fedge.agent.local_data import import_examples
from fedge.agent.store import Store as AgentStore
from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer
from fedge.coordinator.fleet.controller import FleetController, create_rollout, get_rollout, retained_rotations
from fedge.coordinator.fleet.releases import create_release, release_key, rotate_key
from fedge.coordinator.fleet.rollouts import Spec, Status, Target
from fedge.coordinator.service.enrollment import enroll
from fedge.coordinator.store import Store
from tests.agent_fixtures import FakeSysfs, digits_npz, write_profile


def _drive(
    controller: FleetController, transport: InMemoryTransport, rollout_id: str, timeout: float = 30.0
) -> list[InstallReport]:
    """The service's side: tick, publish commands, record reports, until the rollout is done."""
    reports = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for o in controller.tick():
            transport.publish(topics.device_in(o.device_id), wire.encode(o.message))
        inbound = transport.receive(timeout=0.2)
        if inbound is not None:
            msg = wire.decode(inbound.payload)
            if isinstance(msg, InstallReport):
                controller.handle(topics.device_of(inbound.topic), msg)
                reports.append(msg)
            transport.ack(inbound)
        if get_rollout(controller.store, rollout_id).progress.status is not Status.ACTIVE:
            return reports
    raise AssertionError(f"rollout {rollout_id} did not finish: {get_rollout(controller.store, rollout_id).to_dict()}")


def test_daemon_installs_evaluates_and_follows_a_key_rotation(tmp_path):
    store = Store(str(tmp_path / "coordinator.db"))
    broker = InMemoryBroker()
    coord = InMemoryTransport(TransportConfig("memory://", "coordinator"), broker)
    coord.connect()
    coord.subscribe(topics.ALL_DEVICES_OUT)
    controller = FleetController(store)
    trainer = Trainer(load_spec("mlp"))
    store.put_model("mlp-a", trainer.initial_weights(), architecture="mlp")
    create_release(store, "mlp-a")

    sysfs = FakeSysfs(tmp_path / "sys").supply("AC", "Mains", online=1)
    db = tmp_path / "agent.db"
    profile = write_profile(tmp_path / "pi.toml", "mqtt://127.0.0.1:1", db, sysfs)
    public = release_key(store).public_bytes().hex()
    try:
        agent_main(["init", "--profile", str(profile), "--device-id", "pi-1", "--release-key", public])
    except SystemExit as e:
        assert e.code == 0
    with AgentStore(db) as s:
        import_examples(s, digits_npz(tmp_path / "d.npz", n=60), load_spec("mlp"), split="test")
    enroll(store, "pi-1", IdentityKey.generate().public_bytes().hex(), "pi4", ("lab",))

    daemon = AgentDaemon(
        resolve(profile, device_id="pi-1", loadavg_path=str(sysfs.loadavg)),
        transport_factory=lambda tc: InMemoryTransport(tc, broker),
    )
    thread = threading.Thread(target=daemon.serve, daemon=True)  # the store belongs to the daemon's thread
    thread.start()
    deadline = time.monotonic() + 20
    while not getattr(daemon, "_connected", False) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        create_rollout(store, Spec("first", "mlp-a", Target(devices=("pi-1",))))
        (report,) = _drive(controller, coord, "first")
        assert report.result is InstallResult.INSTALLED and report.running == "mlp-a"
        assert report.evaluated == 60 and 0.0 <= report.metric <= 1.0 and report.baseline is None

        # rotate the release key: the device learns the new one from the retained rotation, no re-enrollment
        rotate_key(store)
        for topic, msg in retained_rotations(store):
            coord.publish(topic, wire.encode(msg), retain=True)
        trained = trainer.train(
            trainer.initial_weights(),
            *_digits(tmp_path),
            epochs=3,
            batch_size=32,
            learning_rate=0.1,
            rng=np.random.default_rng(0),
        )
        store.put_model("mlp-b", trainer.initial_weights() + trained.delta, architecture="mlp", parent="mlp-a")
        rel = create_release(store, "mlp-b")
        assert rel.manifest.key_id == key_id(release_key(store).public_bytes()) != key_id(bytes.fromhex(public))
        create_rollout(store, Spec("second", "mlp-b", Target(tags=("lab",))))
        (report,) = _drive(controller, coord, "second")
        assert report.result is InstallResult.INSTALLED and report.running == "mlp-b", report
        assert report.metric > report.baseline  # trained beats initial on the device's held-out digits
        assert get_rollout(store, "second").progress.status is Status.COMPLETED
    finally:
        daemon.request_stop()
        coord.publish(topics.device_in("pi-1"), wire.encode(Ack("pi-1", 0, "-", "wake")))  # ends the blocking wait
        thread.join(15)
        coord.close()
        store.close()
    assert not thread.is_alive()
    with AgentStore(db) as s:
        from fedge.agent.releases import ReleaseManager

        m = ReleaseManager(s.db, "pi-1")
        assert m.running() == "mlp-b" and m.previous().manifest.version == "mlp-a"


def _digits(tmp_path):
    with np.load(digits_npz(tmp_path / "train.npz", n=300, seed=1)) as f:
        return f["x"].astype(np.float32), f["y"].astype(np.int32)

"""The coordinator service serves rollouts over real MQTT (its embedded broker): the initial model is
a signed release, install reports reach the FleetController, a stranger's report is rejected."""

from __future__ import annotations

import threading
import time

from fedge.agent.core import topics, wire
from fedge.agent.core.messages.fleet import InstallReport, InstallResult
from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.agent.releases import ReleaseManager
from fedge.agent.store import Store as AgentStore
from fedge.coordinator.fleet.controller import create_rollout, get_rollout
from fedge.coordinator.fleet.releases import create_release, list_releases, rotate_key, trusted_keys
from fedge.coordinator.fleet.rollouts import Spec, Status, Target
from fedge.coordinator.service.service import CoordinatorService
from fedge.coordinator.store import Store
from tests.service_fixtures import make_fleet, service_config


def _device(url: str, device_id: str, manager: ReleaseManager, stop: threading.Event, ready: threading.Event) -> None:
    """A device's release loop over MQTT: commands in, reports out (the daemon's _on_fleet, minus the outbox)."""
    t = MqttTransport(TransportConfig(url, device_id, clean_start=True, protocol="3.1.1"))  # amqtt speaks 3.1.1
    t.connect()
    t.subscribe(topics.device_in(device_id))
    t.subscribe(topics.RELEASE_KEYS + "/#")
    ready.set()
    try:
        while not stop.is_set():
            inbound = t.receive(timeout=0.2)
            if inbound is None:
                continue
            for report in manager.handle(wire.decode(inbound.payload)):
                t.publish(topics.device_out(device_id), wire.encode(report))
            t.ack(inbound)
    finally:
        t.close()


def test_service_runs_a_rollout_between_rounds(tmp_path):
    fleet = make_fleet(tmp_path, 2)
    service = CoordinatorService(service_config(fleet, None, rounds=0)).start()
    stop = threading.Event()
    threads = []
    try:
        store = service.store
        (initial,) = list_releases(store)  # the initial global model was published as a release
        assert initial.version == "mlp-0" and initial.manifest.source == "initial"
        for dev in fleet.devices:
            with AgentStore(tmp_path / f"{dev}-agent.db") as s:  # enrollment hands the device the release key
                for public in trusted_keys(store).values():
                    ReleaseManager(s.db, dev).trust_key(public)
            ready = threading.Event()
            th = threading.Thread(
                target=_run_device, args=(tmp_path, service.broker_url, dev, stop, ready), daemon=True
            )
            th.start()
            threads.append(th)
            assert ready.wait(20)
        ops = Store(str(fleet.db))  # the operator's CLI opens the same database file
        try:
            create_rollout(ops, Spec("r1", "mlp-0", Target(device_class="pi4")))
        finally:
            ops.close()
        # a report naming a rollout this device is not in is rejected and recorded, nothing else changes
        bogus = InstallReport(fleet.devices[0], "nope", "mlp-0", InstallResult.INSTALLED, "mlp-0", None, None, 0, "")
        t = MqttTransport(TransportConfig(service.broker_url, "intruder", clean_start=True, protocol="3.1.1"))
        t.connect()
        t.publish(topics.device_out(fleet.devices[0]), wire.encode(bogus))
        t.close()
        deadline = time.monotonic() + 30
        while get_rollout(store, "r1").progress.status is Status.ACTIVE and time.monotonic() < deadline:
            service.idle(0.5)
        view = get_rollout(store, "r1")
        assert view.progress.status is Status.COMPLETED and view.counts["installed"] == 2, view.to_dict()
        kinds = [r["kind"] for r in store.db.query("select kind from rejections")]
        assert kinds == ["fleet"]

        # the operator rotates the release key from the CLI while the service runs; devices follow it
        ops = Store(str(fleet.db))
        try:
            rotate_key(ops)
            ops.put_model("mlp-fix", ops.model("mlp-0").weights + 0.01, architecture="mlp", parent="mlp-0")
            assert create_release(ops, "mlp-fix").manifest.key_id != initial.manifest.key_id
            create_rollout(ops, Spec("r2", "mlp-fix", Target(device_class="pi4")))
        finally:
            ops.close()
        deadline = time.monotonic() + 30
        while get_rollout(store, "r2").progress.status is Status.ACTIVE and time.monotonic() < deadline:
            service.idle(0.5)
        view = get_rollout(store, "r2")
        assert view.progress.status is Status.COMPLETED and view.counts["installed"] == 2, view.to_dict()
    finally:
        stop.set()
        for th in threads:
            th.join(10)
        service.shutdown()
    for dev in fleet.devices:
        with AgentStore(tmp_path / f"{dev}-agent.db") as s:
            assert ReleaseManager(s.db, dev).running() == "mlp-fix"


def _run_device(tmp_path, url: str, dev: str, stop: threading.Event, ready: threading.Event) -> None:
    with AgentStore(tmp_path / f"{dev}-agent.db") as s:
        _device(url, dev, ReleaseManager(s.db, dev), stop, ready)

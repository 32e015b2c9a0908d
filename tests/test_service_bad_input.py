"""Bad input reaches a running coordinator over a real broker: garbage bytes, an oversized payload,
a replayed upload, an update with NaN, one of the wrong shape, a message from an unknown device and
one naming another device. Each is rejected and logged (and recorded in SQLite); the rounds go on."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from fedge.agent.core import topics, wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.messages.rounds import CheckIn, PlainUpdate, RoundAnnounce, RoundEnd, Task
from fedge.agent.core.transport import TransportConfig, open_transport
from fedge.agent.core.transport.base import MQTT_311
from fedge.agent.core.transport.chunks import ENVELOPE_PREFIX
from fedge.coordinator.service.enrollment import enroll
from fedge.coordinator.service.service import CoordinatorService
from fedge.coordinator.store import Store
from tests.service_fixtures import AgentThreads, make_fleet, service_config

HONEST = 5
MAX_BYTES = 64 * 1024


class Attacker:
    """A rogue enrolled device plus raw publishes on other devices' topics, all during round 1."""

    def __init__(self, url: str) -> None:
        self.t = open_transport(TransportConfig(broker_url=url, client_id="rogue", protocol=MQTT_311))
        self.stop = threading.Event()
        self.done = threading.Event()
        self.captured: dict[str, bytes] = {}
        self.thread = threading.Thread(target=self.run, daemon=True)

    def pub(self, device: str, payload: bytes) -> None:
        self.t.publish(topics.device_out(device), payload)

    def run(self) -> None:
        t = self.t
        t.connect()
        for f in (topics.ROUNDS, topics.device_in("rogue"), topics.device_out("dev-00")):
            t.subscribe(f)
        while not self.stop.is_set():
            inbound = t.receive(0.1)
            if inbound is None:
                continue
            t.ack(inbound)
            if inbound.topic == topics.device_out("dev-00"):
                msg = wire.decode(inbound.payload)
                self.captured.setdefault(type(msg).__name__, inbound.payload)
                continue
            msg = wire.decode(inbound.payload)
            if isinstance(msg, RoundAnnounce):
                self.pub(
                    "rogue",
                    wire.encode(CheckIn("rogue", msg.round_id, "pi4", msg.model_version, msg.round_id == 1, 100, 0.0)),
                )
            elif isinstance(msg, Task) and msg.round_id == 1:
                self.attack(msg)
            elif isinstance(msg, RoundEnd) and msg.round_id == 1 and "PlainUpdate" in self.captured:
                self.pub("dev-00", self.captured["PlainUpdate"])  # a replay of round 1's upload, later
                self.done.set()
        t.close()

    def attack(self, task: Task) -> None:
        rid, n = task.round_id, task.weights.size + 1
        good = np.zeros(n, np.uint32)
        self.pub("dev-01", b"\x00\x01garbage that is no fedge message")
        self.pub("dev-01", ENVELOPE_PREFIX + b"\xc1\xc1\xc1")  # a fedge envelope that is malformed inside
        self.pub("dev-02", ENVELOPE_PREFIX + bytes(2 * MAX_BYTES))  # oversized
        nan = PlainUpdate(rid, "dev-02", good)
        object.__setattr__(nan, "vector", np.full(n, np.nan, np.float32))  # bypass the constructor's check
        self.pub("dev-02", wire.encode(nan))
        self.pub("rogue", wire.encode(PlainUpdate(rid, "rogue", np.zeros(5, np.uint32))))  # wrong shape
        self.pub("stranger", wire.encode(PlainUpdate(rid, "stranger", good)))  # never enrolled
        self.pub("dev-03", wire.encode(PlainUpdate(rid, "dev-04", good)))  # names another device
        self.pub("dev-00", self.captured["CheckIn"])  # a replayed upload (redelivery)


@pytest.mark.timeout(120)
def test_bad_input_is_rejected_logged_and_rounds_go_on(embedded_broker, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    url = embedded_broker.url
    fleet = make_fleet(tmp_path, HONEST)
    store = Store(str(fleet.db))
    enroll(store, "rogue", IdentityKey.generate().public_bytes().hex(), "pi4")
    store.close()
    cfg = service_config(
        fleet, url, rounds=2, mqtt_protocol=MQTT_311, max_message_bytes=MAX_BYTES, training=dict(goal=HONEST)
    )
    attacker = Attacker(url)
    attacker.thread.start()
    try:
        with AgentThreads(fleet, url, MQTT_311, delay_s=1.5):
            reports = CoordinatorService(cfg).run()
    finally:
        attacker.stop.set()
        attacker.thread.join(10)

    assert [r.status for r in reports] == ["completed", "completed"], [r.reason for r in reports]
    assert [r.participants for r in reports] == [HONEST, HONEST]
    assert attacker.done.is_set()
    store = Store(str(fleet.db))
    try:
        kinds = [r["kind"] for r in store.db["rejections"].rows]
        assert sorted(kinds) == sorted(["wire", "wire", "unknown_device", "spoofed", "duplicate", "stale"]), kinds
        rej = {r["kind"]: r for r in store.db["rejections"].rows}
        assert rej["unknown_device"]["device_id"] == "stranger"
        assert rej["duplicate"]["device_id"] == "dev-00" and rej["duplicate"]["round_id"] == 1
        assert rej["stale"]["round_id"] == 1
        rogue = list(store.db.query("select * from uploads where device_id = 'rogue' and stage = 'round.plain_update'"))
        assert len(rogue) == 1 and rogue[0]["status"] == "rejected" and "shape" in rogue[0]["reason"]
        for rid in (1, 2):
            accepted = list(
                store.db.query(
                    "select device_id from uploads where round_id = ? and stage = 'round.plain_update' and status = 'accepted'",
                    [rid],
                )
            )
            assert sorted(r["device_id"] for r in accepted) == list(fleet.devices)
    finally:
        store.close()
    text = caplog.text
    assert "not a fedge message" in text and "over the limit" in text  # dropped by the transport, logged
    assert text.count("rejected input") == 6 and "rejected round.plain_update" in text

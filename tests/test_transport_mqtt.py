"""The paho transport against real brokers: Mosquitto (MQTT 5 and 3.1.1) and the embedded amqtt;
each test with the transports on their own network threads and on one shared NetworkLoop."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedge.agent.core import topics
from fedge.agent.core.errors import TransportError
from fedge.agent.core.transport.base import MQTT_5, MQTT_311, Inbound, TransportConfig
from fedge.agent.core.transport.chunks import split
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.agent.core.transport.netloop import NetworkLoop
from fedge.coordinator.service.broker import free_port
from tests.mqtt_fixtures import MosquittoProcess, needs_mosquitto
from tests.transport_fixtures import GARBAGE, corrupt, payload

pytestmark = pytest.mark.timeout(60)

KINDS = [
    pytest.param(("mosquitto", MQTT_5), id="mosquitto-v5", marks=[needs_mosquitto, pytest.mark.mosquitto]),
    pytest.param(("mosquitto", MQTT_311), id="mosquitto-v311", marks=[needs_mosquitto, pytest.mark.mosquitto]),
    pytest.param(("embedded_broker", MQTT_311), id="embedded"),
]


class Clients:
    """Makes transports against one broker and closes them all at the end."""

    def __init__(self, url: str, protocol: str, network: NetworkLoop | None = None) -> None:
        self.url, self.protocol, self.network = url, protocol, network
        self.made: list[MqttTransport] = []

    def __call__(self, cid: str, *, connect: bool = True, **kw) -> MqttTransport:
        kw.setdefault("protocol", self.protocol)
        kw.setdefault("reconnect_min_s", 1)
        kw.setdefault("reconnect_max_s", 2)
        cfg = TransportConfig(self.url, cid, connect_timeout_s=5, publish_timeout_s=20, **kw)
        t = MqttTransport(cfg, network=self.network)
        self.made.append(t)
        if connect:
            t.connect()
        return t

    def close(self) -> None:
        for t in self.made:
            t.close()


@pytest.fixture(params=KINDS)
def clients(request: pytest.FixtureRequest, network: NetworkLoop | None) -> Iterator[Clients]:
    fixture, protocol = request.param
    c = Clients(request.getfixturevalue(fixture).url, protocol, network)
    yield c
    c.close()


def receive_n(t: MqttTransport, n: int, timeout: float = 15.0, ack: bool = True) -> list[Inbound]:
    out: list[Inbound] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and (m := t.receive(max(0.0, deadline - time.monotonic()))) is not None:
        out.append(m)
        if ack:
            t.ack(m)
    return out


def test_round_trip(clients: Clients) -> None:
    coord, dev = clients("coordinator"), clients("dev-a")
    coord.subscribe(topics.ALL_DEVICES_OUT)
    msgs = [payload(300, seed=i) for i in range(5)]
    for m in msgs:
        dev.publish(topics.device_out("dev-a"), m)
    got = receive_n(coord, 5)
    assert [g.payload for g in got] == msgs
    assert {g.topic for g in got} == {topics.device_out("dev-a")}
    assert coord.receive(0.2) is None


def test_large_payload_chunked_and_reassembled(clients: Clients) -> None:
    coord, dev = clients("coordinator"), clients("dev-a", chunk_bytes=256 * 1024)
    coord.subscribe(topics.ALL_DEVICES_OUT)
    big = payload(5_000_000, seed=5)
    dev.publish(topics.device_out("dev-a"), big)
    (got,) = receive_n(coord, 1, timeout=30)
    assert got.payload == big


def test_bad_inputs_dropped_logged_and_receiver_goes_on(clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    coord = clients("coordinator", max_payload_bytes=100_000, chunk_bytes=10_000)
    dev = clients("dev-a", chunk_bytes=50_000)
    coord.subscribe(topics.ALL_DEVICES_OUT)
    t = topics.device_out("dev-a")
    with caplog.at_level(logging.WARNING, logger="fedge.agent.core.transport.chunks"):
        for g in GARBAGE[1:]:  # an empty payload would clear nothing here but is legal MQTT too
            dev.publish(t, g)
        for c in corrupt(split(payload(30_000), 5_000, "evil.1"), 1):
            dev.publish(t, c)
        dev.publish(t, payload(300_000))  # chunked by the sender, over the receiver's limit
        good = payload(500, seed=9)
        dev.publish(t, good)
        got = receive_n(coord, 1)
    assert [g.payload for g in got] == [good]
    assert coord.dropped == len(GARBAGE) - 1 + 2
    assert caplog.text.count("dropped input") == coord.dropped


@needs_mosquitto
@pytest.mark.mosquitto
@pytest.mark.parametrize("protocol", [MQTT_5, MQTT_311])
def test_unacked_message_redelivered_after_reconnect(
    mosquitto: MosquittoProcess, protocol: str, network: NetworkLoop | None
) -> None:
    c = Clients(mosquitto.url, protocol, network)
    try:
        coord = c("coordinator", chunk_bytes=64 * 1024)
        coord.subscribe(topics.ALL_DEVICES_OUT)
        dev = c("dev-a", chunk_bytes=64 * 1024)
        small, big = payload(200, seed=1), payload(500_000, seed=2)
        dev.publish(topics.device_out("dev-a"), small)
        dev.publish(topics.device_out("dev-a"), big)
        first = receive_n(coord, 2, ack=False)
        assert [g.payload for g in first] == [small, big]
        coord.close()  # crashed before storing: nothing was acknowledged
        again = c("coordinator", chunk_bytes=64 * 1024)
        redelivered = receive_n(again, 2)  # acknowledged this time
        assert [g.payload for g in redelivered] == [small, big]
        again.close()
        third = c("coordinator", chunk_bytes=64 * 1024)
        assert third.receive(1.0) is None
    finally:
        c.close()


@needs_mosquitto
@pytest.mark.mosquitto
@pytest.mark.parametrize("sessions_kept", [True, False], ids=["sessions-kept", "sessions-lost"])
def test_broker_killed_and_restarted_client_reconnects(
    mosquitto: MosquittoProcess, sessions_kept: bool, network: NetworkLoop | None
) -> None:
    c = Clients(mosquitto.url, MQTT_5, network)
    try:
        coord, dev = c("coordinator"), c("dev-a")
        coord.subscribe(topics.ALL_DEVICES_OUT)
        dev.publish(topics.device_out("dev-a"), payload(100, seed=1))
        assert len(receive_n(coord, 1)) == 1
        mosquitto.kill()
        deadline = time.monotonic() + 5
        while (coord.connected or dev.connected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not coord.connected and not dev.connected
        during = payload(100, seed=2)
        errors: list[BaseException] = []

        def publish_while_down() -> None:
            try:
                dev.publish(topics.device_out("dev-a"), during)  # blocks until reconnected and acked
            except BaseException as e:  # reported below
                errors.append(e)

        th = threading.Thread(target=publish_while_down)
        th.start()
        time.sleep(0.5)
        assert th.is_alive()
        if not sessions_kept:
            mosquitto.forget_sessions()
        mosquitto.start()
        assert coord.wait_connected(15) and dev.wait_connected(15)
        th.join(20)
        assert not th.is_alive() and errors == []
        after = payload(100, seed=3)
        dev.publish(topics.device_out("dev-a"), after)
        got = [g.payload for g in receive_n(coord, 2, timeout=5 if sessions_kept else 2)]
        if sessions_kept:
            assert got == [during, after]
        else:  # "during" may reach the broker before the coordinator subscribed again: lost
            assert got[-1:] == [after] and set(got) <= {during, after}
    finally:
        c.close()


def test_connect_timeout_when_nobody_answers(network: NetworkLoop | None) -> None:
    cfg = TransportConfig(f"mqtt://127.0.0.1:{free_port()}", "x", connect_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(TransportError):
        MqttTransport(cfg, network=network).connect()
    assert time.monotonic() - t0 < 5


def test_publish_over_limit_raises_before_sending() -> None:
    t = MqttTransport(TransportConfig("mqtt://127.0.0.1:1", "x", max_payload_bytes=10_000, chunk_bytes=2_000))
    with pytest.raises(TransportError):
        t.publish("x", payload(20_000))


_WILL_CHILD = """
import sys, time
from fedge.agent.core import topics
from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.agent.core.transport.netloop import NetworkLoop
network = NetworkLoop().start() if sys.argv[4] == "shared-loop" else None
t = MqttTransport(TransportConfig(sys.argv[1], "dev-a", protocol=sys.argv[2]), network=network)
t.set_will(topics.device_status("dev-a"), bytes.fromhex(sys.argv[3]))
t.connect()
print("up", flush=True)
time.sleep(60)
"""


@needs_mosquitto
@pytest.mark.mosquitto
@pytest.mark.parametrize("protocol", [MQTT_5, MQTT_311])
@pytest.mark.parametrize("loop", ["own-thread", "shared-loop"])
def test_last_will_published_when_a_device_process_dies(mosquitto: MosquittoProcess, protocol: str, loop: str) -> None:
    c = Clients(mosquitto.url, protocol)
    will = payload(40, seed=7)
    try:
        coord = c("coordinator")
        coord.subscribe(topics.ALL_DEVICES_STATUS)
        child = subprocess.Popen(
            [sys.executable, "-c", _WILL_CHILD, mosquitto.url, protocol, will.hex(), loop],
            stdout=subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == b"up"
        finally:
            child.kill()
            child.wait()
        (got,) = receive_n(coord, 1, timeout=10)
        assert got.topic == topics.device_status("dev-a") and got.payload == will
    finally:
        c.close()

"""The coordinator's embedded broker: loopback only, starts and stops cleanly, fits the transport."""

from __future__ import annotations

import socket
import time

import pytest

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.transport.base import MQTT_311, TransportConfig
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.coordinator.service.broker import EmbeddedBroker, broker_for
from tests.transport_fixtures import payload

pytestmark = pytest.mark.timeout(60)


def _other_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_binds_loopback_only_and_stops() -> None:
    t0 = time.monotonic()
    with EmbeddedBroker() as b:
        started = time.monotonic() - t0
        assert b.url.startswith("mqtt://127.0.0.1:")
        socket.create_connection(("127.0.0.1", b.port), timeout=2).close()
        other = _other_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, b.port), timeout=1).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", b.port), timeout=1).close()
    assert started < 5


def test_refuses_non_loopback_host() -> None:
    with pytest.raises(ConfigError):
        EmbeddedBroker(host="0.0.0.0")


def test_broker_for_embedded_and_external() -> None:
    with broker_for(None) as url:
        t = MqttTransport(TransportConfig(url, "c", protocol=MQTT_311, connect_timeout_s=5))
        t.connect()
        t.subscribe("fedge/v1/rounds")
        p = payload(100)
        t.publish("fedge/v1/rounds", p)
        m = t.receive(5)
        assert m is not None and m.payload == p
        t.close()
    with broker_for("mqtts://broker.example:8883") as url:
        assert url == "mqtts://broker.example:8883"
    with pytest.raises(ConfigError), broker_for("http://x"):
        pass


def test_clients_subscribing_together_all_get_their_messages_and_no_broker_error(caplog, network) -> None:
    """amqtt awaits while iterating its subscription table: clients connecting and subscribing at
    once used to raise "dictionary changed size during iteration", killing a session being set up."""
    import threading

    caplog.set_level("WARNING", logger="fedge.coordinator.service.broker")
    with EmbeddedBroker() as b:
        sender = MqttTransport(TransportConfig(b.url, "coordinator", protocol=MQTT_311, connect_timeout_s=10))
        sender.connect()
        # a retained message under a filter someone holds: each new session is sent it while
        # amqtt walks the subscription table, and the others subscribe meanwhile
        sender.subscribe("fedge/v1/rounds/#")
        sender.publish("fedge/v1/rounds/current", payload(50), retain=True)
        clients = [
            MqttTransport(TransportConfig(b.url, f"dev-{i}", protocol=MQTT_311, connect_timeout_s=10), network=network)
            for i in range(12)
        ]
        errors: list[BaseException] = []

        def up(t: MqttTransport, i: int) -> None:
            try:
                t.connect()
                for k in range(4):
                    t.subscribe(f"fedge/v1/devices/dev-{i}/t{k}")
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=up, args=(t, i)) for i, t in enumerate(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert not errors, errors
        for i in range(len(clients)):
            sender.publish(f"fedge/v1/devices/dev-{i}/t3", payload(100, seed=i))
        got = []
        for i, t in enumerate(clients):
            ok = False
            while not ok and (m := t.receive(10)) is not None:  # amqtt also sends others' retained messages
                ok = m.topic.endswith(f"dev-{i}/t3") and m.payload == payload(100, seed=i)
                t.ack(m)
            got.append(ok)
            t.close()
        sender.close()
    assert all(got), got
    assert not [r.getMessage() for r in caplog.records if "RuntimeError" in r.getMessage()]

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

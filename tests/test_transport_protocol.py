"""The agent and the coordinator agree on the MQTT version by themselves: a device profile that says
nothing about it reaches ``serve``'s embedded broker (MQTT 3.1.1 only, and silent to an MQTT 5
CONNECT) and Mosquitto (MQTT 5); a profile pinned to 5 fails at once with one line naming the fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedge.agent.config import resolve
from fedge.agent.core.errors import TransportError
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.agent.core.transport.netloop import NetworkLoop
from fedge.coordinator.service.config import ServiceConfig
from tests.mqtt_fixtures import needs_mosquitto
from tests.profiles_fixtures import ROOT
from tests.transport_fixtures import payload

pytestmark = pytest.mark.timeout(60)
TRIAL = ROOT / "firmware_configs" / "trial" / "local.toml"


def _profile(tmp_path: Path, url: str, protocol: str | None = None) -> Path:
    text = TRIAL.read_text().replace('broker_url = "mqtt://127.0.0.1:1883"', f'broker_url = "{url}"')
    assert url in text
    if protocol is not None:
        text = text.replace("[network]\n", f'[network]\nprotocol = "{protocol}"\n')
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


def _round_trip(agent: MqttTransport, coordinator: MqttTransport) -> None:
    agent.subscribe("fedge/v1/devices/pi-1/tasks")
    p = payload(200)
    coordinator.publish("fedge/v1/devices/pi-1/tasks", p)
    m = agent.receive(10)
    assert m is not None and m.payload == p
    agent.ack(m)


def _agent(tmp_path: Path, url: str, protocol: str | None = None, network: NetworkLoop | None = None) -> MqttTransport:
    cfg = resolve(_profile(tmp_path, url, protocol), db_path=str(tmp_path / "a.db"))
    return MqttTransport(cfg.transport("pi-1"), network=network)


def test_a_profile_without_protocol_reaches_the_embedded_broker(tmp_path, embedded_broker, network) -> None:
    coordinator = MqttTransport(ServiceConfig(db_path=str(tmp_path / "c.db")).transport(embedded_broker.url))
    coordinator.connect()
    agent = _agent(tmp_path, embedded_broker.url, network=network)
    t0 = time.monotonic()
    agent.connect()
    took = time.monotonic() - t0
    try:
        _round_trip(agent, coordinator)
    finally:
        agent.close()
        coordinator.close()
    assert took < 8, took  # one bounded MQTT 5 attempt, then 3.1.1


@needs_mosquitto
def test_the_same_profile_speaks_mqtt5_to_mosquitto(tmp_path, mosquitto, network) -> None:
    coordinator = MqttTransport(
        ServiceConfig(db_path=str(tmp_path / "c.db"), broker_url=mosquitto.url).transport(mosquitto.url)
    )
    coordinator.connect()
    agent = _agent(tmp_path, mosquitto.url, network=network)
    agent.connect()
    try:
        assert agent._v5 and coordinator._v5  # no fallback where MQTT 5 is spoken
        _round_trip(agent, coordinator)
    finally:
        agent.close()
        coordinator.close()


def test_pinned_mqtt5_against_the_embedded_broker_fails_naming_the_fix(tmp_path, embedded_broker, network) -> None:
    agent = _agent(tmp_path, embedded_broker.url, protocol="5", network=network)
    with pytest.raises(TransportError) as info:
        agent.connect()
    msg = str(info.value)
    assert "MQTT 5" in msg and 'protocol = "3.1.1"' in msg and "\n" not in msg, msg

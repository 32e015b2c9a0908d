"""The shipped Mosquitto TLS + ACL configuration: devices are who their certificate says, and
can publish only on their own topics and read only their own inbox and fleet-wide topics."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fedge.agent.core import topics
from fedge.agent.core.errors import TransportError
from fedge.agent.core.transport.base import MQTT_5, MQTT_311, TransportConfig
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.agent.core.transport.netloop import NetworkLoop
from tests.mqtt_fixtures import PASSWORDS, MosquittoProcess, TlsBroker, needs_mosquitto
from tests.transport_fixtures import payload

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.timeout(60)]


class Made(list[MqttTransport]):
    """The transports a test made (all on ``network``), closed after it."""

    def __init__(self, network: NetworkLoop | None) -> None:
        super().__init__()
        self.network = network


@pytest.fixture
def made(network: NetworkLoop | None) -> Iterator[Made]:
    ts = Made(network)
    yield ts
    for t in ts:
        t.close()


def connect(made: Made, cfg: TransportConfig) -> MqttTransport:
    t = MqttTransport(cfg, network=made.network)
    made.append(t)
    t.connect()
    return t


def drain(t: MqttTransport, wait: float) -> list[tuple[str, bytes]]:
    out = []
    while (m := t.receive(wait)) is not None:
        out.append((m.topic, m.payload))
        t.ack(m)
    return out


@pytest.mark.parametrize("protocol", [MQTT_5, MQTT_311])
def test_device_cannot_publish_on_another_devices_topic(
    mosquitto_tls: TlsBroker,
    made: list[MqttTransport],
    protocol: str,  # noqa: F811
) -> None:
    coord = connect(made, mosquitto_tls.config("coordinator", protocol=protocol))
    coord.subscribe(topics.ALL_DEVICES_OUT)
    coord.subscribe(topics.ALL_DEVICES_STATUS)
    dev_a = connect(made, mosquitto_tls.config("dev-a", protocol=protocol))
    forged, own = payload(100, seed=1, device="dev-b"), payload(100, seed=2)
    for topic in (topics.device_out("dev-b"), topics.device_status("dev-b"), topics.ROUNDS):
        if protocol == MQTT_5:  # MQTT 5 reports the refusal in the PUBACK
            with pytest.raises(TransportError, match="Not authorized"):
                dev_a.publish(topic, forged)
        else:  # MQTT 3.1.1 cannot say no: the broker acknowledges and drops it
            dev_a.publish(topic, forged)
    dev_a.publish(topics.device_out("dev-a"), own)
    assert drain(coord, 1.0) == [(topics.device_out("dev-a"), own)]


def test_device_reads_only_its_own_inbox_and_fleet_topics(
    mosquitto_tls: TlsBroker,
    made: list[MqttTransport],  # noqa: F811
) -> None:
    coord = connect(made, mosquitto_tls.config("coordinator"))
    announcement = payload(50, seed=3)
    coord.publish(topics.ROUNDS, announcement, retain=True)
    dev_a = connect(made, mosquitto_tls.config("dev-a"))
    dev_a.subscribe(topics.ROUNDS)
    dev_a.subscribe(topics.device_in("dev-a"))
    try:
        dev_a.subscribe(topics.device_in("dev-b"))  # refused outright, or nothing is delivered
    except TransportError:
        pass
    for_a, for_b = payload(60, seed=4), payload(60, seed=5, device="dev-b")
    coord.publish(topics.device_in("dev-b"), for_b)
    coord.publish(topics.device_in("dev-a"), for_a)
    got = drain(dev_a, 1.0)
    assert got == [(topics.ROUNDS, announcement), (topics.device_in("dev-a"), for_a)]


def test_client_id_is_the_certificate_identity(mosquitto_tls: TlsBroker, made: list[MqttTransport]) -> None:
    dev_b = connect(made, mosquitto_tls.config("dev-b"))
    connect(made, mosquitto_tls.config("dev-a", client_id="dev-b"))  # would take over dev-b's session
    time.sleep(0.5)
    assert dev_b.connected


@pytest.mark.parametrize("plain", [False, True], ids=["tls-without-client-cert", "plain-mqtt-on-tls-port"])
def test_connect_without_client_certificate_times_out(
    mosquitto_tls: TlsBroker, plain: bool, network: NetworkLoop | None
) -> None:
    pki = mosquitto_tls.pki
    if plain:  # TLS port spoken to in plain MQTT
        cfg = TransportConfig(mosquitto_tls.url.replace("mqtts", "mqtt"), "dev-a", connect_timeout_s=2.0)
    else:
        cfg = TransportConfig(mosquitto_tls.url, "dev-a", tls_ca=str(pki / "ca.crt"), connect_timeout_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(TransportError):
        MqttTransport(cfg, network=network).connect()
    assert time.monotonic() - t0 < 8


@pytest.mark.parametrize("protocol", [MQTT_5, MQTT_311])
def test_per_device_password_credentials(mosquitto_passwords: MosquittoProcess, made: Made, protocol: str) -> None:
    url = mosquitto_passwords.url
    ok = connect(made, TransportConfig(url, "dev-a", username="dev-a", password=PASSWORDS["dev-a"], protocol=protocol))
    ok.publish(topics.device_out("dev-a"), payload(10))
    for user, pw in (("dev-a", "wrong"), ("nobody", "x"), (None, None)):
        t0 = time.monotonic()
        with pytest.raises(TransportError):  # refused at once, not after the timeout
            MqttTransport(
                TransportConfig(url, "dev-x", username=user, password=pw, protocol=protocol, connect_timeout_s=10),
                network=made.network,
            ).connect()
        assert time.monotonic() - t0 < 5


def test_shipped_queue_limit_keeps_more_than_mosquittos_default(
    mosquitto_tls: TlsBroker,
    made: list[MqttTransport],  # noqa: F811
) -> None:
    """Mosquitto's default keeps 1,000 queued messages per offline client and drops the rest
    silently; the shipped config keeps a whole cohort's worth."""
    dev = connect(made, mosquitto_tls.config("dev-a"))
    dev.subscribe(topics.device_in("dev-a"))
    dev.close()
    coord = connect(made, mosquitto_tls.config("coordinator"))
    n = 1500
    msg = payload(20)
    for _ in range(n):
        coord.publish(topics.device_in("dev-a"), msg)  # acknowledged whether kept or not
    dev.connect()
    assert len(drain(dev, 1.0)) == n

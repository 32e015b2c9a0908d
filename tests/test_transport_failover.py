"""Failover between the brokers of one cluster: which broker a device tries first (rendezvous
hashing), when it moves on (agent/core/transport/failover.py), and the paho transport doing it
against the shipped bridged Mosquitto configs (deploy/mosquitto/bridge/) with a crashed edge."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter

import pytest

from fedge.agent.core import topics, wire
from fedge.agent.core.errors import ConfigError, TransportError
from fedge.agent.core.messages.device import DeviceStatus
from fedge.agent.core.transport.base import MQTT_5, TransportConfig
from fedge.agent.core.transport.failover import Failover, broker_order
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.agent.core.transport.netloop import NetworkLoop
from fedge.coordinator.service.broker import free_port
from tests.mqtt_fixtures import needs_mosquitto

BROKERS = [f"mqtts://edge-{i}.fleet.example:8883" for i in range(4)]


# ---------------------------------------------------------------- which broker first


def test_broker_order_is_a_stable_known_ranking() -> None:
    # SHA-256 of "<id>\n<url>", highest first: the same on every device and Python version
    assert broker_order(BROKERS, "dev-0001") == (BROKERS[0], BROKERS[3], BROKERS[2], BROKERS[1])
    assert broker_order(BROKERS, "dev-0002") == (BROKERS[1], BROKERS[3], BROKERS[0], BROKERS[2])
    assert broker_order(list(reversed(BROKERS)), "dev-0001") == broker_order(BROKERS, "dev-0001")
    assert broker_order(BROKERS[:1], "dev-0001") == (BROKERS[0],)


def test_a_fleet_spreads_evenly_and_a_dead_brokers_devices_spread_over_the_rest() -> None:
    ids = [f"dev-{i:05d}" for i in range(20_000)]
    first = Counter(broker_order(BROKERS, d)[0] for d in ids)
    assert all(abs(n / len(ids) - 0.25) < 0.015 for n in first.values()), first
    # edge-0 gone: its devices go to their second choice, spread evenly over the three left
    orphans = [d for d in ids if broker_order(BROKERS, d)[0] == BROKERS[0]]
    second = Counter(broker_order(BROKERS, d)[1] for d in orphans)
    assert set(second) == set(BROKERS[1:])
    assert all(abs(n / len(orphans) - 1 / 3) < 0.03 for n in second.values()), second
    # ...which is also where they land when edge-0 is taken off the list: nobody else moves
    for d in ids[:2000]:
        without = broker_order(BROKERS[1:], d)
        full = broker_order(BROKERS, d)
        assert without == tuple(u for u in full if u != BROKERS[0])


# ---------------------------------------------------------------- when to move on


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_failover_after_n_failed_attempts_and_around_the_list() -> None:
    f = Failover(BROKERS[:2], after=3, stable_s=30, clock=Clock())
    assert f.current == BROKERS[0] and not f.due()
    for _ in range(2):
        f.failed()
        f.begin()
    assert not f.due()
    f.failed()
    assert f.due()
    assert f.advance() == (BROKERS[0], BROKERS[1]) and f.failures == 0 and not f.due()
    for _ in range(3):
        f.failed()
        f.begin()
    assert f.due() and f.advance() == (BROKERS[1], BROKERS[0])  # wraps around


def test_a_refusal_followed_by_its_disconnect_counts_once() -> None:
    f = Failover(BROKERS[:2], after=2, stable_s=30, clock=Clock())
    f.failed()  # CONNACK refused...
    f.down()  # ...and the broker closes the connection: the same attempt
    assert f.failures == 1
    f.begin()
    f.down()  # TCP up, closed before any CONNACK: a failed attempt too
    assert f.failures == 2 and f.due()


def test_repeated_short_connections_fail_over_and_a_working_one_resets_the_count() -> None:
    clock = Clock()
    f = Failover(BROKERS[:2], after=3, stable_s=30, clock=clock)
    for _ in range(2):
        f.begin()
        f.up()
        clock.t += 5  # accepted, then dropped 5 s later: a broker that cannot keep anyone
        f.down()
    assert f.failures == 2
    f.begin()
    f.up()
    clock.t += 300
    f.down()  # a connection that worked for 5 minutes: this is a new outage, not a third failure
    assert f.failures == 0
    f.begin()
    f.up()
    f.down()
    assert f.failures == 1


def test_a_single_broker_never_fails_over() -> None:
    f = Failover(BROKERS[:1], after=1, stable_s=30, clock=Clock())
    for _ in range(5):
        f.failed()
        f.begin()
    assert not f.due()


def test_transport_config_keeps_one_scheme_and_each_broker_once() -> None:
    cfg = TransportConfig("mqtt://a:1883", "dev-1", fallback_urls=("mqtt://b:1883",))
    assert cfg.urls == ("mqtt://a:1883", "mqtt://b:1883") and cfg.failover_after == 3
    with pytest.raises(ConfigError, match="expected a mqtt:// broker"):
        TransportConfig("mqtt://a:1883", "dev-1", fallback_urls=("mqtts://b:8883",))
    with pytest.raises(ConfigError, match="listed twice"):
        TransportConfig("mqtt://a:1883", "dev-1", fallback_urls=("mqtt://a:1883",))
    with pytest.raises(ConfigError, match="in-memory"):
        TransportConfig("memory://x", "dev-1", fallback_urls=("memory://y",))
    with pytest.raises(ConfigError, match="failover_after"):
        TransportConfig("mqtt://a:1883", "dev-1", failover_after=0)


# ---------------------------------------------------------------- real brokers

HUB_SEES = topics.ALL_DEVICES_OUT


def status(device: str, *reasons: str) -> bytes:
    return wire.encode(DeviceStatus(device, True, not reasons, reasons))


def received(t: MqttTransport, timeout: float, quiet_s: float = 1.0) -> list[bytes]:
    """The payloads ``t`` gets: the first within ``timeout``, then until ``quiet_s`` pass without one
    (so a duplicate would be seen); acked as they come."""
    out = []
    while (m := t.receive(quiet_s if out else timeout)) is not None:
        out.append(m.payload)
        t.ack(m)
    return out


@needs_mosquitto
@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_a_crashed_edge_fails_over_and_keeps_publishing_and_receiving(
    tmp_path, mosquitto_cluster, caplog, network: NetworkLoop | None
) -> None:
    cluster = mosquitto_cluster([free_port(), free_port()])
    a, b = cluster.edges
    hub = MqttTransport(TransportConfig(cluster.hub.url, "coordinator", clean_start=True, protocol=MQTT_5))
    dev = MqttTransport(
        TransportConfig(a.url, "dev-1", fallback_urls=(b.url,), protocol=MQTT_5, publish_timeout_s=60),
        rng=random.Random(1),
        network=network,
    )
    try:
        hub.connect()
        hub.subscribe(HUB_SEES)
        dev.connect()
        dev.subscribe(topics.device_in("dev-1"))
        assert dev.url == a.url
        dev.publish(topics.device_out("dev-1"), status("dev-1"))
        assert received(hub, 5.0) == [status("dev-1")]  # through the first edge's bridge

        caplog.set_level(logging.INFO, logger="fedge.agent.core.transport.mqtt")
        a.kill()  # SIGKILL: no goodbye, no will, its queues gone
        crashed = time.monotonic()
        # a publish made while the edge is dead waits for the failover, then goes out through the other edge
        dev.publish(topics.device_out("dev-1"), status("dev-1", "busy"))
        failed_over = time.monotonic() - crashed
        assert dev.url == b.url and dev.connected
        switch = [r for r in caplog.records if "failing over" in r.getMessage()]
        assert len(switch) == 1 and switch[0].levelno == logging.WARNING
        assert a.url in switch[0].getMessage() and b.url in switch[0].getMessage()
        assert "dev-1" in switch[0].getMessage() and getattr(switch[0], "device", None) == "dev-1"
        assert received(hub, 5.0) == [status("dev-1", "busy")]  # once

        # the subscription was made again on the other edge (no session there): the hub reaches the device
        hub.publish(topics.device_in("dev-1"), status("coordinator"))
        assert received(dev, 5.0) == [status("coordinator")]
        # the drop of a connection younger than keepalive_s and two refused reconnects (jittered
        # 1-2 and 1-4 s; three refused reconnects after an older one), then the other edge at once
        assert 2.0 <= failed_over <= 16.0, failed_over
        print(f"\nfailover after the crash: {failed_over:.2f} s")
    finally:
        dev.close()
        hub.close()


@needs_mosquitto
@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_connect_leaves_a_dead_first_broker_at_once(
    tmp_path, mosquitto_cluster, caplog, network: NetworkLoop | None
) -> None:
    cluster = mosquitto_cluster([free_port()])
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens there
    live = cluster.edges[0].url
    caplog.set_level(logging.WARNING, logger="fedge.agent.core.transport.mqtt")
    cfg = TransportConfig(dead, "dev-2", fallback_urls=(live,), protocol=MQTT_5, connect_timeout_s=10)
    t = MqttTransport(cfg, network=network)
    try:
        started = time.monotonic()
        t.connect()
        assert time.monotonic() - started < 3.0  # refused: not the 10 s connect timeout
        assert t.url == live
        [line] = [r.getMessage() for r in caplog.records]
        assert dead in line and live in line and "unreachable" in line and "Connection refused" in line
    finally:
        t.close()
    # every broker down: one error naming each
    t = MqttTransport(
        TransportConfig(dead, "dev-3", fallback_urls=(f"mqtt://127.0.0.1:{free_port()}",), connect_timeout_s=1),
        network=network,
    )
    with pytest.raises(TransportError, match="to any of its 2 brokers: 127.0.0.1:.*; 127.0.0.1:"):
        t.connect()
    t.close()


@needs_mosquitto
@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_the_production_form_bridges_over_tls_under_the_acls_and_fails_over(
    mosquitto_cluster, network: NetworkLoop | None
) -> None:
    cluster = mosquitto_cluster([free_port(), free_port()], tls_devices=("dev-a", "dev-b"))
    pki = cluster.pki
    e1, e2 = (e.url for e in cluster.edges)
    assert e1.startswith("mqtts://")

    def config(identity: str, url: str, **kw: object) -> TransportConfig:
        return TransportConfig(
            url,
            identity,
            tls_ca=str(pki / "ca.crt"),
            tls_cert=str(pki / f"{identity}.crt"),
            tls_key=str(pki / f"{identity}.key"),
            protocol=MQTT_5,
            **kw,  # type: ignore[arg-type]
        )

    hub = MqttTransport(config("coordinator", cluster.hub.url, clean_start=True))
    a = MqttTransport(
        config("dev-a", e1, fallback_urls=(e2,), publish_timeout_s=60), rng=random.Random(2), network=network
    )
    b = MqttTransport(config("dev-b", e2), network=network)
    try:
        hub.connect()
        hub.subscribe(HUB_SEES)
        for t, dev in ((a, "dev-a"), (b, "dev-b")):
            t.connect()
            t.subscribe(topics.device_in(dev))
            t.publish(topics.device_out(dev), status(dev))
        assert sorted(received(hub, 5.0)) == sorted([status("dev-a"), status("dev-b")])
        hub.publish(topics.device_in("dev-a"), status("coordinator"))
        assert received(a, 5.0) == [status("coordinator")]
        # the edge enforces the device ACL: dev-a cannot speak for dev-b
        with pytest.raises(TransportError, match="Not authorized"):
            a.publish(topics.device_out("dev-b"), status("dev-b"))
        assert received(hub, 1.0) == []

        cluster.edges[0].kill()
        a.publish(topics.device_out("dev-a"), status("dev-a", "busy"))
        assert a.url == e2
        assert received(hub, 5.0) == [status("dev-a", "busy")]
        hub.publish(topics.device_in("dev-a"), status("coordinator", "again"))
        assert received(a, 5.0) == [status("coordinator", "again")]
        assert received(b, 1.0) == []  # edge-2 holds dev-b's session, which sees none of dev-a's inbox
    finally:
        for t in (a, b, hub):
            t.close()

"""One shared NetworkLoop for many paho transports (agent/core/transport/netloop.py), against a real
Mosquitto: sockets numbered past select()'s 1,024, a few threads for any number of clients, and a
client whose callback fails loses only its own connection. (Every other transport behaviour is
tested in both modes: the ``network`` fixture in tests/test_transport_*.py.)"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Iterator

import pytest

from fedge.agent.core import topics
from fedge.agent.core.transport.base import MQTT_5, TransportConfig
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.agent.core.transport.netloop import NetworkLoop
from tests.mqtt_fixtures import MosquittoProcess, needs_mosquitto
from tests.transport_fixtures import payload

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.timeout(60)]


@contextlib.contextmanager
def descriptors_taken(n: int) -> Iterator[None]:
    """Hold ``n`` descriptors open, so the sockets made meanwhile are numbered past them (with the
    cycle collector off: an earlier test's garbage freed meanwhile would free low numbers)."""
    gc.collect()
    gc.disable()
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(n)]
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)
        gc.enable()


def config(url: str, cid: str) -> TransportConfig:
    return TransportConfig(url, cid, protocol=MQTT_5, connect_timeout_s=10, reconnect_min_s=1, reconnect_max_s=2)


def test_sockets_past_descriptor_1024_on_a_few_threads(mosquitto: MosquittoProcess) -> None:
    """paho's own loop select()s, which fails for descriptors of 1,024 and up; the shared loop does
    not, and 40 clients cost it the loop thread and at most its connector threads."""
    n = 40
    with descriptors_taken(1100), NetworkLoop(connectors=4) as loop:
        before = threading.active_count()
        coord = MqttTransport(config(mosquitto.url, "coordinator"), network=loop)
        devs = [MqttTransport(config(mosquitto.url, f"dev-{i}"), network=loop) for i in range(n)]
        try:
            coord.connect()
            coord.subscribe(topics.ALL_DEVICES_OUT)
            for i, t in enumerate(devs):
                t.connect()
                t.subscribe(topics.device_in(f"dev-{i}"))
            fds = [t._client.socket().fileno() for t in (coord, *devs)]
            assert min(fds) >= 1024, fds
            assert threading.active_count() - before <= 1 + 4  # the loop and its connectors
            for i, t in enumerate(devs):  # each way, every client
                t.publish(topics.device_out(f"dev-{i}"), payload(100, seed=i, device=f"dev-{i}"))
                coord.publish(topics.device_in(f"dev-{i}"), payload(50, seed=i))
            got = set()
            while len(got) < n and (m := coord.receive(10)) is not None:
                got.add(m.payload)
                coord.ack(m)
            assert got == {payload(100, seed=i, device=f"dev-{i}") for i in range(n)}
            for i, t in enumerate(devs):
                m = t.receive(10)
                assert m is not None and m.payload == payload(50, seed=i)
                t.ack(m)
            assert loop.clients == n + 1
        finally:
            for t in (coord, *devs):
                t.close()
        assert loop.clients == 0


def test_a_failing_callback_costs_only_its_own_connection(mosquitto: MosquittoProcess) -> None:
    with NetworkLoop() as loop:
        coord = MqttTransport(config(mosquitto.url, "coordinator"), network=loop)
        a = MqttTransport(config(mosquitto.url, "dev-a"), network=loop)
        b = MqttTransport(config(mosquitto.url, "dev-b"), network=loop)
        try:
            for t, dev in ((coord, None), (a, "dev-a"), (b, "dev-b")):
                t.connect()
                if dev is not None:
                    t.subscribe(topics.device_in(dev))
            handle = a._on_message
            failures = []

            def broken(*args: object) -> None:  # once: an exception out of a paho callback
                a._client.on_message = handle
                failures.append(1)
                raise RuntimeError("bug in a callback")

            a._client.on_message = broken
            coord.publish(topics.device_in("dev-a"), payload(40, seed=1))
            deadline = time.monotonic() + 5
            while a.connections < 2 and time.monotonic() < deadline:  # dropped, reconnected by the loop
                time.sleep(0.05)
            assert failures == [1] and a.connections == 2
            # the broker redelivers what was never acknowledged; the other client never noticed
            m = a.receive(10)
            assert m is not None and m.payload == payload(40, seed=1)
            a.ack(m)
            coord.publish(topics.device_in("dev-b"), payload(40, seed=2))
            m = b.receive(5)
            assert m is not None and m.payload == payload(40, seed=2) and b.connections == 1
        finally:
            for t in (coord, a, b):
                t.close()

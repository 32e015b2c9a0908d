"""Throughput of 400 KB updates through Mosquitto, the embedded amqtt broker and in memory.

Prints MB/s for each and ratios against the embedded broker measured in the same run.
Usage: ``.venv/bin/python -m bench.transport [--count 200] [--size 400000] [--publishers 4]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from fedge.agent.core import topics
from fedge.agent.core.transport import InMemoryBroker, InMemoryTransport, TransportConfig
from fedge.agent.core.transport.base import MQTT_311
from fedge.agent.core.transport.mqtt import MqttTransport
from fedge.coordinator.service.broker import EmbeddedBroker, free_port
from tests.transport_fixtures import payload


def run(make, count: int, size: int, publishers: int) -> float:
    """MB/s from ``publishers`` devices to one coordinator that acks every message."""
    coord = make("coordinator")
    coord.subscribe(topics.ALL_DEVICES_OUT)
    devs = [make(f"d{i}") for i in range(publishers)]
    msg = payload(size)
    per = count // publishers
    got = 0

    def publish(i: int) -> None:
        for _ in range(per):
            devs[i].publish(topics.device_out(f"d{i}"), msg)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=publish, args=(i,)) for i in range(publishers)]
    for th in threads:
        th.start()
    while got < per * publishers:
        m = coord.receive(30)
        if m is None:
            break
        coord.ack(m)
        got += 1
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    for t in [coord, *devs]:
        t.close()
    if got != per * publishers:
        print(f"  only {got} of {per * publishers} arrived")
    return got * len(msg) / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--size", type=int, default=400_000)
    ap.add_argument("--publishers", type=int, default=4)
    a = ap.parse_args()
    results: dict[str, float] = {}

    with EmbeddedBroker() as b:
        results["embedded amqtt (3.1.1)"] = run(lambda c: _mqtt(b.url, c, MQTT_311), a.count, a.size, a.publishers)

    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if os.path.exists(mosq):
        d = Path(tempfile.mkdtemp())
        port = free_port()
        conf = d / "m.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 20000\n")
        proc = subprocess.Popen([mosq, "-c", str(conf)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            url = f"mqtt://127.0.0.1:{port}"
            results["mosquitto (5)"] = run(lambda c: _mqtt(url, c, "5"), a.count, a.size, a.publishers)
            results["mosquitto (3.1.1)"] = run(lambda c: _mqtt(url, c, MQTT_311), a.count, a.size, a.publishers)
        finally:
            proc.kill()
            proc.wait()
            shutil.rmtree(d, ignore_errors=True)

    broker = InMemoryBroker()

    def mem(cid: str) -> InMemoryTransport:
        t = InMemoryTransport(TransportConfig("memory://", cid), broker)
        t.connect()
        return t

    results["in memory"] = run(mem, a.count, a.size, a.publishers)

    base = results["embedded amqtt (3.1.1)"]
    print(f"{a.count} messages of {a.size} bytes from {a.publishers} publishers, acked one by one")
    for name, mbs in results.items():
        print(f"  {name:<24} {mbs:8.1f} MB/s   x{mbs / base:6.2f} vs embedded")


def _mqtt(url: str, cid: str, protocol: str) -> MqttTransport:
    t = MqttTransport(TransportConfig(url, cid, protocol=protocol, clean_start=True))
    t.connect()
    return t


if __name__ == "__main__":
    main()

"""The shipped Mosquitto configs hold a fleet's load without being driven out of memory: each raises
the queue from the default 1,000 messages per client and bounds it in bytes, bounds the whole
broker's heap (``memory_limit``, above the per-client byte bound), and caps message size; and
Mosquitto itself (``/usr/sbin/mosquitto``) accepts each file: it starts on a free port and stops."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedge.coordinator.service.broker import free_port
from fedge.coordinator.service.pki import make_broker_pki
from tests.mqtt_fixtures import (
    BRIDGE_DIR,
    MOSQUITTO,
    ROOT,
    SHIPPED_ACL,
    SHIPPED_CONF,
    MosquittoProcess,
    needs_mosquitto,
    render_shipped_conf,
)

pytestmark = pytest.mark.timeout(60)
DOCKER_CONF = ROOT / "deploy" / "docker" / "mosquitto.conf"
LOADTEST_CONF = ROOT / "deploy" / "mosquitto" / "loadtest.conf"
SHIPPED = {
    "production": SHIPPED_CONF,
    "docker": DOCKER_CONF,
    "loadtest": LOADTEST_CONF,
    "bridge-hub": BRIDGE_DIR / "hub.conf",
    "bridge-edge": BRIDGE_DIR / "edge.conf",
}


def _settings(conf: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in conf.read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#") and len(words) >= 2:
            out[words[0]] = words[1]
    return out


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_config_bounds_queues_in_messages_and_bytes_and_the_broker_in_memory(name: str) -> None:
    s = _settings(SHIPPED[name])
    assert int(s["max_queued_messages"]) >= 20_000  # the default 1,000 drops a cohort's uploads silently
    queued_bytes, memory = int(s["max_queued_bytes"]), int(s["memory_limit"])
    assert 0 < queued_bytes < memory <= 8 * 2**30  # the coordinator's queue fits under the heap cap
    assert 0 < int(s["message_size_limit"]) <= int(s["max_packet_size"]) <= 4 * 2**20


def _start_and_stop(conf: Path, port: int, *, scheme: str = "mqtt") -> str:
    broker = MosquittoProcess(conf, port, scheme=scheme).start()  # raises unless it listens
    proc = broker._proc
    assert proc is not None and proc.poll() is None
    broker.stop()  # SIGTERM
    assert proc.returncode == 0, broker.log.read_text()
    log = broker.log.read_text()
    assert [line for line in log.splitlines() if "Error" in line] == [], log  # (the ACL's warnings are known)
    return log


def _rewritten(src: Path, tmp_path: Path, port: int) -> Path:
    """``src`` on a loopback ``port`` with its persistence in ``tmp_path`` (and as root, ``user root``)."""
    text = re.sub(r"^listener \d+.*$", f"listener {port} 127.0.0.1", src.read_text(), count=1, flags=re.M)
    text = re.sub(r"^persistence_location .*$", f"persistence_location {tmp_path}/", text, flags=re.M)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(("user root\n" if os.geteuid() == 0 else "") + text)
    return conf


@needs_mosquitto
def test_mosquitto_starts_and_stops_with_the_production_config(tmp_path: Path) -> None:
    pki, acl, port = tmp_path / "pki", tmp_path / "acl", free_port()
    make_broker_pki(pki, ("dev-a",))
    shutil.copy(SHIPPED_ACL, acl)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(render_shipped_conf(port, pki, acl, tmp_path))
    assert "memory_limit 4294967296" in conf.read_text()
    _start_and_stop(conf, port, scheme="mqtts")


@needs_mosquitto
@pytest.mark.parametrize("name", ["docker", "loadtest"])
def test_mosquitto_starts_and_stops_with_the_plain_configs(tmp_path: Path, name: str) -> None:
    port = free_port()
    conf = _rewritten(SHIPPED[name], tmp_path, port)
    assert "memory_limit" in conf.read_text()
    _start_and_stop(conf, port)


@needs_mosquitto
def test_mosquitto_refuses_a_config_it_does_not_know() -> None:
    # the start test above means something: an unknown line is an error, not ignored
    out = subprocess.run([MOSQUITTO, "-c", "/dev/stdin"], input="memory_limitt 1\n", capture_output=True, text=True)
    assert out.returncode != 0 and "Unknown configuration variable" in out.stdout + out.stderr

"""The shipped bridge configuration (deploy/mosquitto/bridge/) agrees with agent/core/topics.py and
with the single-broker config: every topic a device publishes goes up to the hub and no further,
every topic the coordinator publishes to devices comes down to every edge, and the limits the
files say they share with ../mosquitto.conf are the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedge.agent.core import topics
from fedge.agent.core.transport.filters import check_filter, matches

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "deploy" / "mosquitto" / "bridge"
SINGLE = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"

#: what a device publishes (to the coordinator) and what the coordinator publishes to devices
UP = [topics.device_out("car-0001"), topics.device_status("car-0001")]
DOWN = [
    topics.device_in("car-0001"),
    topics.ROUNDS,
    topics.COORDINATOR_STATUS,
    topics.release("stable"),
    topics.release_key_rotation(3),
]


def bridge_topics() -> list[tuple[str, str, int]]:
    """(pattern, direction, qos) of every ``topic`` line of edge.conf."""
    out = []
    for line in (BRIDGE / "edge.conf").read_text().splitlines():
        if line.startswith("topic "):
            _, pattern, direction, qos = line.split()
            out.append((check_filter(pattern), direction, int(qos)))
    return out


def settings(path: Path) -> dict[str, str]:
    """Active (uncommented) ``key value`` lines; the last one wins, as in Mosquitto."""
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found[key] = value
    return found


def test_device_topics_go_up_only_and_coordinator_topics_come_down() -> None:
    lines = bridge_topics()
    assert all(qos == 1 for _, _, qos in lines) and all(d in ("in", "out") for _, d, _ in lines)
    for topic in UP:
        assert [d for p, d, _ in lines if matches(p, topic)] == ["out"], topic
    for topic in DOWN:
        assert [d for p, d, _ in lines if matches(p, topic)] == ["in"], topic
    # nothing else crosses the bridge
    assert all(p.startswith(topics.PREFIX + "/") for p, _, _ in lines)


@pytest.mark.parametrize("name", ["hub.conf", "edge.conf"])
def test_limits_and_sessions_are_the_single_brokers(name: str) -> None:
    single, mine = settings(SINGLE), settings(BRIDGE / name)
    for key in (
        "max_queued_messages",
        "max_queued_bytes",
        "max_inflight_messages",
        "message_size_limit",
        "max_packet_size",
        "persistence",
        "persistent_client_expiration",
    ):
        assert mine[key] == single[key], key
    # loopback for tests; the production listener and its certificates are there, commented
    assert mine["listener"] == "1883 127.0.0.1" and mine["allow_anonymous"] == "true"
    text = (BRIDGE / name).read_text()
    for key in ("listener 8883", "require_certificate true", "use_identity_as_username true", "acl_file"):
        assert re.search(rf"^#{re.escape(key)}", text, flags=re.M), key


def test_each_edge_names_itself_once_and_the_hub_acl_knows_it() -> None:
    edge = settings(BRIDGE / "edge.conf")
    assert edge["connection"] == edge["remote_clientid"] == "edge-1"
    assert edge["cleansession"] == "false" and edge["try_private"] == "true"
    acl = (BRIDGE / "hub.acl").read_text()
    assert re.search(r"^user edge-1\ntopic readwrite fedge/v1/#$", acl, flags=re.M)
    assert re.search(r"^user coordinator\ntopic readwrite fedge/v1/#$", acl, flags=re.M)

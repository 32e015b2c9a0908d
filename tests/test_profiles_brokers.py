"""A profile may list the brokers of one cluster (``[network] broker_urls``); the agent's transport
config then starts on the broker its device id ranks first and fails over to the others."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedge.agent.config import resolve
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.profiles import load_profile
from fedge.agent.core.transport.failover import broker_order
from tests.profiles_fixtures import BASE, PROFILE_DIR

EDGES = ["mqtts://edge-1.fleet.example:8883", "mqtts://edge-2.fleet.example:8883", "mqtts://edge-3.example:8883"]
CLUSTER_EXAMPLE = PROFILE_DIR / "cluster" / "car.toml"


def with_network(tmp_path: Path, lines: str) -> Path:
    """pi4.toml with its broker_url line replaced by ``lines``."""
    text, n = re.subn(r"^broker_url = .*$", lines, BASE.read_text(), flags=re.M)
    assert n == 1
    path = tmp_path / "pi4.toml"
    path.write_text(text)
    return path


def urls_line(urls: list[str]) -> str:
    return "broker_urls = [" + ", ".join(f'"{u}"' for u in urls) + "]"


def test_a_list_of_brokers_is_one_cluster(tmp_path) -> None:
    net = load_profile(with_network(tmp_path, urls_line(EDGES) + "\nfailover_after = 2")).network
    assert net.urls == tuple(EDGES) and net.broker_url is None and net.failover_after == 2
    assert net.tls and net.host == "edge-1.fleet.example" and net.port == 8883
    single = load_profile(BASE).network
    assert single.urls == ("mqtts://broker.fleet.example:8883",) and single.failover_after == 3


@pytest.mark.parametrize(
    ("lines", "field", "words"),
    [
        ("", "network.broker_url", ("missing", "mqtt", "broker_urls")),
        (urls_line(EDGES) + '\nbroker_url = "mqtts://b:8883"', "network.broker_urls", ("not both",)),
        (urls_line([]), "network.broker_urls", ("a list of 1 to 16",)),
        (urls_line(EDGES[:1] + ["http://b"]), "network.broker_urls[1]", ("mqtts://", '"http://b"')),
        (urls_line(EDGES[:1] + ["mqtt://b:1883"]), "network.broker_urls", ("one scheme for all",)),
        (urls_line(EDGES[:1] * 2), "network.broker_urls", ("each broker once",)),
        (urls_line(EDGES) + "\nfailover_after = 0", "network.failover_after", ("[1, 100]",)),
    ],
    ids=["neither", "both", "empty", "bad_url", "mixed_schemes", "twice", "failover_after"],
)
def test_broker_lists_are_checked_naming_the_field(tmp_path, lines, field, words) -> None:
    path = with_network(tmp_path, lines)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {field}"), msg
    for w in words:
        assert w in msg, (w, msg)


def test_the_shipped_cluster_example_is_valid() -> None:
    profile = load_profile(CLUSTER_EXAMPLE)
    assert profile.device.class_ == "car" and len(profile.network.urls) == 3 and profile.network.tls
    car = load_profile(PROFILE_DIR / "car.toml")
    assert profile.network.tls_cert == car.network.tls_cert and profile.compute == car.compute


def test_each_device_starts_on_the_broker_its_id_ranks_first(tmp_path) -> None:
    path = with_network(tmp_path, urls_line(EDGES))
    cfg = resolve(path, db_path=str(tmp_path / "a.db"))
    assert cfg.broker_urls == tuple(EDGES)
    for device in ("car-0001", "car-0002", "car-0003"):
        t = cfg.transport(device)
        assert t.urls == broker_order(EDGES, device) and t.client_id == device and t.failover_after == 3
        assert t.tls_ca == "/etc/fedge/ca.pem"
    assert len({cfg.transport(f"car-{i:04d}").broker_url for i in range(30)}) == 3  # spread over all three
    # --broker replaces the list: one broker, nothing to fail over to
    one = resolve(path, db_path=str(tmp_path / "a.db"), broker_url="mqtts://other:8883").transport("car-0001")
    assert one.urls == ("mqtts://other:8883",)

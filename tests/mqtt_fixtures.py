"""Real brokers for transport tests: Mosquitto (plain, or TLS with the shipped config and ACL),
a bridged Mosquitto cluster (the shipped deploy/mosquitto/bridge/ configs: a hub and edges), the
embedded amqtt broker, and an in-memory one.

Import the fixtures explicitly: ``from tests.mqtt_fixtures import mosquitto, embedded_broker``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.netloop import NetworkLoop
from fedge.coordinator.service.broker import EmbeddedBroker, free_port
from fedge.coordinator.service.pki import make_broker_pki

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
SHIPPED_ACL = ROOT / "deploy" / "mosquitto" / "acl"
BRIDGE_DIR = ROOT / "deploy" / "mosquitto" / "bridge"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
needs_mosquitto = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto is not installed")


def _wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class MosquittoProcess:
    """One ``mosquitto -c conf`` process on a fixed loopback port; can be killed and restarted."""

    def __init__(self, conf: Path, port: int, *, scheme: str = "mqtt") -> None:
        self.conf, self.port, self.scheme = conf, port, scheme
        self.log = conf.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> MosquittoProcess:
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        if not _wait_listening(self.port, 10.0):
            self.kill()
            raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM): persistence is saved."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Crash (SIGKILL): nothing is saved since the last autosave."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def forget_sessions(self) -> None:
        """Delete the persistence file (while stopped): the next start knows no session."""
        for db in self.conf.parent.glob("*.db"):
            db.unlink()

    def restart(self, *, crash: bool = False) -> None:
        (self.kill if crash else self.stop)()
        self.start()


def _common_lines(tmp: Path) -> str:
    user = "user root\n" if os.geteuid() == 0 else ""
    return f"{user}persistence true\npersistence_location {tmp}/\nlog_dest stderr\n"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """Plain Mosquitto on a free loopback port: anonymous, persistent, raised queue limits."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n{_common_lines(tmp_path)}"
        "max_queued_messages 20000\nmax_inflight_messages 1000\n"
        # save after every change, so a crash (SIGKILL) keeps sessions as a graceful stop would
        "autosave_on_changes true\nautosave_interval 1\n"
    )
    broker = MosquittoProcess(conf, port).start()
    yield broker
    broker.kill()


PASSWORDS = {"dev-a": "secret-a", "coordinator": "secret-c"}


@pytest.fixture
def mosquitto_passwords(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """Mosquitto with per-device username/password (``PASSWORDS``) and the shipped ACL, no TLS."""
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user, pw in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {SHIPPED_ACL}\n{_common_lines(tmp_path)}"
    )
    broker = MosquittoProcess(conf, port).start()
    yield broker
    broker.kill()


@dataclass(frozen=True)
class TlsBroker:
    """A Mosquitto running the shipped TLS + ACL configuration, and the certificates to reach it."""

    process: MosquittoProcess
    pki: Path

    @property
    def url(self) -> str:
        return self.process.url

    def config(self, identity: str, client_id: str | None = None, **kw: object) -> TransportConfig:
        """A transport config authenticating as ``identity`` (a device id or "coordinator")."""
        return TransportConfig(
            broker_url=self.url,
            client_id=client_id or identity,
            tls_ca=str(self.pki / "ca.crt"),
            tls_cert=str(self.pki / f"{identity}.crt"),
            tls_key=str(self.pki / f"{identity}.key"),
            **kw,  # type: ignore[arg-type]
        )


def render_shipped_conf(port: int, pki: Path, acl: Path, data: Path) -> str:
    """The shipped mosquitto.conf with only port, file paths and log/persistence places rewritten."""
    text = SHIPPED_CONF.read_text()
    text = re.sub(r"^listener 8883$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = text.replace("/etc/mosquitto/fedge/acl", str(acl)).replace("/etc/mosquitto/fedge/", f"{pki}/")
    text = text.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {data}/")
    if os.geteuid() == 0:
        text = "user root\n" + text
    return text


TLS_DEVICES = ("dev-a", "dev-b")


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[TlsBroker]:
    """Mosquitto with the shipped config and ACL, certs for ``coordinator``, dev-a and dev-b."""
    pki = tmp_path / "pki"
    make_broker_pki(pki, TLS_DEVICES)
    acl = tmp_path / "acl"
    shutil.copy(SHIPPED_ACL, acl)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(render_shipped_conf(port, pki, acl, tmp_path))
    broker = MosquittoProcess(conf, port, scheme="mqtts").start()
    yield TlsBroker(broker, pki)
    broker.kill()


def render_bridge_conf(
    src: Path,
    port: int,
    data: Path,
    *,
    edge: str | None = None,
    hub_port: int | None = None,
    pki: Path | None = None,
) -> str:
    """A shipped deploy/mosquitto/bridge/ config on loopback: only the listener's port, the
    persistence directory and, for an edge, its bridge's name and the hub's address rewritten.

    With ``pki`` (holding the certificates and ACL files the configs name) its production form, made
    as the files say: the loopback lines deleted, the commented settings in force, and
    /etc/mosquitto/fedge/ read as ``pki``."""
    text = src.read_text()

    def sub(pattern: str, line: str) -> None:
        nonlocal text
        text, n = re.subn(pattern, line, text, flags=re.M)
        assert n == 1, f"{src.name}: no line {pattern!r} to rewrite"

    if pki is None:
        sub(r"^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1")
        if edge is not None:
            sub(r"^address hub\.fleet\.example:1883$", f"address 127.0.0.1:{hub_port}")
    else:
        sub(r"^listener 1883 127\.0\.0\.1\n", "")
        sub(r"^allow_anonymous true\n", "")
        if edge is not None:
            sub(r"^address hub\.fleet\.example:1883\n", "")
        text = re.sub(r"^#([a-z_]+ .*)$", r"\1", text, flags=re.M)  # settings; prose is "# ..."
        sub(r"^listener 8883$", f"listener {port} 127.0.0.1")
        if edge is not None:
            sub(r"^address hub\.fleet\.example:8883$", f"address 127.0.0.1:{hub_port}")
            text = text.replace("/etc/mosquitto/fedge/edge-1.", f"/etc/mosquitto/fedge/{edge}.")
        text = text.replace("/etc/mosquitto/fedge/", f"{pki}/")
    sub(r"^persistence_location /var/lib/mosquitto/$", f"persistence_location {data}/")
    if edge is not None:
        sub(r"^connection edge-1$", f"connection {edge}")
        sub(r"^remote_clientid edge-1$", f"remote_clientid {edge}")
    return ("user root\n" if os.geteuid() == 0 else "") + text


class MosquittoCluster:
    """A hub Mosquitto and edge Mosquittos bridged to it, on loopback, from the shipped configs.

    The coordinator uses :attr:`hub`; devices use :attr:`edges` (``edges[i].url``). The edges'
    bridges are named ``edge-1``, ``edge-2``... as in hub.acl; :meth:`start` returns once the hub
    reports every bridge up. With ``pki`` (see :func:`bridge_pki`) the production form: TLS with
    certificates everywhere, the device ACL on the edges and hub.acl on the hub.
    """

    def __init__(
        self, root: Path, edge_ports: Sequence[int], hub_port: int | None = None, pki: Path | None = None
    ) -> None:
        self.root, self.pki = root, pki
        scheme = "mqtt" if pki is None else "mqtts"
        hub_port = hub_port or free_port()
        self.hub = MosquittoProcess(self._conf("hub", BRIDGE_DIR / "hub.conf", hub_port), hub_port, scheme=scheme)
        self.names = [f"edge-{i + 1}" for i in range(len(edge_ports))]
        self.edges = [
            MosquittoProcess(
                self._conf(name, BRIDGE_DIR / "edge.conf", port, edge=name, hub_port=hub_port), port, scheme=scheme
            )
            for name, port in zip(self.names, edge_ports)
        ]

    def _conf(self, name: str, src: Path, port: int, **kw: object) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "mosquitto.conf"
        conf.write_text(render_bridge_conf(src, port, d, pki=self.pki, **kw))  # type: ignore[arg-type]
        return conf

    def start(self, timeout: float = 30.0) -> MosquittoCluster:
        self.hub.start()
        for e in self.edges:
            e.start()
        self.wait_bridged(self.names, timeout)
        return self

    def wait_bridged(self, names: Sequence[str], timeout: float = 30.0) -> None:
        """Block until the hub holds "1" for every named bridge's state (Mosquitto's notifications)."""
        import paho.mqtt.client as paho

        up: set[str] = set()
        done = threading.Event()

        def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
            name = msg.topic.split("/")[3]
            (up.add if msg.payload == b"1" else up.discard)(name)
            if set(names) <= up:
                done.set()

        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bridge-watch-{time.time_ns()}")
        if self.pki is not None:  # the coordinator's certificate may read the bridges' states
            c.tls_set(str(self.pki / "ca.crt"), str(self.pki / "coordinator.crt"), str(self.pki / "coordinator.key"))
        c.on_message = on_message
        c.on_connect = lambda c, *_: c.subscribe("$SYS/broker/connection/+/state", 1)
        c.connect("127.0.0.1", self.hub.port)
        c.loop_start()
        try:
            if not done.wait(timeout):
                logs = "\n".join(p.log.read_text()[-1500:] for p in (self.hub, *self.edges))
                raise AssertionError(f"bridges {sorted(set(names) - up)} not up within {timeout:g} s:\n{logs}")
        finally:
            c.disconnect()
            c.loop_stop()

    def kill(self) -> None:
        for p in (*self.edges, self.hub):
            p.kill()


def bridge_pki(directory: Path, edges: int, devices: Sequence[str]) -> Path:
    """What the bridge configs' production form reads from /etc/mosquitto/fedge/: the fleet CA, the
    hub's and the edges' server certificates, a client certificate per edge bridge (``edge-<i>``),
    the coordinator and each device, and the shipped ACL files."""
    names = tuple(f"edge-{i + 1}" for i in range(edges))
    make_broker_pki(directory, (*names, *devices))
    for ext in ("crt", "key"):
        shutil.copy(directory / f"broker.{ext}", directory / f"hub.{ext}")
    shutil.copy(SHIPPED_ACL, directory / "acl")
    shutil.copy(BRIDGE_DIR / "hub.acl", directory / "hub.acl")
    return directory


@pytest.fixture
def mosquitto_cluster(tmp_path: Path) -> Iterator[Callable[..., MosquittoCluster]]:
    """``mosquitto_cluster(edge_ports, tls_devices=None)``: a started :class:`MosquittoCluster`
    (the production TLS form, with certificates for ``tls_devices``, when that is given), killed
    after the test."""
    made: list[MosquittoCluster] = []

    def make(
        edge_ports: Sequence[int], hub_port: int | None = None, tls_devices: Sequence[str] | None = None
    ) -> MosquittoCluster:
        root = tmp_path / f"cluster{len(made)}"
        pki = None if tls_devices is None else bridge_pki(root / "pki", len(edge_ports), tls_devices)
        cluster = MosquittoCluster(root, edge_ports, hub_port, pki)
        made.append(cluster)
        return cluster.start()

    yield make
    for c in made:
        c.kill()


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """The coordinator's embedded amqtt broker on a free loopback port."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(params=["own-thread", "shared-loop"])
def network(request: pytest.FixtureRequest) -> Iterator[NetworkLoop | None]:
    """How a test's paho transports run: each on its own network thread (``None``, the default), or
    all on one shared :class:`NetworkLoop` (``MqttTransport(config, network=...)``), closed after."""
    if request.param == "own-thread":
        yield None
        return
    with NetworkLoop(name="test-netloop") as loop:
        yield loop

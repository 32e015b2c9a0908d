"""The one transport interface both sides speak, its frozen config and the inbound message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from fedge.agent.core.errors import ConfigError

MQTT_311 = "3.1.1"
MQTT_5 = "5"
#: MQTT 5, falling back to 3.1.1 when the broker refuses it or never answers its CONNECT
MQTT_AUTO = "auto"
_SCHEMES = {"mqtt": 1883, "mqtts": 8883, "memory": 0}


@dataclass(frozen=True)
class TransportConfig:
    """How one process reaches its broker. Resolved once; ``clean_start=False`` keeps the session.

    ``max_payload_bytes`` bounds a whole payload (sent or reassembled); payloads above
    ``chunk_bytes`` travel as ``transport.chunk`` pieces with a SHA-256 of the whole. Reassembly
    holds at most ``max_transfers`` partial payloads and ``max_reassembly_bytes`` in total, and
    forgets a partial payload untouched for ``transfer_timeout_s``.
    """

    broker_url: str
    client_id: str
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive_s: int = 30
    clean_start: bool = False
    session_expiry_s: int = 7 * 24 * 3600
    protocol: str = MQTT_5
    max_payload_bytes: int = 64 * 1024 * 1024
    chunk_bytes: int = 1024 * 1024
    max_transfers: int = 64
    max_reassembly_bytes: int = 256 * 1024 * 1024
    transfer_timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 30.0
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60
    max_inflight: int = 100
    receive_maximum: int = 1000
    #: other brokers of the same cluster, tried in this order when ``broker_url`` is unreachable
    #: (agent/core/transport/failover.py); all with ``broker_url``'s scheme
    fallback_urls: tuple[str, ...] = ()
    #: consecutive failed connection attempts to one broker (refused, timed out, or dropped within
    #: ``keepalive_s`` of connecting) before moving to the next of ``fallback_urls``
    failover_after: int = 3

    def __post_init__(self) -> None:
        scheme = urlsplit(self.broker_url).scheme
        if scheme not in _SCHEMES:
            raise ConfigError(f"broker_url {self.broker_url!r}: expected mqtt://, mqtts:// or memory://")
        if self.fallback_urls and scheme == "memory":
            raise ConfigError("fallback_urls: an in-memory transport has one broker")
        for url in self.fallback_urls:
            if urlsplit(url).scheme != scheme:  # TLS is not optional per broker
                raise ConfigError(f"fallback_urls: {url!r}: expected a {scheme}:// broker like broker_url")
        if len(set(self.urls)) != len(self.urls):
            raise ConfigError("fallback_urls: a broker is listed twice")
        if self.failover_after < 1:
            raise ConfigError("failover_after must be at least 1")
        if self.protocol not in (MQTT_311, MQTT_5, MQTT_AUTO):
            raise ConfigError(f"protocol {self.protocol!r}: expected '3.1.1', '5' or 'auto'")
        if not self.client_id or len(self.client_id) > 128:
            raise ConfigError("client_id must be 1-128 characters")
        if not 1024 <= self.chunk_bytes <= self.max_payload_bytes:
            raise ConfigError("chunk_bytes must be between 1 KiB and max_payload_bytes")
        if self.max_reassembly_bytes < self.max_payload_bytes:
            raise ConfigError("max_reassembly_bytes must hold at least one max_payload_bytes payload")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.tls_cert is not None and not self.tls:
            raise ConfigError("client certificates need an mqtts:// broker_url")
        if self.connect_timeout_s <= 0 or self.publish_timeout_s <= 0:
            raise ConfigError("timeouts must be positive")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("reconnect backoff must satisfy 0 < min <= max")

    @property
    def urls(self) -> tuple[str, ...]:
        """Every broker, in the order they are tried: ``broker_url`` first."""
        return (self.broker_url, *self.fallback_urls)

    @property
    def tls(self) -> bool:
        return urlsplit(self.broker_url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return endpoint(self.broker_url)[0]

    @property
    def port(self) -> int:
        return endpoint(self.broker_url)[1]


def endpoint(url: str) -> tuple[str, int]:
    """(host, port) of a broker URL; the scheme's default port when the URL has none."""
    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or _SCHEMES[u.scheme]


@dataclass(frozen=True)
class Inbound:
    """One whole payload received on ``topic``; pass it back to :meth:`Transport.ack` once stored.

    ``delivery`` is the transport's handle for the MQTT messages that carried it (one, or every
    chunk), ``duplicate`` says the broker flagged a redelivery.
    """

    topic: str
    payload: bytes
    retain: bool
    delivery: int
    duplicate: bool = False


class Transport(Protocol):
    """QoS 1 publish/subscribe with manual acknowledgement, the same over MQTT and in memory."""

    def set_will(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Message the broker publishes if this client vanishes; call before :meth:`connect`."""

    def connect(self) -> None:
        """Connect (or raise TransportError after ``connect_timeout_s``); reconnects by itself after,
        failing over to ``fallback_urls`` in turn when the broker stays unreachable."""

    def close(self) -> None:
        """Disconnect cleanly (no will) and release the network thread."""

    @property
    def connected(self) -> bool:
        """Whether the broker session is up right now."""

    @property
    def url(self) -> str:
        """The broker this transport is connected to, or trying now."""

    @property
    def connections(self) -> int:
        """Successful connections so far: a change means the link dropped and came back, after which
        the broker may have forgotten the session (and what was published meanwhile)."""

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected or ``timeout``; return whether connected."""

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1; kept across reconnects."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and block until the broker acknowledged every piece (or TransportError)."""

    def receive(self, timeout: float | None = None) -> Inbound | None:
        """The next whole payload, or None after ``timeout`` seconds (0: do not wait)."""

    def ack(self, inbound: Inbound) -> None:
        """Acknowledge ``inbound`` to the broker; call only after it is safely stored."""

    @property
    def dropped(self) -> int:
        """How many inputs were dropped as bad (each logged once)."""

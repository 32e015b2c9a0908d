"""An in-process broker and transport with the MQTT semantics fedge relies on, for simulation.

Same interface as :class:`~fedge.agent.core.transport.mqtt.MqttTransport`: QoS 1 with manual
acknowledgement, ``+``/``#`` filters, retained messages, persistent sessions that queue while
the client is away, redelivery of unacknowledged messages on reconnect, last wills, and the same
chunking. Delivery is synchronous and ordered, so a single-threaded simulation is deterministic.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fedge.agent.core.errors import TransportError
from fedge.agent.core.transport.base import Inbound, TransportConfig
from fedge.agent.core.transport.chunks import Inbox, split
from fedge.agent.core.transport.filters import check_filter, check_topic, matches

log = logging.getLogger(__name__)


@dataclass
class _Session:
    """Broker-side state of one client id, kept across disconnects unless clean_start."""

    filters: set[str] = field(default_factory=set)
    queued: deque[tuple[str, bytes]] = field(default_factory=deque)
    unacked: OrderedDict[int, tuple[str, bytes, bool]] = field(default_factory=OrderedDict)
    client: InMemoryTransport | None = None
    will: tuple[str, bytes, bool] | None = None


class InMemoryBroker:
    """A thread-safe MQTT-like broker in memory.

    ``max_queued`` mimics Mosquitto's per-client queue limit for offline sessions: messages past
    it are dropped silently (counted in :attr:`dropped`), as the real broker does.
    """

    def __init__(self, *, max_queued: int | None = None) -> None:
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._exact: dict[str, set[str]] = {}
        self._wild: dict[str, set[str]] = {}
        self._retained: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._max_queued = max_queued
        self.dropped = 0
        self.published = 0

    url = "memory://"

    # ------------------------------------------------------------ client side

    def _attach(self, client_id: str, transport: InMemoryTransport, clean_start: bool) -> None:
        with self._lock:
            old = self._sessions.get(client_id)
            if old is not None and old.client is not None and old.client is not transport:
                old.client._lost()  # session takeover, as MQTT does
            if clean_start and old is not None:
                self._forget(client_id)
                old = None
            s = old or self._sessions.setdefault(client_id, _Session())
            s.client = transport
            s.will = transport._will
            for mid, (topic, payload, retain) in s.unacked.items():
                transport._push(topic, payload, retain, True, mid)
            while s.queued:
                topic, payload = s.queued.popleft()
                self._send(s, topic, payload, False)

    def _detach(self, client_id: str, transport: InMemoryTransport, *, graceful: bool) -> None:
        with self._lock:
            s = self._sessions.get(client_id)
            if s is None or s.client is not transport:
                return
            s.client = None
            will, s.will = s.will, None
            if transport.config.clean_start:
                self._forget(client_id)
            if will is not None and not graceful:
                self._publish(*will)

    def _subscribe(self, client_id: str, topic_filter: str) -> None:
        with self._lock:
            s = self._sessions[client_id]
            s.filters.add(topic_filter)
            index = self._wild if ("+" in topic_filter or "#" in topic_filter) else self._exact
            index.setdefault(topic_filter, set()).add(client_id)
            for topic, payload in self._retained.items():
                if matches(topic_filter, topic):
                    self._send(s, topic, payload, True)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._lock:
            self.published += 1
            if retain:
                if payload:
                    self._retained[topic] = payload
                else:
                    self._retained.pop(topic, None)
            targets = set(self._exact.get(topic, ()))
            for f, ids in self._wild.items():
                if matches(f, topic):
                    targets |= ids
            for cid in sorted(targets):
                s = self._sessions[cid]
                if s.client is not None:
                    self._send(s, topic, payload, False)
                elif self._max_queued is not None and len(s.queued) >= self._max_queued:
                    self.dropped += 1
                else:
                    s.queued.append((topic, payload))

    def _ack(self, client_id: str, mid: int) -> None:
        with self._lock:
            s = self._sessions.get(client_id)
            if s is not None:
                s.unacked.pop(mid, None)

    # ------------------------------------------------------------ operator side

    def kill(self, client_id: str) -> None:
        """Cut a client off as if its network died: its will is published, its session kept."""
        with self._lock:
            s = self._sessions.get(client_id)
            if s is not None and s.client is not None:
                client = s.client
                client._lost()
                self._detach(client_id, client, graceful=False)

    def retained(self, topic: str) -> bytes | None:
        with self._lock:
            return self._retained.get(topic)

    def unacked(self, client_id: str) -> int:
        """Messages sent to ``client_id`` and not yet acknowledged."""
        with self._lock:
            s = self._sessions.get(client_id)
            return len(s.unacked) if s else 0

    # ------------------------------------------------------------ internals

    def _send(self, s: _Session, topic: str, payload: bytes, retain: bool) -> None:
        mid = next(self._ids)
        s.unacked[mid] = (topic, payload, retain)
        assert s.client is not None
        s.client._push(topic, payload, retain, False, mid)

    def _forget(self, client_id: str) -> None:
        s = self._sessions.pop(client_id)
        for f in s.filters:
            for index in (self._exact, self._wild):
                ids = index.get(f)
                if ids is not None:
                    ids.discard(client_id)
                    if not ids:
                        del index[f]


class InMemoryTransport:
    """A :class:`~fedge.agent.core.transport.base.Transport` attached to an :class:`InMemoryBroker`."""

    def __init__(
        self, config: TransportConfig, broker: InMemoryBroker, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._broker = broker
        self._cond = threading.Condition()
        self._raw: deque[tuple[str, bytes, bool, bool, tuple[int, int]]] = deque()
        self._inbox = Inbox(config, clock)
        self._will: tuple[str, bytes, bool] | None = None
        self._connected = False
        self._epoch = 0
        self._seq = itertools.count()
        self._transfer_prefix = f"{config.client_id[:64]}.{time.time_ns():x}"

    def set_will(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        self._will = (check_topic(topic), bytes(payload), retain)

    def connect(self) -> None:
        with self._cond:
            self._epoch += 1
            self._raw.clear()
            self._connected = True
        self._broker._attach(self.config.client_id, self, self.config.clean_start)

    def close(self) -> None:
        if self._connected:
            self._broker._detach(self.config.client_id, self, graceful=True)
            self._lost()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def url(self) -> str:
        return self.config.broker_url

    @property
    def connections(self) -> int:
        return self._epoch

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected

    def subscribe(self, topic_filter: str) -> None:
        self._require_connected()
        self._broker._subscribe(self.config.client_id, check_filter(topic_filter))

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._require_connected()
        check_topic(topic)
        payload = bytes(payload)
        if len(payload) > self.config.max_payload_bytes:
            raise TransportError(f"payload of {len(payload)} bytes exceeds max_payload_bytes")
        if len(payload) <= self.config.chunk_bytes:
            self._broker._publish(topic, payload, retain)
            return
        for piece in split(payload, self.config.chunk_bytes, f"{self._transfer_prefix}.{next(self._seq)}"):
            self._broker._publish(topic, piece, retain)

    def receive(self, timeout: float | None = None) -> Inbound | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._raw:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return None
                    self._cond.wait(left)
                topic, payload, retain, dup, handle = self._raw.popleft()
                inbound, to_ack = self._inbox.accept(topic, payload, retain=retain, dup=dup, handle=handle)
            self._ack_handles(to_ack)
            if inbound is not None:
                return inbound

    def ack(self, inbound: Inbound) -> None:
        with self._cond:
            handles = self._inbox.release(inbound)
        self._ack_handles(handles)

    @property
    def dropped(self) -> int:
        """Inputs dropped as bad (malformed, oversized, inconsistent, stale)."""
        return self._inbox.dropped

    # ------------------------------------------------------------ called by the broker

    def _push(self, topic: str, payload: bytes, retain: bool, dup: bool, mid: int) -> None:
        with self._cond:
            self._raw.append((topic, payload, retain, dup, (self._epoch, mid)))
            self._cond.notify()

    def _lost(self) -> None:
        with self._cond:
            self._connected = False
            self._epoch += 1
            self._raw.clear()
            self._inbox = Inbox(self.config, self._inbox._clock)

    def _ack_handles(self, handles: list) -> None:
        for epoch, mid in handles:
            if epoch == self._epoch and self._connected:
                self._broker._ack(self.config.client_id, mid)

    def _require_connected(self) -> None:
        if not self._connected:
            raise TransportError(f"{self.config.client_id} is not connected")

"""A TCP proxy between one MQTT client and a real broker, for fault tests: it can reset the
connection (RST both ways, as a dropped mobile link does) and can deliver every PUBLISH the
broker sends to the client a second time, later, with the DUP flag set (what a broker does
after a reconnect). It parses MQTT's fixed header only to cut the byte stream into packets and
to note the first PUBLISH on a topic and whether the client acknowledged it.

Import explicitly: ``from tests.mqtt_proxy import MqttProxy``.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator

_PUBLISH, _PUBACK = 3, 4


def _packets(buf: bytearray) -> Iterator[bytes]:
    """Cut complete MQTT packets off the front of ``buf`` (fixed header: type byte + varint length)."""
    while True:
        if len(buf) < 2:
            return
        length, mult, pos = 0, 1, 1
        while True:
            if pos >= len(buf):
                return
            b = buf[pos]
            length += (b & 0x7F) * mult
            mult *= 128
            pos += 1
            if not b & 0x80:
                break
        end = pos + length
        if len(buf) < end:
            return
        packet = bytes(buf[:end])
        del buf[:end]
        yield packet


def _body(packet: bytes) -> int:
    """Offset of the variable header (after the fixed header)."""
    pos = 1
    while packet[pos] & 0x80:
        pos += 1
    return pos + 1


def publish_topic_and_id(packet: bytes) -> tuple[str, int | None]:
    """Topic and packet id of a PUBLISH (id None at QoS 0)."""
    pos = _body(packet)
    (n,) = struct.unpack_from(">H", packet, pos)
    topic = packet[pos + 2 : pos + 2 + n].decode()
    qos = (packet[0] >> 1) & 3
    mid = struct.unpack_from(">H", packet, pos + 2 + n)[0] if qos else None
    return topic, mid


class _Pair:
    """One proxied connection: client socket, broker socket and the threads pumping them."""

    def __init__(self, proxy: MqttProxy, client: socket.socket, broker: socket.socket) -> None:
        self.proxy, self.client, self.broker = proxy, client, broker
        self.closed = threading.Event()
        self._heap: list[tuple[float, int, bytes]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        for target in (self._client_to_broker, self._broker_to_client, self._writer):
            threading.Thread(target=target, daemon=True).start()

    def _client_to_broker(self) -> None:
        buf = bytearray()
        try:
            while data := self.client.recv(65536):
                buf += data
                for p in _packets(buf):
                    if p[0] >> 4 == _PUBACK:
                        self.proxy._client_acked(struct.unpack_from(">H", p, _body(p))[0])
                    self.broker.sendall(p)
        except OSError:
            pass
        self.close()

    def _broker_to_client(self) -> None:
        buf = bytearray()
        try:
            while data := self.broker.recv(65536):
                buf += data
                for p in _packets(buf):
                    now = time.monotonic()
                    self._queue(now, p)
                    if p[0] >> 4 == _PUBLISH:
                        topic, mid = publish_topic_and_id(p)
                        self.proxy._published(topic, mid)
                        lag = self.proxy.duplicate_after_s
                        if lag is not None and mid is not None:
                            self._queue(now + lag, bytes([p[0] | 0x08]) + p[1:])
        except OSError:
            pass
        self.close()

    def _queue(self, due: float, packet: bytes) -> None:
        with self._cv:
            heapq.heappush(self._heap, (due, next(self._seq), packet))
            self._cv.notify()

    def _writer(self) -> None:
        """The only writer to the client: packets in due order (a copy waits for its time)."""
        while not self.closed.is_set():
            with self._cv:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    if self.closed.is_set():
                        return
                    self._cv.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()) or 0.001)
                _, _, packet = heapq.heappop(self._heap)
            try:
                self.client.sendall(packet)
            except OSError:
                self.close()
                return

    def reset(self) -> None:
        """RST both ways (SO_LINGER 0 then close)."""
        for s in (self.client, self.broker):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        with self._cv:
            self._cv.notify_all()
        for s in (self.client, self.broker):
            try:
                s.close()
            except OSError:
                pass


class MqttProxy:
    """Listens on a free loopback port and forwards each connection to ``broker_port``.

    ``duplicate_after_s``: when set, every QoS 1 PUBLISH to the client is sent again that many
    seconds later with DUP set. :meth:`reset` drops the current connection with an RST; the
    client reconnects through the proxy. :meth:`first_publish` / :meth:`acked` tell whether the
    client acknowledged the first message on a topic (i.e. finished handling it).
    """

    def __init__(self, broker_port: int, *, duplicate_after_s: float | None = None) -> None:
        self.broker_port = broker_port
        self.duplicate_after_s = duplicate_after_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._first: dict[str, int | None] = {}
        self._first_seen = threading.Condition(self._lock)
        self._acked: set[int] = set()
        self.connections = 0
        self.resets = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(("127.0.0.1", self.broker_port), timeout=5)
                broker.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, broker):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append(_Pair(self, client, broker))
                self.connections += 1

    def _published(self, topic: str, mid: int | None) -> None:
        with self._lock:
            if topic not in self._first:
                self._first[topic] = mid
                self._first_seen.notify_all()

    def _client_acked(self, mid: int) -> None:
        with self._lock:
            self._acked.add(mid)

    def wait_first_publish(self, topic: str, timeout: float) -> int | None:
        """Block until a PUBLISH on ``topic`` went to the client; its packet id."""
        with self._first_seen:
            if not self._first_seen.wait_for(lambda: topic in self._first, timeout):
                raise AssertionError(f"no message on {topic} within {timeout} s")
            return self._first[topic]

    def acked(self, mid: int | None) -> bool:
        with self._lock:
            return mid in self._acked

    def reset(self) -> None:
        """Reset every live connection through this proxy."""
        with self._lock:
            live = [p for p in self._pairs if not p.closed.is_set()]
            self.resets += len(live)
        for p in live:
            p.reset()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for p in pairs:
            p.close()

"""One network thread for many paho clients: what a process running hundreds of transports uses
instead of paho's ``loop_start()`` (a thread per client, and ``select()``, which fails silently for
socket numbers of 1,024 and up: paho issues #183, #819).

:class:`NetworkLoop` services every attached client through paho's external-loop API on one
``selectors.DefaultSelector`` (epoll on Linux, no descriptor limit): ``loop_read()`` when a socket
is readable (and again while TLS holds decrypted bytes), ``loop_write()`` when it is writable and
``want_write()``, ``loop_misc()`` (keepalive) about once a second. It does for each client what
paho's ``loop_forever()`` does: when a connection ends, unless the client asked to disconnect,
it asks the client's ``reconnect_delay()`` (the transport's backoff and failover policy: ``None``
means try now) and reconnects after that delay.

Connection attempts (``reconnect()``: TCP connect, TLS handshake, CONNECT) block, up to paho's
connect timeout for a broker that does not answer, so they run on a few connector threads; the
client is not serviced meanwhile, as paho's own thread does not service it either. Everything else
runs on the loop thread, and so do the client's callbacks (``on_connect_fail`` on a connector
thread): keep them short, as with ``loop_start()``.

Other threads (``publish()``, ``subscribe()``, ``ack()``) queue packets; the client's
``on_queued`` hook (see :class:`~fedge.agent.core.transport.mqtt.MqttTransport`) wakes the loop to
write them.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import paho.mqtt.client as paho

log = logging.getLogger(__name__)

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
#: paho's connection states in which the client asked to disconnect: do not reconnect
_LEAVING = frozenset({"MQTT_CS_DISCONNECTING", "MQTT_CS_DISCONNECTED"})


class LoopClient(Protocol):
    """What the loop needs of a paho client beyond paho's own API."""

    #: called (from any thread) after the client queued a packet to send
    on_queued: Callable[[], None] | None

    def reconnect_delay(self) -> float | None:
        """Seconds to wait before the next connection attempt; None: try at once."""


def _leaving(client: paho.Client) -> bool:
    return client._state.name in _LEAVING  # paho has no public accessor for its connection state


class _Entry:
    """One attached client and what the loop knows of it (loop thread only, once attached)."""

    __slots__ = ("client", "state", "sock", "fd", "events", "timer", "stopping", "stop_by", "waiters")

    def __init__(self, client: Any) -> None:
        self.client = client
        #: "new", "due" (a connection attempt is scheduled), "connecting" (on a connector thread),
        #: "open" (socket registered, or to be), "idle" (the client disconnected on purpose)
        self.state = "new"
        self.sock: Any = None
        self.fd = -1
        self.events = 0
        self.timer = 0
        #: detach() asked: no more reconnects; done once the DISCONNECT is out or at ``stop_by``
        self.stopping = False
        self.stop_by = 0.0
        self.waiters: list[threading.Event] = []


class NetworkLoop:
    """One thread (plus ``connectors`` threads for connection attempts) servicing many paho clients.

    ``with NetworkLoop() as loop:`` starts and closes it; :meth:`attach` a client after its
    ``connect_async()`` (as one would call ``loop_start()``), :meth:`detach` it after its
    ``disconnect()`` (as ``loop_stop()``): detach returns once the DISCONNECT is written or
    ``stop_timeout_s`` passed, and the client is no longer serviced.
    """

    def __init__(
        self,
        *,
        name: str = "fedge-netloop",
        connectors: int = 4,
        misc_interval_s: float = 1.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        if connectors < 1 or misc_interval_s <= 0 or stop_timeout_s <= 0:
            raise ValueError("NetworkLoop needs connectors >= 1 and positive intervals")
        self.name = name
        self.misc_interval_s = misc_interval_s
        self.stop_timeout_s = stop_timeout_s
        self._connectors = connectors
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, _READ, None)
        self._lock = threading.Lock()
        self._signalled = False
        self._inbox: list[tuple[str, _Entry, Any]] = []
        self._dirty: set[_Entry] = set()
        self._entries: dict[int, _Entry] = {}  # id(client) -> entry, loop thread only
        self._by_client: dict[int, _Entry] = {}  # id(client) -> entry, under _lock
        self._timers: list[tuple[float, int, _Entry, int]] = []
        self._seq = itertools.count()
        self._stopping: set[_Entry] = set()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> NetworkLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("this network loop is closed")
            if self._thread is None:
                self._pool = ThreadPoolExecutor(self._connectors, thread_name_prefix=f"{self.name}-connect")
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; clients still attached lose their connection (no DISCONNECT, no reconnect)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, pool = self._thread, self._pool
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if thread is None:
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> NetworkLoop:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def clients(self) -> int:
        """Clients attached now."""
        with self._lock:
            return len(self._by_client)

    def attach(self, client: LoopClient) -> None:
        """Service ``client`` from now on, starting with a connection attempt (after ``connect_async``)."""
        c: Any = client
        entry = _Entry(c)
        with self._lock:
            if self._thread is None or self._closed:
                raise RuntimeError("attach to a started network loop")
            if id(c) in self._by_client:
                raise RuntimeError("client already attached")
            self._by_client[id(c)] = entry
        client.on_queued = lambda: self._mark(entry)
        # with this set, paho no longer writes from the publishing thread itself (its external-loop mode)
        c.on_socket_register_write = lambda *_: self._mark(entry)
        self._post("attach", entry)

    def detach(self, client: LoopClient, timeout: float | None = None) -> None:
        """Stop servicing ``client``: wait until its DISCONNECT is written (or ``stop_timeout_s``)."""
        c: Any = client
        with self._lock:
            entry = self._by_client.get(id(c))
        if entry is None:
            return
        done = threading.Event()
        self._post("detach", entry, done)
        if threading.current_thread() is self._thread:
            return  # from a callback on the loop thread: it finishes after this callback
        done.wait(self.stop_timeout_s + 5.0 if timeout is None else timeout)

    # ------------------------------------------------------------ other threads -> loop thread

    def _post(self, what: str, entry: _Entry, arg: Any = None) -> None:
        with self._lock:
            self._inbox.append((what, entry, arg))
        self._wake()

    def _mark(self, entry: _Entry) -> None:
        with self._lock:
            self._dirty.add(entry)
            if self._signalled:
                return
            self._signalled = True
        self._send_wake()

    def _wake(self) -> None:
        with self._lock:
            self._signalled = True
        self._send_wake()

    def _send_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # ------------------------------------------------------------ the loop thread

    def _run(self) -> None:
        next_misc = time.monotonic() + self.misc_interval_s
        try:
            while not self._closed:
                now = time.monotonic()
                timeout = max(0.0, min(next_misc, self._next_due()) - now)
                for key, mask in self._sel.select(timeout):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError, OSError):
                            while self._wake_r.recv(4096):
                                pass
                    else:
                        self._service(key.data, mask)
                self._drain()
                now = time.monotonic()
                self._fire_timers(now)
                if now >= next_misc:
                    next_misc = now + self.misc_interval_s
                    for entry in list(self._entries.values()):
                        if entry.state == "open" and entry.sock is not None:
                            self._guard(entry, lambda c: c.loop_misc())
                for entry in list(self._stopping):
                    self._try_finish(entry, now)
        except Exception:  # a bug here would silently stop every client: say so loudly
            log.exception("%s: network loop failed; its clients are no longer serviced", self.name)
            raise
        finally:
            for entry in list(self._entries.values()):
                self._unregister(entry)
                with contextlib.suppress(Exception):
                    entry.client._sock_close()
                for done in entry.waiters:
                    done.set()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _next_due(self) -> float:
        t = self._timers[0][0] if self._timers else float("inf")
        if self._stopping:
            t = min(t, min(e.stop_by for e in self._stopping))
        return t

    def _drain(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            dirty, self._dirty = self._dirty, set()
            self._signalled = False
        for what, entry, arg in inbox:
            if what == "attach":
                self._entries[id(entry.client)] = entry
                self._schedule(entry, 0.0)
            elif what == "connected":
                entry.state = "open"
                self._settle(entry)
            elif what == "detach":
                entry.waiters.append(arg)
                if not entry.stopping:
                    entry.stopping = True
                    entry.stop_by = time.monotonic() + self.stop_timeout_s
                    entry.timer += 1  # cancels a scheduled attempt
                    self._stopping.add(entry)
                    dirty.add(entry)
        for entry in dirty:
            if entry.state == "open" and entry.sock is not None and entry.client.want_write():
                self._guard(entry, lambda c: c.loop_write())

    def _service(self, entry: _Entry, mask: int) -> None:
        def io(c: Any) -> None:
            if mask & _READ:
                c.loop_read()
                sock = c.socket()
                while sock is not None and getattr(sock, "pending", None) and sock.pending() > 0:
                    c.loop_read()  # TLS holds decrypted bytes the selector cannot see
                    sock = c.socket()
            if mask & _WRITE and c.socket() is not None:
                c.loop_write()

        self._guard(entry, io)

    def _guard(self, entry: _Entry, step: Callable[[Any], Any]) -> None:
        """Run one paho step for ``entry``; a failure loses that client's connection, not the loop."""
        try:
            step(entry.client)
        except Exception:
            log.exception("%s: servicing an MQTT client failed; dropping its connection", self.name)
            with contextlib.suppress(Exception):
                entry.client._sock_close()
        self._settle(entry)

    def _settle(self, entry: _Entry) -> None:
        """Bring the selector in line with the client's socket; a connection that ended reconnects."""
        c = entry.client
        sock = c.socket()
        if sock is not entry.sock:
            self._unregister(entry)
        if sock is None:
            if entry.state == "open":
                self._ended(entry)
        else:
            want = _READ | (_WRITE if c.want_write() else 0)
            if entry.sock is None:
                self._register(entry, sock, want)
            elif want != entry.events:
                self._sel.modify(sock, want, entry)
                entry.events = want
        if entry.stopping:
            self._try_finish(entry, time.monotonic())

    def _register(self, entry: _Entry, sock: Any, events: int) -> None:
        fd = sock.fileno()
        stale = self._sel.get_map().get(fd)
        if stale is not None:  # closed by another thread, its number reused before we noticed
            self._sel.unregister(stale.fileobj)
            if isinstance(stale.data, _Entry):
                stale.data.sock, stale.data.fd = None, -1
        self._sel.register(sock, events, entry)
        entry.sock, entry.fd, entry.events = sock, fd, events

    def _unregister(self, entry: _Entry) -> None:
        if entry.sock is None:
            return
        key = self._sel.get_map().get(entry.fd)
        if key is not None and key.data is entry:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(key.fileobj)
        entry.sock, entry.fd, entry.events = None, -1, 0

    def _ended(self, entry: _Entry) -> None:
        """The connection is gone: what ``loop_forever`` does next (stop, or wait and reconnect)."""
        if entry.stopping or _leaving(entry.client):
            entry.state = "idle"
            return
        try:
            delay = entry.client.reconnect_delay()
        except Exception:
            log.exception("%s: reconnect policy failed; retrying in 1 s", self.name)
            delay = 1.0
        self._schedule(entry, 0.0 if delay is None else delay)

    def _schedule(self, entry: _Entry, delay: float) -> None:
        entry.state = "due"
        entry.timer += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), entry, entry.timer))

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, entry, token = heapq.heappop(self._timers)
            if token != entry.timer or entry.state != "due":
                continue
            if entry.stopping or _leaving(entry.client):
                entry.state = "idle"
                continue
            entry.state = "connecting"
            assert self._pool is not None
            self._pool.submit(self._connect, entry)

    def _connect(self, entry: _Entry) -> None:
        """On a connector thread: one attempt, as ``loop_forever`` makes it."""
        c = entry.client
        try:
            c.reconnect()
        except Exception as e:  # paho's loop catches OSError; anything else would end its thread
            if not isinstance(e, OSError):
                log.exception("%s: connection attempt failed", self.name)
            with contextlib.suppress(Exception):
                c._sock_close()
            c._handle_on_connect_fail()  # what paho's own loop calls here (on_connect_fail)
        finally:
            self._post("connected", entry)

    def _try_finish(self, entry: _Entry, now: float) -> None:
        """A detached client is done once its DISCONNECT is out (or at once if none is pending)."""
        if not entry.stopping or entry.state == "connecting":
            return
        c = entry.client
        sock = c.socket()
        if sock is not None and c._state.name == "MQTT_CS_DISCONNECTING" and c.want_write() and now < entry.stop_by:
            return
        self._unregister(entry)
        if c.socket() is not None:
            with contextlib.suppress(Exception):
                c._sock_close()
        entry.state = "idle"
        self._stopping.discard(entry)
        self._entries.pop(id(c), None)
        with self._lock:
            self._by_client.pop(id(c), None)
        c.on_queued = None
        c.on_socket_register_write = None
        for done in entry.waiters:
            done.set()

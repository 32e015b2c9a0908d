"""The local broker ``serve`` and ``demo`` start when they get no ``--broker``, on 127.0.0.1 only.

:func:`local_broker` picks Mosquitto whenever it is installed (:class:`MosquittoBroker`, a child
process with a generated config: MQTT 5, queues offline sessions, redelivers unacknowledged
messages) and otherwise the embedded amqtt broker (:class:`EmbeddedBroker`, pure Python, in its
own thread). amqtt speaks MQTT 3.1.1 only, waits 5 s for a PUBACK and then forgets the message
(fedge devices acknowledge after handling, which can take longer), and queues nothing for an
offline anonymous session: good for a quick look, not for rollouts to devices that come and go.
Both bind to loopback only, so anonymous access is never offered beyond this machine. For fleets
use Mosquitto with TLS and the ACL (``deploy/mosquitto/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from fedge.agent.core.errors import ConfigError, TransportError

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (racy by nature; good enough for tests and dev)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An amqtt broker on ``127.0.0.1:port`` (a free port if 0). Use ``with EmbeddedBroker() as b``."""

    #: the MQTT version clients must speak to it
    protocol = "3.1.1"

    def __init__(self, port: int = 0, *, host: str = LOOPBACK, start_timeout_s: float = 10.0) -> None:
        if host not in (LOOPBACK, "localhost", "::1"):
            raise ConfigError(f"the embedded broker allows anonymous clients and binds to loopback only, not {host!r}")
        self.host = LOOPBACK if host == "localhost" else host
        self.port = port or free_port(self.host)
        self._timeout = start_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def description(self) -> str:
        return "embedded amqtt, MQTT 3.1.1; install mosquitto for a broker that redelivers"

    def start(self) -> EmbeddedBroker:
        """Start the broker thread; return when it listens, or raise TransportError."""
        if self._thread is not None:
            return self
        t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout) or self._error is not None:
            self.stop()
            raise TransportError(f"embedded broker did not start on {self.url}: {self._error or 'timeout'}")
        log.info("embedded broker listening on %s (started in %.2f s)", self.url, time.monotonic() - t0)
        return self

    def stop(self) -> None:
        """Shut the broker down and join its thread (bounded by the start timeout)."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(self._stop_event.set)
            thread.join(self._timeout)
        self._thread = None
        self._loop = None
        self._ready.clear()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": -1}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_amqtt_errors)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start(); the thread must not die silently
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        from amqtt.broker import Broker

        self._stop_event = asyncio.Event()
        broker = Broker(self._config(), loop=asyncio.get_running_loop())
        # amqtt awaits while iterating its subscription table, so a client subscribing meanwhile
        # raised "dictionary changed size during iteration" and killed the session being set up.
        broker._subscriptions = _SnapshotDict(broker._subscriptions)
        await broker.start()
        self._broker = broker
        self._ready.set()
        await self._stop_event.wait()
        await broker.shutdown()


class _SnapshotDict(dict):
    """A dict whose iteration walks a copy of its keys, so awaiting inside the loop is safe."""

    def __iter__(self) -> Iterator[Any]:
        return iter(list(dict.keys(self)))

    def items(self) -> Any:  # type: ignore[override]
        return list(dict.items(self))


#: Where Mosquitto is looked for besides $PATH (Debian installs it in /usr/sbin).
MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """The mosquitto executable, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PLACES if os.access(p, os.X_OK)), None)


class MosquittoBroker:
    """A Mosquitto child process on ``127.0.0.1:port``, anonymous, no persistence, generous queues."""

    protocol = "5"

    def __init__(self, port: int = 0, *, executable: str | None = None, start_timeout_s: float = 10.0) -> None:
        exe = executable or find_mosquitto()
        if exe is None:
            raise ConfigError("mosquitto is not installed")
        self.executable, self.host = exe, LOOPBACK
        self.port = port or free_port(self.host)
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.version = ""

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def description(self) -> str:
        return f"Mosquitto {self.version}".rstrip() + " started for this process"

    def start(self) -> MosquittoBroker:
        if self._proc is not None:
            return self
        t0 = time.monotonic()
        self._dir = tempfile.TemporaryDirectory(prefix="fedge-mosquitto-")
        conf = os.path.join(self._dir.name, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(
                f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 20000\nmax_inflight_messages 1000\nlog_dest stderr\n"
                "log_type error\nlog_type warning\n"
            )
        self._log = os.path.join(self._dir.name, "mosquitto.log")
        with open(self._log, "wb") as out:
            self._proc = subprocess.Popen(
                [self.executable, "-c", conf], stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self._timeout
        while True:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = open(self._log, errors="replace").read()[-500:].strip()
                self.stop()
                raise TransportError(f"mosquitto did not start on {self.url}: {tail or 'timeout'}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([self.executable, "-h"], capture_output=True, text=True, timeout=5).stdout
            self.version = out.split("version", 1)[1].split()[0] if "version" in out else ""
        log.info("%s listening on %s (started in %.2f s)", self.description, self.url, time.monotonic() - t0)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self._timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_broker(port: int = 0) -> MosquittoBroker | EmbeddedBroker:
    """Mosquitto on loopback when it is installed, else the embedded amqtt broker (not started)."""
    if port:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            raise TransportError(
                f"{LOOPBACK}:{port} is already in use (a broker running there? use it with "
                f"--broker mqtt://{LOOPBACK}:{port}, or start this one elsewhere with --local-port)"
            )
    return MosquittoBroker(port) if find_mosquitto() else EmbeddedBroker(port)


@contextlib.contextmanager
def broker_for(url: str | None) -> Iterator[str]:
    """The broker URL to use: ``url`` itself (an external broker), or a local one when None.

    For ``fedge-coordinator serve [--broker URL]``: ``with broker_for(opt) as url: ...``.
    """
    if url is not None:
        if not url.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(f"--broker {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        yield url
        return
    with local_broker() as b:
        yield b.url


def _quiet_amqtt_errors(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """amqtt leaves some per-client task errors unretrieved (a client's PUBACK later than its 5 s
    wait, a session dict changed while iterating): one warning line each instead of a traceback.
    amqtt does not redeliver after such a timeout; use Mosquitto where exactly-once matters."""
    exc = context.get("exception")
    if isinstance(exc, (TimeoutError, RuntimeError)):
        log.warning("embedded broker (amqtt): %s: %s", type(exc).__name__, exc)
        return
    loop.default_exception_handler(context)

"""The embedded broker: amqtt (pure Python, MQTT 3.1.1 only) on 127.0.0.1, in its own thread.

Used when ``fedge-coordinator serve`` gets no ``--broker``. It binds to loopback only (amqtt
would listen on every interface by default), so anonymous access is never offered beyond this
machine. A background thread runs its own asyncio loop; :meth:`EmbeddedBroker.start` returns
once the listener accepts connections. For fleets use Mosquitto (``deploy/mosquitto/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
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
        await broker.start()
        self._broker = broker
        self._ready.set()
        await self._stop_event.wait()
        await broker.shutdown()


@contextlib.contextmanager
def broker_for(url: str | None) -> Iterator[str]:
    """The broker URL to use: ``url`` itself (an external broker), or an embedded one when None.

    For ``fedge-coordinator serve [--broker URL]``: ``with broker_for(opt) as url: ...``.
    """
    if url is not None:
        if not url.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(f"--broker {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        yield url
        return
    with EmbeddedBroker() as b:
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

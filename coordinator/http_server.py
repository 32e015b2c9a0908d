"""The lifecycle of the coordinator's small HTTP servers (the dashboard, ``/metrics``), in one place.

:class:`BackgroundHTTPServer` binds on ``start()`` (an address it cannot listen on is a ConfigError
naming it), serves on a daemon thread, and shuts down and closes on ``stop()``; it is a context
manager. What is served stays with each server's handler. Standard library and ``fedge.agent.core``
only, so ``coordinator/fleet/`` and ``coordinator/service/`` may both use it (tests/test_layering.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from fedge.agent.core.errors import ConfigError

log = logging.getLogger(__name__)


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that answers with one whole body (plus ``extra_headers``) and logs requests at DEBUG
    under ``log_name``, not on stderr as the standard library does."""

    log_name = "http"
    extra_headers: tuple[tuple[str, str], ...] = ()

    def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in self.extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug(f"{self.log_name}: " + fmt, *args)


class BackgroundHTTPServer:
    """An HTTP server on ``host:port`` (port 0: any free port) in a background thread.

    ``bind`` makes the server for an address; ``name`` names the thread, the log line and the error;
    ``path`` ends :attr:`url`.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        bind: Callable[[tuple[str, int]], ThreadingHTTPServer],
        path: str = "/",
    ) -> None:
        self.name, self.host, self.port, self.path = name, host, port, path
        self._bind = bind
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        if self._server is not None:
            return self
        try:
            server = self._bind((self.host, self.port))
        except OSError as e:
            raise ConfigError(f"{self.name}: cannot listen on {self.host}:{self.port} ({e})") from None
        server.daemon_threads = True  # a request in flight never holds the process open
        self._server = server
        threading.Thread(target=server.serve_forever, name=self.name, daemon=True).start()
        log.info("%s on %s", self.name, self.url)
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{self.name}: not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.path}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

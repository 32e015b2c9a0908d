"""Where a round's SecAgg+ groups run (``--group-size``), shared by the service and the simulator:
threads of this process, worker processes, or Ray actors past one machine.

- ``thread``: the groups live in this process; their stage closes run side by side on threads
  (libsodium expanding masks and numpy summing them release the GIL).
- ``process``: each group's SecAgg+ server lives in one of ``workers`` worker processes (fresh
  interpreters, ``python -m fedge.coordinator.workers FD HOST``: nothing forked, nothing pickled),
  reached over a socket pair with bytes frames.
- ``ray``: the same worker body in Ray actors (the Ray this process already initialised, else the
  cluster named by ``RAY_ADDRESS``, else a local one).

This module only moves frames: what a worker runs is named by ``host``, a ``"module:factory"``
the worker imports and calls with its clock (the round code's ``GroupHost``), so the workers do not
depend on the round code they run.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from fedge.agent.core.errors import ConfigError, RoundFailed

log = logging.getLogger(__name__)

#: Where groups run: this process's threads, worker processes, or Ray actors.
ENGINES = ("thread", "process", "ray")
_CAST, _CALL, _STOP = b"c", b"q", b"stop"
#: How long a starting worker may take to import its host before it is given up.
START_TIMEOUT_S = 120.0


def spawn(module: str, *args: str) -> tuple[subprocess.Popen, Connection]:
    """A worker: a fresh interpreter running ``python -m module FD *args`` (nothing forked, nothing
    pickled) on one end of a socket pair; returns the process and our end."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(theirs.fileno()), *args],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    return proc, Connection(ours.detach())


def stop(workers: Sequence[tuple[subprocess.Popen, Connection]], frame: bytes) -> None:
    """Send each worker ``frame`` (its stop), give each 10 s to exit, kill what is left, close our ends."""
    for _, conn in workers:
        try:
            conn.send_bytes(frame)
        except OSError:
            pass
    for proc, conn in workers:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        conn.close()


def _factory(host: str) -> Callable[[Callable[[], float]], Any]:
    module, _, name = host.partition(":")
    return getattr(importlib.import_module(module), name)


class _PipeChannel:
    """One worker process's frames (a lock keeps a call's request and reply together)."""

    def __init__(self, name: str, proc: subprocess.Popen, conn: Connection) -> None:
        self.name, self._proc, self._conn = name, proc, conn
        self._lock = threading.Lock()

    def _lost(self) -> RoundFailed:
        return RoundFailed(f"group worker {self.name} is gone (exit code {self._proc.poll()})")

    def cast(self, frame: bytes) -> None:
        with self._lock:
            try:
                self._conn.send_bytes(_CAST + frame)
            except OSError:
                raise self._lost() from None

    def call(self, frame: bytes) -> bytes:
        with self._lock:
            try:
                self._conn.send_bytes(_CALL + frame)
                return self._conn.recv_bytes()
            except (EOFError, OSError):
                raise self._lost() from None


class _RayHost:
    """The Ray actor body: a worker's host."""

    def __init__(self, host: str) -> None:
        self.host = _factory(host)(time.monotonic)

    def handle(self, frame: bytes) -> bytes | None:
        return self.host.handle(frame)


class _RayChannel:
    """One Ray actor's frames. A cast is submitted without waiting (Ray runs one caller's tasks on an
    actor in order); a call waits for its reply."""

    def __init__(self, name: str, ray: Any, actor: Any) -> None:
        self.name, self._ray, self._actor = name, ray, actor
        self._lock = threading.Lock()

    def cast(self, frame: bytes) -> None:
        with self._lock:
            self._actor.handle.remote(frame)

    def call(self, frame: bytes) -> bytes:
        with self._lock:
            try:
                return self._ray.get(self._actor.handle.remote(frame))
            except Exception as e:  # RayActorError and kin: the actor or its node is gone
                raise RoundFailed(f"group worker {self.name} is gone ({type(e).__name__})") from None


class GroupWorkers:
    """Runs a round's group jobs side by side on up to ``workers`` threads (0: one per CPU), and with
    ``engine`` ``process`` or ``ray`` holds the groups themselves in that many workers running
    ``host``; everything starts on first use, :meth:`close` stops it."""

    def __init__(self, workers: int = 0, engine: str = "thread", host: str | None = None) -> None:
        if workers < 0:
            raise ValueError(f"workers: expected >= 0, got {workers}")
        if engine not in ENGINES:
            raise ConfigError(f"group engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
        if engine != "thread" and not host:
            raise ValueError("process and ray group workers need the host they run")
        self.workers = workers or os.cpu_count() or 1
        self.engine = engine
        self._host = host or ""
        self._pool: ThreadPoolExecutor | None = None
        self._channels: list[Any] = []
        self._procs: list[tuple[subprocess.Popen, Connection]] = []
        self._ray: Any = None
        self._ray_started = False
        self._actors: list[Any] = []

    # ------------------------------------------------------------------ Parallel

    def __call__(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        if len(jobs) < 2 or self.workers == 1:
            return [job() for job in jobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedge-group")
        return list(self._pool.map(lambda job: job(), jobs))

    # ------------------------------------------------------------------ GroupHosts

    @property
    def hosts(self) -> GroupWorkers | None:
        """Where groups live: these workers (process, ray), or None (this process)."""
        return None if self.engine == "thread" else self

    def channel(self, index: int) -> Any:
        """The channel of the worker that runs group ``index`` (groups spread round-robin)."""
        if not self._channels:
            self._start()
        return self._channels[index % len(self._channels)]

    def _start(self) -> None:
        if self.engine == "process":
            self._start_processes()
        elif self.engine == "ray":
            self._start_ray()
        else:
            raise ValueError("thread group workers hold no groups")
        log.info("%d group workers (%s) started", self.workers, self.engine)

    def _start_processes(self) -> None:
        self._procs = [spawn("fedge.coordinator.workers", self._host) for _ in range(self.workers)]
        for i, (proc, conn) in enumerate(self._procs):
            try:
                answer = conn.recv_bytes() if conn.poll(START_TIMEOUT_S) else b"no answer"
            except (EOFError, OSError):
                answer = b"the worker exited"
            if answer != b"ok":
                self.close()
                raise ConfigError(f"group worker failed to start: {answer.decode(errors='replace')}")
            self._channels.append(_PipeChannel(f"p{i}", proc, conn))

    def _start_ray(self) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--group-engine ray: Ray is not installed (pip install 'fedge[ray]')") from None
        self._ray = ray
        if not ray.is_initialized():
            self._ray_started = True
            if os.environ.get("RAY_ADDRESS"):  # a cluster: its nodes need fedge installed
                ray.init(log_to_driver=False, configure_logging=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        # no CPU reserved: a group actor mostly waits for the driver, and must never wait for the
        # device hosts' CPUs; SPREAD puts them on different nodes of a cluster
        actor = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(_RayHost)
        self._actors = [actor.remote(self._host) for _ in range(self.workers)]
        self._channels = [_RayChannel(f"r{i}", ray, a) for i, a in enumerate(self._actors)]

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        stop(self._procs, _STOP)
        if self._ray is not None:
            for a in self._actors:
                try:
                    self._ray.kill(a)
                except Exception:  # Ray already shut down by whoever started it
                    pass
            if self._ray_started:
                self._ray.shutdown()
        self._channels, self._procs, self._actors = [], [], []
        self._ray, self._ray_started = None, False


def _worker_main(conn: Connection, host: str) -> None:
    """A worker process: build the host, then answer frames until told to stop or the driver goes."""
    try:
        handler = _factory(host)(time.monotonic)
    except Exception as e:
        conn.send_bytes(f"{type(e).__name__}: {e}".encode())
        return
    conn.send_bytes(b"ok")
    while True:
        try:
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if frame == _STOP:
            return
        reply = handler.handle(frame[1:])
        if frame[:1] == _CALL:
            conn.send_bytes(reply if reply is not None else b"")


if __name__ == "__main__":  # a group worker: python -m fedge.coordinator.workers FD HOST
    import signal

    # Ctrl-C reaches the whole process group: the driver stops its workers (or they see EOF)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s group worker: %(message)s")
    _worker_main(Connection(int(sys.argv[1])), sys.argv[2])

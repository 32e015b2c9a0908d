"""Device hosts on Ray actors: the same hosts and frames as worker processes, past one machine.

Each actor rebuilds the world from the recipe and answers wire-byte frames
(:class:`fedge.simulations.hosts.DeviceHost`). Ray serialises the actor class (by reference), the
recipe (plain values) and the frames (bytes); protocol objects never cross it.
Ray is an optional extra (``pip install fedge[ray]``); results equal the local engine's for the
same seed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fedge.agent.core.errors import ConfigError
from fedge.simulations.hosts import HostPool

log = logging.getLogger(__name__)


class _Host:
    """The actor body: a device host over a rebuilt world."""

    def __init__(self, recipe: dict[str, Any]) -> None:
        from fedge.simulations.hosts import build_host

        self.host = build_host(recipe)

    def handle(self, frame: bytes) -> bytes:
        return self.host.handle(frame)


class RayPool(HostPool):
    """``workers`` Ray actors, each a device host.

    Uses the Ray this process already initialised, else the cluster named by ``RAY_ADDRESS``,
    else a local Ray with ``workers`` CPUs; a Ray it started is shut down by :meth:`close`.
    """

    def __init__(self, recipe: dict[str, Any], workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--engine ray: Ray is not installed (pip install 'fedge[ray]')") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:  # workers import fedge as installed, never the repository root (one import name)
            if os.environ.get("RAY_ADDRESS"):  # a cluster: its nodes need fedge installed
                ray.init(log_to_driver=False, configure_logging=False)
            else:  # a local Ray sized to the hosts
                ray.init(
                    num_cpus=max(workers, 1),
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
        actor: Any = ray.remote(num_cpus=1)(_Host)
        self.size = workers
        self._actors: list[Any] = [actor.remote(recipe) for _ in range(workers)]

    def exchange(self, frames: Sequence[Iterable[bytes]]) -> Iterator[tuple[int, bytes]]:
        ray = self._ray
        queues = [iter(f) for f in frames]
        busy: dict[Any, int] = {}
        for h, q in enumerate(queues):
            first = next(q, None)
            if first is not None:
                busy[self._actors[h].handle.remote(first)] = h
        while busy:
            done, _ = ray.wait(list(busy), num_returns=1)
            for ref in done:
                h = busy.pop(ref)
                following = next(queues[h], None)
                if following is not None:
                    busy[self._actors[h].handle.remote(following)] = h
                yield h, ray.get(ref)

    def close(self) -> None:
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []
        if self._started:  # a Ray this pool started ends with it
            self._ray.shutdown()
            self._started = False

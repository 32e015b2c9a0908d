"""Worker threads for the closes of a round's SecAgg+ groups (``--group-size``), shared by the service
and the simulator.

Threads, not processes: a group's server state would have to be serialized, and the work inside a
close (libsodium expanding masks, numpy summing them) releases the GIL. Past one machine the
simulator's device hosts run on Ray (``--engine ray``); the groups of one round stay in its driver.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class GroupWorkers:
    """A :data:`~fedge.coordinator.rounds.grouped.Parallel`: runs jobs side by side on up to ``workers``
    threads (0: one per CPU), started on first use; :meth:`close` stops them."""

    def __init__(self, workers: int = 0) -> None:
        if workers < 0:
            raise ValueError(f"workers: expected >= 0, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        if len(jobs) < 2 or self.workers == 1:
            return [job() for job in jobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedge-group")
        return list(self._pool.map(lambda job: job(), jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

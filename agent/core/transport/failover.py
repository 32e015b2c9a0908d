"""Several brokers of one cluster: which one a device tries first, and when it moves to the next.

:func:`broker_order` spreads a fleet over its brokers by rendezvous hashing (highest random
weight; Thaler and Ravishankar, "Using name-based mappings to increase hit rates", IEEE/ACM
ToN 1998): each device ranks every broker by a hash of (device id, broker URL) and tries them in
that order. The ranking is stable (SHA-256, not Python's salted ``hash``), spreads devices evenly,
and when one broker is gone its devices spread evenly over the others instead of all landing on
its neighbour in the list; adding or removing a broker moves only the devices that ranked it first.

:class:`Failover` is the bookkeeping :class:`~fedge.agent.core.transport.mqtt.MqttTransport` keeps on
paho's network thread: failed attempts on the current broker, and whether to move on. Pure: no
I/O, time passed in.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence


def broker_order(urls: Sequence[str], client_id: str) -> tuple[str, ...]:
    """``urls`` in the order ``client_id`` tries them (rendezvous hashing; see the module docstring)."""

    def weight(url: str) -> bytes:
        return hashlib.sha256(f"{client_id}\n{url}".encode()).digest()

    return tuple(sorted(urls, key=weight, reverse=True))


class Failover:
    """Failed connection attempts on the current broker of ``urls``; :meth:`due` says when to move on.

    Every attempt gets one verdict. It failed when it was refused or never connected
    (:meth:`failed`), or when its connection was lost before the broker accepted it or within
    ``stable_s`` of that (:meth:`down`): a broker that drops every client at once is as unreachable
    as one that refuses them. A connection that lasted longer resets the count, so a broker restart
    is waited out on the same broker (keeping the session there) unless it takes ``after`` attempts.
    """

    def __init__(
        self, urls: Sequence[str], after: int, stable_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not urls or after < 1:
            raise ValueError("Failover needs at least one URL and after >= 1")
        self.urls = tuple(urls)
        self.after = after
        self.stable_s = stable_s
        self._clock = clock
        self._index = 0
        #: "trying" (no verdict yet), "up" (since _up_since) or "judged"
        self._state = "trying"
        self._up_since = 0.0
        #: consecutive failed attempts on the current broker
        self.failures = 0

    @property
    def current(self) -> str:
        return self.urls[self._index]

    def select(self, index: int) -> None:
        """Use ``urls[index]`` from now on, with a clean count; an attempt on it starts."""
        self._index = index % len(self.urls)
        self.failures = 0
        self._state = "trying"

    def begin(self) -> None:
        """Another attempt on the current broker starts."""
        self._state = "trying"

    def up(self) -> None:
        """The broker accepted the connection."""
        self._state, self._up_since = "up", self._clock()

    def failed(self) -> None:
        """The attempt failed before a connection was accepted (refused, unreachable, timed out)."""
        if self._state != "judged":
            self.failures += 1
            self._state = "judged"

    def down(self) -> None:
        """The connection was lost, or closed before the broker accepted it."""
        if self._state == "up" and self._clock() - self._up_since >= self.stable_s:
            self.failures = 0  # it was a working connection: a new outage starts
        elif self._state != "judged":
            self.failures += 1
        self._state = "judged"

    def due(self) -> bool:
        """Whether to move to the next broker before the next attempt."""
        return len(self.urls) > 1 and self.failures >= self.after

    def advance(self) -> tuple[str, str]:
        """Move to the next broker (wrapping around); returns (the one left, the one to try)."""
        left = self.current
        self.select(self._index + 1)
        return left, self.current

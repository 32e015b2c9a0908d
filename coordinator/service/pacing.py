"""Pacing: admit devices in batches so that at most ``batch`` of them owe the coordinator a reply.

Mosquitto keeps at most ``max_queued_messages`` (1,000 by default) QoS-1 messages per client and
drops the rest *silently*; if every selected device uploaded at once, the coordinator's queue could
overflow. The service pushes the engine's outbound messages here and sends only what
:meth:`Pacer.admit` releases; a device's reply frees its slot. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from fedge.agent.core.messages.common import Outbound


class Pacer:
    """A FIFO of outbound messages and the set of devices we are waiting on."""

    def __init__(self, batch: int) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.batch = batch
        self._queue: deque[Outbound] = deque()
        self._owing: set[str] = set()
        #: this stage's admitted messages per device that has not answered yet (for :meth:`resend`)
        self._sent: dict[str, list[Outbound]] = {}

    def push(self, outbound: Iterable[Outbound]) -> None:
        self._queue.extend(outbound)

    def answered(self, device_id: str) -> None:
        """``device_id`` replied: its slot is free."""
        self._owing.discard(device_id)
        self._sent.pop(device_id, None)

    def new_stage(self) -> None:
        """A stage closed: whoever did not answer in time no longer holds a slot."""
        self._owing.clear()
        self._sent.clear()

    def admit(self) -> list[Outbound]:
        """The messages that may go out now, in order (a device already owing us is not held back)."""
        out = []
        while self._queue:
            d = self._queue[0].device_id
            if d not in self._owing and len(self._owing) >= self.batch:
                break
            o = self._queue.popleft()
            out.append(o)
            self._owing.add(d)
            self._sent.setdefault(d, []).append(o)
        return out

    def resend(self) -> list[Outbound]:
        """This stage's admitted messages to every device that has not answered: sent again after the
        broker may have lost them (a repeat is harmless, the device answers it from its store)."""
        return [o for sent in self._sent.values() for o in sent]

    @property
    def waiting(self) -> int:
        """Messages not yet admitted."""
        return len(self._queue)

    @property
    def owing(self) -> int:
        return len(self._owing)

    def clear(self) -> None:
        self._queue.clear()
        self._owing.clear()
        self._sent.clear()


class ResendSchedule:
    """When to repeat a round's unanswered requests after the broker link came back: at once, then
    after ``first`` seconds, each gap doubling up to ``cap`` (a round of devices still training would
    otherwise get their task, model weights included, every ``first`` seconds until it ends).
    A new reconnect starts over. Pure: the caller passes the link's connection count and the time."""

    def __init__(self, first: float, cap: float) -> None:
        if not 0 < first <= cap:
            raise ValueError("resend gaps: expected 0 < first <= cap")
        self.first, self.cap = first, cap
        self._seen = 0
        self._at: float | None = None
        self._gap = first

    def watch(self, connections: int) -> None:
        """A round's watch begins: the link as it is now is no reconnect."""
        self._seen, self._at, self._gap = connections, None, self.first

    def due(self, connections: int, connected: bool, now: float) -> bool:
        """True when the requests should be repeated now (and the next repeat is scheduled)."""
        if connections != self._seen:
            self._seen, self._at, self._gap = connections, now, self.first
        if self._at is None or now < self._at or not connected:
            return False
        self._at = now + self._gap
        self._gap = min(self._gap * 2, self.cap)
        return True

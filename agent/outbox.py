"""Messages the device must send, kept in its SQLite store until the broker acknowledged them.

Put before publish, delete after the PUBACK: an agent killed in between sends the message again
after it restarts (:meth:`Outbox.flush` on every (re)connect, oldest first). Each row is unique by
(round, stage) where the stage is the message's wire type, so a replayed put is a no-op, and the
coordinator recognises a redelivery by (round, device, stage) and counts it once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import sqlite_utils

from fedge.agent.core.errors import TransportError

log = logging.getLogger(__name__)

TABLE = "outbox"


@dataclasses.dataclass(frozen=True)
class OutboxItem:
    """One unsent message: its wire bytes, where they go, and how often sending was tried."""

    id: int
    round_id: int
    stage: str
    topic: str
    payload: bytes
    created: float
    attempts: int


class Outbox:
    """The outbox table of one store; not thread-safe (the daemon's main thread owns it)."""

    def __init__(self, db: sqlite_utils.Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def put(self, round_id: int, stage: str, topic: str, payload: bytes) -> tuple[int, bool]:
        """Store a message (committed on return); return its id and whether it is new.

        A second put for the same (round, stage) while the first is unsent keeps the first
        payload: what was promised once is what is sent, however often the agent restarts. After
        delivery the row is gone; the daemon's round state keeps it from promising a stage twice,
        and the coordinator refuses a second copy anyway.
        """
        with self._db.conn:
            cur = self._db.execute(
                f"insert or ignore into {TABLE} (round_id, stage, topic, payload, created) values (?, ?, ?, ?, ?)",
                [round_id, stage, topic, bytes(payload), self._clock()],
            )
            new = cur.rowcount == 1
            row = self._db.execute(
                f"select id from {TABLE} where round_id = ? and stage = ?", [round_id, stage]
            ).fetchone()
        return int(row[0]), new

    def pending(self) -> list[OutboxItem]:
        """Every unsent message, oldest first."""
        rows = self._db.execute(
            f"select id, round_id, stage, topic, payload, created, attempts from {TABLE} order by id"
        ).fetchall()
        return [OutboxItem(*r) for r in rows]

    def __len__(self) -> int:
        return int(self._db.execute(f"select count(*) from {TABLE}").fetchone()[0])

    def delete(self, item_id: int) -> None:
        """Forget a message the broker acknowledged."""
        with self._db.conn:
            self._db.execute(f"delete from {TABLE} where id = ?", [item_id])

    def send(self, item: OutboxItem, publish: Callable[[str, bytes], None]) -> None:
        """Count an attempt, publish (blocks until PUBACK or TransportError), then delete."""
        with self._db.conn:
            self._db.execute(f"update {TABLE} set attempts = attempts + 1 where id = ?", [item.id])
        publish(item.topic, item.payload)
        self.delete(item.id)
        log.debug(
            "sent %s (attempt %d)", item.stage, item.attempts + 1, extra={"round": item.round_id, "stage": item.stage}
        )

    def flush(self, publish: Callable[[str, bytes], None]) -> int:
        """Send every pending message in order; return how many went out.

        Stops at the first :class:`TransportError` and re-raises it: the rest stay for the next
        flush, in order.
        """
        sent = 0
        for item in self.pending():
            try:
                self.send(item, publish)
            except TransportError:
                log.info("outbox flush stopped after %d sent; %d left", sent, len(self), extra={"round": item.round_id})
                raise
            sent += 1
        return sent

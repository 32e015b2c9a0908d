"""What the device did in each round, in its store: so a restart knows which rounds it was part of.

Statuses: ``checked_in``/``ineligible`` after an announcement, ``training``, ``uploaded``,
``declined``, ``ended``, and ``dropped`` for a round that was in progress when the agent stopped
(its in-memory SecAgg secrets are gone, so it cannot continue it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import sqlite_utils

from fedge.agent.core.names import ValueEnum

TABLE = "round_state"


class RoundStatus(ValueEnum):
    """The device's status in one round (stored as its value)."""

    CHECKED_IN = "checked_in"
    INELIGIBLE = "ineligible"
    TRAINING = "training"
    UPLOADED = "uploaded"
    DECLINED = "declined"
    ENDED = "ended"
    DROPPED = "dropped"


#: Statuses after which the agent has nothing more to do in the round.
FINAL = frozenset({RoundStatus.INELIGIBLE, RoundStatus.DECLINED, RoundStatus.ENDED, RoundStatus.DROPPED})
#: Statuses whose in-memory part (training, SecAgg+ secrets) dies with the process.
IN_PROGRESS = frozenset({RoundStatus.TRAINING, RoundStatus.UPLOADED})


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """The device's last known stage and status in one round."""

    round_id: int
    stage: str
    status: RoundStatus
    updated: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RoundStatus(self.status))


class RoundStates:
    """The round_state table of one store."""

    def __init__(self, db: sqlite_utils.Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def get(self, round_id: int) -> RoundRecord | None:
        row = self._db.execute(
            f"select round_id, stage, status, updated from {TABLE} where round_id = ?", [round_id]
        ).fetchone()
        return RoundRecord(*row) if row else None

    def set(self, round_id: int, stage: str, status: RoundStatus) -> None:
        """Record (committed on return) the device's stage and status in a round."""
        status = RoundStatus(status)
        with self._db.conn:
            self._db.execute(
                f"insert into {TABLE} (round_id, stage, status, updated) values (?, ?, ?, ?) "
                "on conflict(round_id) do update set stage = excluded.stage, status = excluded.status, updated = excluded.updated",
                [round_id, stage, status.value, self._clock()],
            )

    def drop_unfinished(self) -> list[int]:
        """At startup: mark rounds that had a task in progress as ``dropped``; return their ids.

        A round the device only checked in to stays open: nothing of it was lost with the process.
        """
        busy = ", ".join(f"'{s.value}'" for s in sorted(IN_PROGRESS, key=lambda s: s.value))
        ids = [r[0] for r in self._db.execute(f"select round_id from {TABLE} where status in ({busy})")]
        with self._db.conn:
            for rid in ids:
                self._db.execute(
                    f"update {TABLE} set status = ?, updated = ? where round_id = ?",
                    [RoundStatus.DROPPED.value, self._clock(), rid],
                )
        return ids

    def latest(self, limit: int = 10) -> list[RoundRecord]:
        """The most recent rounds, newest first."""
        rows = self._db.execute(
            f"select round_id, stage, status, updated from {TABLE} order by round_id desc limit ?", [limit]
        )
        return [RoundRecord(*r) for r in rows]

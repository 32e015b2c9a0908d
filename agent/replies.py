"""What the device answered to each coordinator request, kept so a repeat gets the same answer.

MQTT QoS 1 is at-least-once: after a reconnect, a broker restart or a redelivery the same
``Task`` or SecAgg+ stage request can arrive again, long after it was answered. The daemon looks
each request up here first: a request seen before is answered with the stored replies again (the
outbox and the coordinator deduplicate them) and changes no state, so a device never trains
twice or re-keys within a round. A request of the same kind with different bytes is not
answered. Rows live in the agent's store, so this holds across a reconnect and a restart; only
the newest :data:`KEEP_ROUNDS` rounds are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Iterator, Sequence

import sqlite_utils

TABLE = "round_replies"
#: Rounds whose replies are kept (older repeats fall back to the round state: never trained again).
KEEP_ROUNDS = 16
_LEN = struct.Struct(">I")


@dataclasses.dataclass(frozen=True)
class Reply:
    """One reply as it went to the outbox: its wire type and bytes."""

    stage: str
    payload: bytes


@dataclasses.dataclass(frozen=True)
class Answered:
    """A request the device handled: the digest of its bytes and what it answered."""

    digest: bytes
    replies: tuple[Reply, ...]

    def matches(self, payload: bytes) -> bool:
        return self.digest == request_digest(payload)


def request_digest(payload: bytes) -> bytes:
    """Identifies a request's bytes (not a security check: the request was authenticated by its channel)."""
    return hashlib.sha256(bytes(payload)).digest()


def _pack(replies: Sequence[Reply]) -> bytes:
    parts = []
    for r in replies:
        stage = r.stage.encode()
        parts += [_LEN.pack(len(stage)), stage, _LEN.pack(len(r.payload)), bytes(r.payload)]
    return b"".join(parts)


def _unpack(blob: bytes) -> tuple[Reply, ...]:
    out, pos = [], 0
    while pos < len(blob):
        (n,) = _LEN.unpack_from(blob, pos)
        stage = blob[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
        (m,) = _LEN.unpack_from(blob, pos)
        out.append(Reply(stage, blob[pos + 4 : pos + 4 + m]))
        pos += 4 + m
    return tuple(out)


class Replies:
    """The round_replies table of one store; the daemon's main thread owns it."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._db = db

    def get(self, round_id: int, request: str) -> Answered | None:
        row = self._db.execute(
            f"select digest, replies from {TABLE} where round_id = ? and request = ?", [round_id, request]
        ).fetchone()
        return Answered(bytes(row[0]), _unpack(bytes(row[1]))) if row else None

    def stored(self) -> Iterator[tuple[int, Reply]]:
        """Every reply the store holds, with its round id (oldest round first): what this device sent."""
        for round_id, blob in self._db.execute(f"select round_id, replies from {TABLE} order by round_id").fetchall():
            for reply in _unpack(bytes(blob)):
                yield round_id, reply

    def put(self, round_id: int, request: str, payload: bytes, replies: Sequence[Reply]) -> None:
        """Record (committed on return) the answer to a request; the first answer stays."""
        with self._db.conn:
            self._db.execute(
                f"insert or ignore into {TABLE} (round_id, request, digest, replies) values (?, ?, ?, ?)",
                [round_id, request, request_digest(payload), _pack(replies)],
            )

    def prune(self, keep: int = KEEP_ROUNDS) -> None:
        """Forget the answers of all but the newest ``keep`` rounds."""
        with self._db.conn:
            self._db.execute(
                f"delete from {TABLE} where round_id not in"
                f" (select distinct round_id from {TABLE} order by round_id desc limit ?)",
                [keep],
            )

"""Global model weights the device received, by model version, with their SHA-256.

Kept so the device can say which version it holds at check-in and check a cached copy is intact.
Weights are flat float32 little-endian bytes (never pickled).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import sqlite_utils

from fedge.agent.core.errors import TrainingError

TABLE = "model_cache"


class ModelCache:
    """The model_cache table of one store; keeps the ``keep`` newest versions."""

    def __init__(self, db: sqlite_utils.Database, *, keep: int = 2, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._keep = keep
        self._clock = clock

    def put(self, version: str, weights: np.ndarray) -> str:
        """Store a version's weights (a known version is kept as is); return its SHA-256 hex."""
        blob = np.ascontiguousarray(weights, dtype="<f4").tobytes()
        digest = hashlib.sha256(blob).hexdigest()
        with self._db.conn:
            self._db.execute(
                f"insert or ignore into {TABLE} (version, sha256, weights, stored) values (?, ?, ?, ?)",
                [version, digest, blob, self._clock()],
            )
            self._db.execute(
                f"delete from {TABLE} where version not in (select version from {TABLE} order by stored desc, rowid desc limit ?)",
                [self._keep],
            )
        return digest

    def latest_version(self) -> str:
        """The newest cached version, or "" when none is cached."""
        row = self._db.execute(f"select version from {TABLE} order by stored desc, rowid desc limit 1").fetchone()
        return row[0] if row else ""

    def get(self, version: str) -> np.ndarray | None:
        """The weights of a cached version (TrainingError if the bytes no longer match their hash)."""
        row = self._db.execute(f"select sha256, weights from {TABLE} where version = ?", [version]).fetchone()
        if row is None:
            return None
        if hashlib.sha256(row[1]).hexdigest() != row[0]:
            raise TrainingError(f"cached model {version} is corrupt")
        return np.frombuffer(row[1], dtype="<f4").astype(np.float32)

"""The agent's SQLite store (sqlite-utils): one file per device, evolved by ordered, recorded migrations.

To change the schema, append ``("NNN_what", function)`` to :data:`MIGRATIONS`; never edit,
rename or reorder an applied one. :class:`Store` applies pending migrations when it opens.
"""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from fedge.agent import identity, model_cache, outbox, releases, replies, round_state
from fedge.agent.core import migrations
from fedge.agent.core.privacy import ledger as privacy_ledger


def _m001_examples(db: sqlite_utils.Database) -> None:
    """Local training data: float32 little-endian feature BLOBs with their shape, label and split."""
    db["examples"].create(
        {"id": int, "split": str, "label": int, "shape": str, "features": bytes, "source": str},
        pk="id",
        not_null={"split", "label", "shape", "features"},
    )
    db.execute("create index examples_split on examples (split)")


MIGRATIONS: list[migrations.Migration] = [
    ("001_examples", _m001_examples),
    ("002_privacy_ledger", privacy_ledger.ensure_schema),
    ("003_round_state", round_state.ensure_schema),
    ("004_outbox", outbox.ensure_schema),
    ("005_model_cache", model_cache.ensure_schema),
    ("006_identity", identity.ensure_schema),
    ("007_releases", releases.ensure_schema),
    ("008_identity_authority", identity.ensure_authority_schema),
    ("009_round_replies", replies.ensure_schema),
]


class Store:
    """One device database file; open once per process (``with Store(path) as s: ...``)."""

    def __init__(self, path: str | Path, extra_migrations: list[migrations.Migration] | None = None) -> None:
        self.path = str(path)
        self.db = migrations.open_database(self.path)
        migrations.apply(self.db, MIGRATIONS + list(extra_migrations or []))

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

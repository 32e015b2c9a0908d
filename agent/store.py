"""The agent's SQLite store (sqlite-utils): one file per device, evolved by ordered, recorded migrations.

To change the schema, append ``("NNN_what", function)`` to :data:`MIGRATIONS`; never edit,
rename or reorder an applied one. :class:`Store` applies pending migrations when it opens.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from fedge.agent import identity, model_cache, outbox, releases, replies, round_state
from fedge.agent.core import migrations
from fedge.agent.core.errors import ConfigError
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


class StoreError(ConfigError):
    """The store cannot be opened, is corrupt, or belongs to another program: bad local state that
    a restart will not fix, so it exits 78 like any startup failure (systemd does not restart it)."""

    exit_code = 78


class Store:
    """One device database file; open once per process (``with Store(path) as s: ...``)."""

    def __init__(self, path: str | Path, extra_migrations: list[migrations.Migration] | None = None) -> None:
        self.path = str(path)
        known = MIGRATIONS + list(extra_migrations or [])
        try:
            self.db = migrations.open_database(self.path)
            tables = set(self.db.table_names())
            foreign = sorted(set(migrations.applied(self.db)) - {name for name, _ in known})
            if foreign or (tables and "_migrations" not in tables):
                raise StoreError(
                    f"{self.path}: not a fedge agent store (unknown migrations or tables: "
                    f"{', '.join(foreign or sorted(tables))[:120]})"
                )
            migrations.apply(self.db, known)
        except sqlite3.DatabaseError as e:
            what = (
                "cannot open it (does its directory exist, and is it writable?)"
                if "unable to open" in str(e)
                else str(e)
            )
            raise StoreError(f"{self.path}: not a usable fedge agent store: {what}") from None

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

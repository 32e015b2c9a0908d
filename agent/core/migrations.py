"""Ordered, recorded schema migrations for fedge's SQLite stores (agent and coordinator).

A store declares its migrations as an ordered list of ``(name, function)``; :func:`apply`
runs the ones not yet recorded in the ``_migrations`` table, each in its own transaction, and
records it. Names are never reused or reordered: to change a schema, append a migration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import sqlite_utils

from fedge.agent.core.errors import ConfigError

log = logging.getLogger(__name__)

Migration = tuple[str, Callable[[sqlite_utils.Database], None]]


def open_database(path: str) -> sqlite_utils.Database:
    """Open a SQLite file for a long-running process: WAL journal, foreign keys, busy timeout."""
    db = sqlite_utils.Database(path)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")
    if path != ":memory:":
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
    return db


def applied(db: sqlite_utils.Database) -> list[str]:
    """Names of the migrations already applied, in order."""
    if "_migrations" not in db.table_names():
        return []
    return [r["name"] for r in db.query("select name from _migrations order by id")]


def apply(db: sqlite_utils.Database, migrations: Sequence[Migration]) -> list[str]:
    """Apply pending migrations in order; return the names applied now."""
    names = [n for n, _ in migrations]
    if len(set(names)) != len(names):
        raise ConfigError("duplicate migration names")
    db.execute(
        "create table if not exists _migrations (id integer primary key, name text unique not null, applied_at real)"
    )
    done = applied(db)
    if done != names[: len(done)]:
        raise ConfigError(
            f"database {db.conn} was migrated by a different version of fedge: applied {done}, known {names}"
        )
    now_applied = []
    for name, fn in migrations[len(done) :]:
        with db.conn:
            fn(db)
            db.execute("insert into _migrations (name, applied_at) values (?, ?)", [name, time.time()])
        log.info("applied migration %s", name)
        now_applied.append(name)
    return now_applied

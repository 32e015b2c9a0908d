"""The agent's SQLite store (sqlite-utils): one file per device, evolved by ordered, recorded migrations.

This module owns the store's schema: every table is created here, by the migrations in
:data:`MIGRATIONS`, and it imports no feature module. The features (identity, outbox, round
state, model cache, releases, replies, the privacy ledger, local data) keep their own queries on
the tables made here. To change the schema, append ``("NNN_what", function)`` to
:data:`MIGRATIONS`; never edit, rename or reorder an applied one: devices record the names
(``_migrations``), and :class:`Store` refuses a store that names one it does not know.
:class:`Store` applies pending migrations when it opens.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import TypeGuard

import sqlite_utils

from fedge.agent.core import migrations
from fedge.agent.core.errors import ConfigError

log = logging.getLogger(__name__)


def _m001_examples(db: sqlite_utils.Database) -> None:
    """Local training data: float32 little-endian feature BLOBs with their shape, label and split."""
    db["examples"].create(
        {"id": int, "split": str, "label": int, "shape": str, "features": bytes, "source": str},
        pk="id",
        not_null={"split", "label", "shape", "features"},
    )
    db.execute("create index examples_split on examples (split)")


def _m002_privacy_ledger(db: sqlite_utils.Database) -> None:
    """The device's privacy ledger: one row per contribution it sent (kept if it already exists)."""
    if "privacy_ledger" not in db.table_names():
        db.table("privacy_ledger").create(
            {
                "round_id": int,
                "mode": str,
                "noise_multiplier": float,
                "clip_norm": float,
                "sampling_rate": float,
                "delta": float,
                "rdp_offset": float,
                "recorded_at": float,
            },
            pk="round_id",
            not_null={"mode", "noise_multiplier", "clip_norm", "sampling_rate", "delta", "rdp_offset"},
        )


def _m003_round_state(db: sqlite_utils.Database) -> None:
    """One row per round the device heard of: its last stage and status."""
    db.execute(
        "create table if not exists round_state (round_id integer primary key, stage text not null,"
        " status text not null, updated real not null)"
    )


def _m004_outbox(db: sqlite_utils.Database) -> None:
    """Messages kept until the broker acknowledged them, unique by (round_id, stage)."""
    db.execute(
        "create table if not exists outbox ("
        " id integer primary key autoincrement, round_id integer not null, stage text not null,"
        " topic text not null, payload blob not null, created real not null,"
        " attempts integer not null default 0, unique (round_id, stage))"
    )


def _m005_model_cache(db: sqlite_utils.Database) -> None:
    """Global model weights received, one row per model version."""
    db.execute(
        "create table if not exists model_cache (version text primary key, sha256 text not null,"
        " weights blob not null, stored real not null)"
    )


def _m006_identity(db: sqlite_utils.Database) -> None:
    """At most one row (id = 1) with the device id and the 32-byte private seed."""
    db.execute(
        "create table if not exists identity (id integer primary key check (id = 1), device_id text not null,"
        " private_key blob not null, created real not null)"
    )


def _m007_releases(db: sqlite_utils.Database) -> None:
    """Trusted release keys, installed releases (current and previous), the pin, rollouts taken."""
    db.execute("create table release_keys (key_id text primary key, public blob not null, added real not null)")
    db.execute(
        "create table release_state (id integer primary key check (id = 1), rotation_seq integer not null,"
        " pinned text not null)"
    )
    db.execute("insert into release_state (id, rotation_seq, pinned) values (1, 0, '')")
    db.execute(
        "create table releases (version text primary key, slot text not null unique, release blob not null,"
        " installed real not null)"
    )
    db.execute(
        "create table rollouts_taken (rollout_id text primary key, version text not null, result text not null,"
        " at real not null)"
    )


def _m008_identity_authority(db: sqlite_utils.Database) -> None:
    """The enrollment authority's public key the device trusts for SecAgg+ peers (optional)."""
    db.execute("alter table identity add column authority_public blob")


def _m009_round_replies(db: sqlite_utils.Database) -> None:
    """What the device answered, one row per (round, request type)."""
    db.execute(
        "create table if not exists round_replies (round_id integer not null, request text not null,"
        " digest blob not null, replies blob not null, primary key (round_id, request))"
    )


#: Every migration of the agent's store, in the order applied; the names are on devices for good.
MIGRATIONS: list[migrations.Migration] = [
    ("001_examples", _m001_examples),
    ("002_privacy_ledger", _m002_privacy_ledger),
    ("003_round_state", _m003_round_state),
    ("004_outbox", _m004_outbox),
    ("005_model_cache", _m005_model_cache),
    ("006_identity", _m006_identity),
    ("007_releases", _m007_releases),
    ("008_identity_authority", _m008_identity_authority),
    ("009_round_replies", _m009_round_replies),
]


def is_corruption(e: BaseException | None) -> TypeGuard[sqlite3.DatabaseError]:
    """Whether ``e`` says the file is damaged: SQLite's SQLITE_CORRUPT or SQLITE_NOTADB (a plain
    ``DatabaseError``), or a stored text that is not UTF-8 (bytes flipped inside a row, which
    ``quick_check`` cannot see); not a lock, a full disk or a constraint (the other subclasses)."""
    if type(e) is sqlite3.DatabaseError:
        return True
    return isinstance(e, sqlite3.OperationalError) and str(e).startswith("Could not decode to UTF-8")


#: Tables :meth:`Store._check_integrity` leaves out: local training data, megabytes to hundreds of
#: them, read in full by the commands that use it (a corrupt page there is a StoreError then).
UNCHECKED = frozenset({"examples"})


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
            if tables:
                self._check_integrity()
            migrations.apply(self.db, known)
        except sqlite3.DatabaseError as e:
            what = (
                "cannot open it (does its directory exist, and is it writable?)"
                if "unable to open" in str(e)
                else str(e)
            )
            raise StoreError(f"{self.path}: not a usable fedge agent store: {what}") from None

    def _check_integrity(self) -> None:
        """``PRAGMA quick_check`` of every table but the bulk :data:`UNCHECKED` ones: a corrupt page
        of the device's state fails here, at open, naming the file, instead of in whichever query
        first reads it (or not at all, when no query happens to). Well under a millisecond on any
        store, where checking the examples too costs seconds on a large one (docs/agent.md)."""
        started = time.monotonic()
        problems: list[str] = []
        for table in sorted(set(self.db.table_names()) - UNCHECKED):
            rows = self.db.execute(f"PRAGMA quick_check({_quoted(table)})").fetchall()
            problems += [str(row[0]) for row in rows if row[0] != "ok"]
        log.debug("%s: quick_check in %.4f s", self.path, time.monotonic() - started)
        if problems:
            lines = [" ".join(line.split()) for p in problems for line in p.splitlines() if not line.startswith("***")]
            raise StoreError(f"{self.path}: corrupt fedge agent store: quick_check: {'; '.join(lines)[:200]}")

    def error(self, e: BaseException) -> StoreError:
        """The one-line store error (exit 78, naming the file) for ``e`` raised while reading it."""
        return StoreError(f"{self.path}: corrupt fedge agent store: {e}")

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close()
        if is_corruption(exc):  # met by a command reading inside ``with``: name the file, exit 78
            raise self.error(exc) from exc

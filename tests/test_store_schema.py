"""Known-answer schemas of both stores: a fresh store's ``sqlite_master`` and its migration names.

Devices and coordinators in the field record applied migration names in ``_migrations`` and refuse
names they do not know, so names and order never change, and moving schema code between modules
must leave every table's SQL byte for byte as it was. A new migration appends its name below and
its objects to the fixture (``python -m tests.test_store_schema`` rewrites the fixtures; review
the diff: only additions are legal).
"""

from __future__ import annotations

import sys
from pathlib import Path

import sqlite_utils

from fedge.agent.core import migrations
from fedge.agent.store import Store as AgentStore
from fedge.coordinator.store import Store as CoordinatorStore

HERE = Path(__file__).resolve().parent / "schemas"
AGENT_SCHEMA = HERE / "agent_store.sql"
COORDINATOR_SCHEMA = HERE / "coordinator_store.sql"

AGENT_MIGRATIONS = [
    "001_examples",
    "002_privacy_ledger",
    "003_round_state",
    "004_outbox",
    "005_model_cache",
    "006_identity",
    "007_releases",
    "008_identity_authority",
    "009_round_replies",
]
COORDINATOR_MIGRATIONS = [
    "001_core",
    "002_service",
    "003_enrollment_authority",
    "004_releases",
    "005_rollouts",
    "006_round_clip_norm",
    "007_quarantine",
    "008_round_audit",
    "009_model_files",
    "010_server_opt_state",
    "011_buffered_tasks",
    "012_privacy_budget",
]


def schema_text(db: sqlite_utils.Database) -> str:
    """Every schema object of ``db`` (tables, indexes, autoindexes, triggers) with its exact SQL."""
    rows = db.execute("select type, name, tbl_name, sql from sqlite_master order by type, name").fetchall()
    return "".join(f"-- {kind} {name} on {table}\n{sql or '(automatic)'};\n\n" for kind, name, table, sql in rows)


def _fresh_agent(path: Path) -> str:
    with AgentStore(path) as s:
        assert migrations.applied(s.db) == AGENT_MIGRATIONS
        return schema_text(s.db)


def _fresh_coordinator(path: Path) -> str:
    s = CoordinatorStore(str(path))
    try:
        assert migrations.applied(s.db) == COORDINATOR_MIGRATIONS
        return schema_text(s.db)
    finally:
        s.close()


def test_a_fresh_agent_store_has_the_known_schema(tmp_path):
    assert _fresh_agent(tmp_path / "agent.db") == AGENT_SCHEMA.read_text()


def test_a_fresh_coordinator_store_has_the_known_schema(tmp_path):
    assert _fresh_coordinator(tmp_path / "coord.db") == COORDINATOR_SCHEMA.read_text()


def test_reopening_a_store_changes_nothing(tmp_path):
    """A second open applies nothing and leaves the schema as the first open made it."""
    path = tmp_path / "agent.db"
    first = _fresh_agent(path)
    assert _fresh_agent(path) == first


def test_schema_text_sees_a_changed_column(tmp_path):
    """The comparison is on the SQL itself: one changed column type is a different schema."""
    a, b = sqlite_utils.Database(tmp_path / "a.db"), sqlite_utils.Database(tmp_path / "b.db")
    a.execute("create table t (x integer)")
    b.execute("create table t (x real)")
    assert schema_text(a) != schema_text(b)


if __name__ == "__main__":  # rewrite the fixtures from the current code
    import tempfile

    HERE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        AGENT_SCHEMA.write_text(_fresh_agent(Path(tmp) / "agent.db"))
        COORDINATOR_SCHEMA.write_text(_fresh_coordinator(Path(tmp) / "coord.db"))
    sys.stdout.write(f"wrote {AGENT_SCHEMA} and {COORDINATOR_SCHEMA}\n")

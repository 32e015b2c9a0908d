"""The coordinator's SQLite store (sqlite-utils): devices, rounds, uploads, models.

This module owns the store's schema: every table is made by :data:`MIGRATIONS` (the fleet's
through :mod:`fedge.coordinator.fleet_schema`), and it imports no feature code; the features
keep their own queries. Schema changes are migrations appended to :data:`MIGRATIONS`. Uploads are keyed by
(round, device, stage), so a redelivered message (QoS 1, agent restart) is recognised and never
counted twice; the coordinator acknowledges a message only after :meth:`Store.record_upload`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlite_utils

from fedge.agent.core import migrations
from fedge.agent.core.errors import ProtocolError
from fedge.coordinator import fleet_schema

log = logging.getLogger(__name__)


def _m001_core(db: sqlite_utils.Database) -> None:
    db["devices"].create(
        {
            "device_id": str,
            "identity_public": bytes,
            "device_class": str,
            "tags": str,  # JSON list
            "enrolled_at": float,
            "revoked": int,
            "last_seen": float,
            "epsilon_spent": float,
        },
        pk="device_id",
        defaults={"revoked": 0, "epsilon_spent": 0.0, "tags": "[]"},
    )
    db["models"].create(
        {
            "version": str,
            "parent": str,
            "architecture": str,
            "sha256": str,
            "weights": bytes,  # raw little-endian float32
            "num_params": int,
            "metrics": str,  # JSON
            "produced_by_round": int,
            "created_at": float,
        },
        pk="version",
    )
    db["rounds"].create(
        {
            "round_id": int,
            "status": str,  # open | completed | abandoned
            "stage": str,
            "reason": str,
            "started_at": float,
            "ended_at": float,
            "goal": int,
            "selected": int,
            "participants": int,
            "dropped": str,  # JSON {stage: count}
            "model_in": str,
            "model_out": str,
            "accuracy": float,
            "loss": float,
            "epsilon": float,
            "delta": float,
            "plan": str,  # JSON
            "bytes_up": int,
            "bytes_down": int,
        },
        pk="round_id",
    )
    db["round_members"].create(
        {"round_id": int, "device_id": str, "selected_at": float, "last_stage": str, "dropped_at": str},
        pk=("round_id", "device_id"),
        foreign_keys=[("round_id", "rounds", "round_id")],
    )
    db["uploads"].create(
        {
            "round_id": int,
            "device_id": str,
            "stage": str,
            "received_at": float,
            "payload": bytes,
        },
        pk=("round_id", "device_id", "stage"),
    )


def _m002_service(db: sqlite_utils.Database) -> None:
    """Rejected input (garbage, unknown devices, illegal messages) and each upload's verdict."""
    db["rejections"].create(
        {
            "id": int,
            "received_at": float,
            "topic": str,
            "device_id": str,
            "round_id": int,
            "kind": str,
            "reason": str,
            "size": int,
        },
        pk="id",
    )
    db["uploads"].add_column("status", str, not_null_default="accepted")
    db["uploads"].add_column("reason", str)


def _m003_enrollment_authority(db: sqlite_utils.Database) -> None:
    """The enrollment authority's signing key (one row) and each device's certificate from it."""
    db.execute(
        "create table enrollment_authority (id integer primary key check (id = 1), private_key blob not null,"
        " created real not null)"
    )
    db["devices"].add_column("certificate", bytes)


def _m006_round_clip_norm(db: sqlite_utils.Database) -> None:
    """Adaptive clipping: each round's C, and the C its noisy clip-bit sum set for the next round."""
    db["rounds"].add_column("clip_norm", float)
    db["rounds"].add_column("next_clip_norm", float)


def _m007_quarantine(db: sqlite_utils.Database) -> None:
    """Quarantine: a device caught as a clone (two sessions, two different messages for one round
    and stage) or sending forged shares is never selected again until the operator lifts it."""
    db["devices"].add_column("quarantined_at", float)
    db["devices"].add_column("quarantine_reason", str)


def _m008_round_audit(db: sqlite_utils.Database) -> None:
    """The live privacy audit (``serve --audit-canaries``): its estimate and lower bound after each round."""
    db["rounds"].add_column("epsilon_empirical", float)
    db["rounds"].add_column("epsilon_lower_bound", float)


def _m009_model_files(db: sqlite_utils.Database) -> None:
    """Built models' architecture files (``.tflite`` and ``.json``), one per architecture name, that
    releases of that architecture carry to devices; the releases name their SHA-256s."""
    db["model_files"].create(
        {"architecture": str, "model": bytes, "meta": bytes, "model_sha256": str, "meta_sha256": str, "created": float},
        pk="architecture",
    )
    db["releases"].add_column("model_sha256", str)
    db["releases"].add_column("model_meta_sha256", str)


def _m010_server_opt_state(db: sqlite_utils.Database) -> None:
    """The server optimizer's state (``serve --server-opt``), JSON, so a restart continues it."""
    db["server_opt_state"].create({"id": int, "rule": str, "state": str, "round_id": int, "updated": float}, pk="id")


def _m011_buffered_tasks(db: sqlite_utils.Database) -> None:
    """Buffered mode (``serve --mode buffered``): each device's training task has its own round id
    (shared with the rounds table's ids); its status (training, admitted, refused, declined, expired,
    aggregated, dropped, abandoned), the reason, and the group round that aggregated it."""
    db["buffered_tasks"].create(
        {
            "round_id": int,
            "device_id": str,
            "base_version": int,
            "model_in": str,
            "status": str,
            "reason": str,
            "staleness": int,
            "weight": float,
            "group_round": int,
            "started_at": float,
            "ended_at": float,
        },
        pk="round_id",
    )


def _m012_privacy_budget(db: sqlite_utils.Database) -> None:
    """The campaign's privacy budget: its settings, epsilon after each accounted round, and the
    devices that declined for lack of budget. Kept when present: before this migration the budget
    made them on first use."""
    names = set(db.table_names())
    if "privacy_campaigns" not in names:
        db["privacy_campaigns"].create(
            {"campaign_id": str, "budget_epsilon": float, "delta": float, "accountant": str, "stopped": int},
            pk="campaign_id",
            defaults={"stopped": 0},
        )
    if "privacy_rounds" not in names:
        db["privacy_rounds"].create(
            {"campaign_id": str, "round_id": int, "event": str, "epsilon": float, "recorded_at": float},
            pk=("campaign_id", "round_id"),
        )
    if "privacy_exhausted_devices" not in names:
        db["privacy_exhausted_devices"].create({"device_id": str, "marked_at": float}, pk="device_id")


#: Every migration of the coordinator's store, in the order applied; never rename or reorder one.
MIGRATIONS: list[migrations.Migration] = [
    ("001_core", _m001_core),
    ("002_service", _m002_service),
    ("003_enrollment_authority", _m003_enrollment_authority),
    ("004_releases", fleet_schema.releases_schema),
    ("005_rollouts", fleet_schema.rollouts_schema),
    ("006_round_clip_norm", _m006_round_clip_norm),
    ("007_quarantine", _m007_quarantine),
    ("008_round_audit", _m008_round_audit),
    ("009_model_files", _m009_model_files),
    ("010_server_opt_state", _m010_server_opt_state),
    ("011_buffered_tasks", _m011_buffered_tasks),
    ("012_privacy_budget", _m012_privacy_budget),
]


@dataclass(frozen=True)
class ModelRecord:
    version: str
    parent: str | None
    architecture: str
    sha256: str
    weights: np.ndarray
    metrics: dict[str, Any]
    produced_by_round: int | None


def weights_digest(weights: np.ndarray) -> str:
    """SHA-256 of the weights as raw little-endian float32."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f4").tobytes()).hexdigest()


class Store:
    """One coordinator database file. Open it once per process."""

    def __init__(self, path: str, extra_migrations: list[migrations.Migration] | None = None) -> None:
        self.path = path
        self.db = migrations.open_database(path)
        migrations.apply(self.db, MIGRATIONS + list(extra_migrations or []))

    def close(self) -> None:
        self.db.conn.close()

    # ---------------------------------------------------------------- devices

    def device(self, device_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("select * from devices where device_id = ?", [device_id]))
        return rows[0] if rows else None

    def require_device(self, device_id: str) -> dict[str, Any]:
        """The enrolled, unrevoked device, or ProtocolError (unknown devices are rejected)."""
        row = self.device(device_id)
        if row is None or row["revoked"]:
            raise ProtocolError(f"unknown or revoked device {device_id!r}")
        return row

    def quarantine(self, device_id: str, reason: str, now: float) -> bool:
        """Mark a device quarantined (the first reason is kept); False if it already was."""
        with self.db.conn:
            cur = self.db.execute(
                "update devices set quarantined_at = ?, quarantine_reason = ? where device_id = ? and quarantined_at is null",
                [now, reason[:500], device_id],
            )
        return cur.rowcount > 0

    def lift_quarantine(self, device_id: str) -> bool:
        """Lift a quarantine; False if the device was not quarantined."""
        with self.db.conn:
            cur = self.db.execute(
                "update devices set quarantined_at = null, quarantine_reason = null"
                " where device_id = ? and quarantined_at is not null",
                [device_id],
            )
        return cur.rowcount > 0

    def quarantined(self, device_id: str) -> str | None:
        """The quarantine reason of a device, or None when it is not quarantined."""
        row = self.db.execute(
            "select quarantine_reason, quarantined_at from devices where device_id = ?", [device_id]
        ).fetchone()
        return (row[0] or "quarantined") if row is not None and row[1] is not None else None

    def touch(self, device_id: str, now: float) -> None:
        self.db.execute("update devices set last_seen = ? where device_id = ?", [now, device_id])

    # ---------------------------------------------------------------- models

    def put_model(
        self,
        version: str,
        weights: np.ndarray,
        *,
        architecture: str,
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        produced_by_round: int | None = None,
        now: float | None = None,
    ) -> ModelRecord:
        w = np.ascontiguousarray(weights, dtype="<f4")
        rec = {
            "version": version,
            "parent": parent,
            "architecture": architecture,
            "sha256": weights_digest(w),
            "weights": w.tobytes(),
            "num_params": int(w.size),
            "metrics": json.dumps(metrics or {}),
            "produced_by_round": produced_by_round,
            "created_at": time.time() if now is None else now,
        }
        self.db["models"].insert(rec, replace=False)
        return self.model(version)

    def model(self, version: str) -> ModelRecord:
        rows = list(self.db.query("select * from models where version = ?", [version]))
        if not rows:
            raise ProtocolError(f"unknown model version {version!r}")
        r = rows[0]
        return ModelRecord(
            version=r["version"],
            parent=r["parent"],
            architecture=r["architecture"],
            sha256=r["sha256"],
            weights=np.frombuffer(r["weights"], dtype="<f4").copy(),
            metrics=json.loads(r["metrics"] or "{}"),
            produced_by_round=r["produced_by_round"],
        )

    def latest_model(self, architecture: str | None = None) -> ModelRecord | None:
        sql = "select version from models"
        args: list[Any] = []
        if architecture:
            sql += " where architecture = ?"
            args.append(architecture)
        sql += " order by created_at desc, rowid desc limit 1"
        rows = list(self.db.query(sql, args))
        return self.model(rows[0]["version"]) if rows else None

    # ---------------------------------------------------------------- rounds

    def next_round_id(self) -> int:
        row = next(
            self.db.query(
                "select max(coalesce((select max(round_id) from rounds), 0),"
                " coalesce((select max(round_id) from buffered_tasks), 0)) + 1 as n"
            )
        )
        return int(row["n"])

    def open_round(self, round_id: int, *, goal: int, model_in: str, plan: dict[str, Any], now: float) -> None:
        self.db["rounds"].insert(
            {
                "round_id": round_id,
                "status": "open",
                "stage": "selection",
                "started_at": now,
                "goal": goal,
                "model_in": model_in,
                "plan": json.dumps(plan),
                "dropped": "{}",
                "bytes_up": 0,
                "bytes_down": 0,
            }
        )

    def add_members(self, round_id: int, device_ids: list[str], now: float) -> None:
        self.db["round_members"].insert_all(
            ({"round_id": round_id, "device_id": d, "selected_at": now, "last_stage": "selected"} for d in device_ids),
            replace=True,
        )
        self.db.execute("update rounds set selected = ? where round_id = ?", [len(device_ids), round_id])

    def members(self, round_id: int) -> list[str]:
        return [
            r["device_id"] for r in self.db.query("select device_id from round_members where round_id = ?", [round_id])
        ]

    def set_stage(self, round_id: int, stage: str) -> None:
        self.db.execute("update rounds set stage = ? where round_id = ?", [stage, round_id])

    def update_round(self, round_id: int, **fields: Any) -> None:
        fields = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
        self.db["rounds"].update(round_id, fields)

    def finish_round(self, round_id: int, status: str, reason: str, now: float, **fields: Any) -> None:
        self.update_round(round_id, status=status, reason=reason, ended_at=now, **fields)
        log.info("round %s: %s", status, reason, extra={"round": round_id})

    def round(self, round_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("select * from rounds where round_id = ?", [round_id]))
        return rows[0] if rows else None

    def open_rounds(self) -> list[dict[str, Any]]:
        return list(self.db.query("select * from rounds where status = 'open' order by round_id"))

    def rounds(self) -> Iterator[dict[str, Any]]:
        return self.db.query("select * from rounds order by round_id")

    def latest_next_clip_norm(self) -> float | None:
        """The C the last completed adaptive-clipping round chose for the next one (None: none yet)."""
        rows = list(
            self.db.query(
                "select next_clip_norm from rounds where next_clip_norm is not null order by round_id desc limit 1"
            )
        )
        return float(rows[0]["next_clip_norm"]) if rows else None

    # ---------------------------------------------------------------- uploads (exactly once)

    def record_upload(self, round_id: int, device_id: str, stage: str, payload: bytes, now: float) -> bool:
        """Store an upload; False if (round, device, stage) was already stored (a redelivery)."""
        try:
            with self.db.conn:
                self.db.execute(
                    "insert into uploads (round_id, device_id, stage, received_at, payload) values (?, ?, ?, ?, ?)",
                    [round_id, device_id, stage, now, payload],
                )
                self.db.execute(
                    "update round_members set last_stage = ? where round_id = ? and device_id = ?",
                    [stage, round_id, device_id],
                )
                self.db.execute(
                    "update rounds set bytes_up = coalesce(bytes_up, 0) + ? where round_id = ?",
                    [len(payload), round_id],
                )
        except sqlite3.IntegrityError:
            log.info("duplicate %s upload ignored", stage, extra={"round": round_id, "device": device_id})
            return False
        return True

    def stored_payload(self, round_id: int, device_id: str, stage: str) -> bytes | None:
        """The payload stored for (round, device, stage), or None."""
        row = self.db.execute(
            "select payload from uploads where round_id = ? and device_id = ? and stage = ?",
            [round_id, device_id, stage],
        ).fetchone()
        return None if row is None else bytes(row[0])

    def uploads(self, round_id: int, stage: str | None = None) -> Iterator[dict[str, Any]]:
        if stage is None:
            return self.db.query("select * from uploads where round_id = ? order by received_at", [round_id])
        return self.db.query(
            "select * from uploads where round_id = ? and stage = ? order by received_at", [round_id, stage]
        )

    def count_uploads(self, round_id: int, stage: str) -> int:
        row = next(
            self.db.query("select count(*) as n from uploads where round_id = ? and stage = ?", [round_id, stage])
        )
        return int(row["n"])

    # ---------------------------------------------------------------- server optimizer

    def server_opt_state(self, rule: str) -> dict[str, Any] | None:
        """The saved state of the server optimizer ``rule`` (None: none saved, or another rule ran)."""
        row = self.db.execute("select rule, state from server_opt_state where id = 1").fetchone()
        if row is None or row[0] != rule:
            return None
        state: dict[str, Any] = json.loads(row[1])
        return state

    def save_server_opt_state(self, rule: str, state: dict[str, Any], round_id: int, now: float) -> None:
        """Keep the optimizer's state after ``round_id`` (one row: the campaign's current rule)."""
        self.db["server_opt_state"].upsert(
            {"id": 1, "rule": rule, "state": json.dumps(state), "round_id": round_id, "updated": now}, pk="id"
        )

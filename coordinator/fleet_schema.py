"""Coordinator store migrations for fleet operations: releases and their keys, rollouts, pins.

Kept apart from the modules that use the tables so :mod:`fedge.coordinator.store` can list them
without importing release or rollout code.
"""

from __future__ import annotations

import sqlite_utils


def releases_schema(db: sqlite_utils.Database) -> None:
    """Release keys (private part stays here), key rotations, and one row per signed release."""
    db["release_keys"].create(
        {"key_id": str, "public": bytes, "private": bytes, "created": float, "retired": float}, pk="key_id"
    )
    db["key_rotations"].create({"sequence": int, "new_key_id": str, "message": bytes, "created": float}, pk="sequence")
    db["releases"].create(
        {
            "version": str,
            "parent": str,
            "architecture": str,
            "sha256": str,
            "num_params": int,
            "metrics": str,
            "produced_by": str,
            "source": str,
            "key_id": str,
            "created": float,
            "signature": bytes,
        },
        pk="version",
    )


def rollouts_schema(db: sqlite_utils.Database) -> None:
    """Rollouts (spec and progress), each targeted device's state, and version pins."""
    db["rollouts"].create(
        {
            "rollout_id": str,
            "version": str,
            "target": str,
            "phases": str,
            "rate_per_minute": float,
            "max_failure_pct": float,
            "min_executed": int,
            "max_metric_drop": float,
            "min_evaluated": int,
            "phase_wait_s": float,
            "report_timeout_s": float,
            "status": str,
            "phase": int,
            "phase_started": float,
            "created": float,
            "paused_at": float,
            "paused_total": float,
            "ended": float,
            "reason": str,
        },
        pk="rollout_id",
    )
    db["rollout_devices"].create(
        {
            "rollout_id": str,
            "device_id": str,
            "phase": int,
            "state": str,
            "sent_at": float,
            "reported_at": float,
            "result": str,
            "metric": float,
            "baseline": float,
            "detail": str,
            "late": int,
        },
        pk=("rollout_id", "device_id"),
        foreign_keys=[("rollout_id", "rollouts", "rollout_id")],
    )
    db["pins"].create({"selector": str, "version": str, "created": float}, pk="selector")
    db["pin_deliveries"].create(
        {"device_id": str, "version": str, "sent_at": float, "result": str, "reported_at": float}, pk="device_id"
    )

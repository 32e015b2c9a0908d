"""Device enrollment: which devices may take part, with their Ed25519 identity key, class and tags.

The service rejects every message from a device that is not enrolled here or was revoked
(:meth:`coordinator.store.Store.require_device`). Fleet operations build on these three calls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.core.crypto.identity import PUBLIC_BYTES
from agent.core.errors import ConfigError
from agent.core.topics import check_device_id
from coordinator.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """One enrolled device as the coordinator knows it."""

    device_id: str
    identity_hex: str
    device_class: str
    tags: tuple[str, ...]
    enrolled_at: float
    revoked: bool
    last_seen: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "identity": self.identity_hex,
            "class": self.device_class,
            "tags": list(self.tags),
            "enrolled_at": self.enrolled_at,
            "revoked": self.revoked,
            "last_seen": self.last_seen,
        }


def _device(row: dict) -> Device:
    return Device(
        device_id=row["device_id"],
        identity_hex=(row["identity_public"] or b"").hex(),
        device_class=row["device_class"] or "",
        tags=tuple(json.loads(row["tags"] or "[]")),
        enrolled_at=row["enrolled_at"],
        revoked=bool(row["revoked"]),
        last_seen=row["last_seen"],
    )


def parse_identity(identity_hex: str) -> bytes:
    """The 32-byte Ed25519 public key from its hex form, or ConfigError."""
    try:
        raw = bytes.fromhex(identity_hex.strip())
    except ValueError:
        raise ConfigError("identity: expected the device's Ed25519 public key as hex") from None
    if len(raw) != PUBLIC_BYTES:
        raise ConfigError(f"identity: expected {PUBLIC_BYTES} bytes ({2 * PUBLIC_BYTES} hex digits), got {len(raw)}")
    return raw


def enroll(
    store: Store,
    device_id: str,
    identity_hex: str,
    device_class: str,
    tags: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> Device:
    """Enroll a device (or re-enroll a revoked one with a new key). Same id, other live key: ConfigError."""
    try:
        check_device_id(device_id)
    except Exception as e:
        raise ConfigError(str(e)) from None
    if not device_class:
        raise ConfigError("device class must not be empty")
    key = parse_identity(identity_hex)
    old = store.device(device_id)
    if old is not None and not old["revoked"] and old["identity_public"] != key:
        raise ConfigError(f"device {device_id!r} is enrolled with another identity key; revoke it first")
    store.db["devices"].upsert(
        {
            "device_id": device_id,
            "identity_public": key,
            "device_class": device_class,
            "tags": json.dumps(sorted(set(tags))),
            "enrolled_at": clock(),
            "revoked": 0,
        },
        pk="device_id",
    )
    log.info("enrolled (%s)", device_class, extra={"device": device_id})
    return get_device(store, device_id)


def revoke(store: Store, device_id: str) -> Device:
    """Revoke a device: from now on its messages are rejected and it is never selected."""
    if store.device(device_id) is None:
        raise ConfigError(f"no enrolled device {device_id!r}")
    store.db.execute("update devices set revoked = 1 where device_id = ?", [device_id])
    log.info("revoked", extra={"device": device_id})
    return get_device(store, device_id)


def get_device(store: Store, device_id: str) -> Device:
    row = store.device(device_id)
    if row is None:
        raise ConfigError(f"no enrolled device {device_id!r}")
    return _device(row)


def list_devices(store: Store, *, include_revoked: bool = True) -> list[Device]:
    """Every enrolled device, by id."""
    sql = "select * from devices" + ("" if include_revoked else " where revoked = 0") + " order by device_id"
    return [_device(r) for r in store.db.query(sql)]


def active_ids(store: Store) -> list[str]:
    """Ids of enrolled, unrevoked devices."""
    return [r["device_id"] for r in store.db.query("select device_id from devices where revoked = 0 order by device_id")]

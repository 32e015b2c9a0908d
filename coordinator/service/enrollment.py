"""Device enrollment: which devices may take part, with their Ed25519 identity key, class and tags.

The service rejects every message from a device that is not enrolled here or was revoked
(:meth:`fedge.coordinator.store.Store.require_device`). Enrolling also issues the device a certificate
from the enrollment authority (:mod:`fedge.agent.core.certs`): SecAgg+ peers check each other's keys
against the authority's public key, which a device receives when it is enrolled. The authority's
key is generated on first use and kept in the coordinator's store (one row); a deployment that
does not trust its coordinator should keep it elsewhere. Fleet operations build on these calls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedge.agent.core.certs import issue_certificate
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.crypto.identity import PUBLIC_BYTES
from fedge.agent.core.errors import ConfigError, ProtocolError
from fedge.agent.core.topics import check_device_id
from fedge.coordinator.store import Store

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
    #: why the device is quarantined (never selected until the operator lifts it), or None
    quarantine_reason: str | None = None

    @property
    def status(self) -> str:
        """revoked, quarantined or active."""
        return "revoked" if self.revoked else "quarantined" if self.quarantine_reason is not None else "active"

    def to_dict(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "identity": self.identity_hex,
            "class": self.device_class,
            "tags": list(self.tags),
            "enrolled_at": self.enrolled_at,
            "revoked": self.revoked,
            "last_seen": self.last_seen,
            "quarantined": self.quarantine_reason,
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
        quarantine_reason=(row.get("quarantine_reason") or "quarantined")
        if row.get("quarantined_at") is not None
        else None,
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
            "certificate": issue_certificate(authority(store, clock), device_id, key),
        },
        pk="device_id",
    )
    log.info("enrolled (%s)", device_class, extra={"device": device_id})
    return get_device(store, device_id)


def authority(store: Store, clock: Callable[[], float] = time.time) -> IdentityKey:
    """The enrollment authority's key: created (from OS randomness) on first use, then loaded."""
    row = store.db.execute("select private_key from enrollment_authority where id = 1").fetchone()
    if row is not None:
        return IdentityKey.from_private_bytes(row[0])
    key = IdentityKey.generate()
    with store.db.conn:
        store.db.execute(
            "insert into enrollment_authority (id, private_key, created) values (1, ?, ?)",
            [key.private_bytes(), clock()],
        )
    log.info("enrollment authority created: %s", key.public_bytes().hex())
    return key


def authority_public_hex(store: Store) -> str:
    """What a device must trust to check its peers' certificates (``fedge-agent`` takes it at init)."""
    return authority(store).public_bytes().hex()


def certificate(store: Store, device_id: str) -> bytes:
    """The enrolled device's certificate (ProtocolError via require_device if unknown or revoked)."""
    row = store.require_device(device_id)
    cert = row.get("certificate")
    if not cert:
        raise ProtocolError(f"device {device_id!r} has no enrollment certificate; enroll it again")
    return bytes(cert)


def identities(store: Store, device_ids: Sequence[str]) -> dict[str, bytes]:
    """Identity public keys of enrolled, unrevoked devices (ProtocolError for any other)."""
    return {d: bytes(store.require_device(d)["identity_public"]) for d in device_ids}


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
    """Ids of enrolled, unrevoked devices that are not quarantined: the ones a round may select."""
    return [
        r["device_id"]
        for r in store.db.query(
            "select device_id from devices where revoked = 0 and quarantined_at is null order by device_id"
        )
    ]

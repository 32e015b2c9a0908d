"""The device's id and Ed25519 identity, kept in its store: generated once, enrolled by its public key."""

from __future__ import annotations

import time

import sqlite_utils

from fedge.agent.core.crypto.identity import IdentityKey
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.topics import check_device_id

TABLE = "identity"


def stored_device_id(db: sqlite_utils.Database) -> str | None:
    """The device id this store was initialised with, or None."""
    if TABLE not in db.table_names():
        return None
    row = db.execute(f"select device_id from {TABLE} where id = 1").fetchone()
    return row[0] if row else None


def load_or_create(db: sqlite_utils.Database, device_id: str, *, create: bool = True) -> IdentityKey:
    """The device's identity; generated and stored on first use. A store belongs to one device id."""
    check_device_id(device_id)
    row = db.execute(f"select device_id, private_key from {TABLE} where id = 1").fetchone()
    if row is not None:
        if row[0] != device_id:
            raise ConfigError(f"the store belongs to device {row[0]!r}, not {device_id!r}")
        return IdentityKey.from_private_bytes(row[1])
    if not create:
        raise ConfigError("the store has no identity yet; run `fedge-agent init` first")
    key = IdentityKey.generate()
    with db.conn:
        db.execute(
            f"insert into {TABLE} (id, device_id, private_key, created) values (1, ?, ?, ?)",
            [device_id, key.private_bytes(), time.time()],
        )
    return key


def load(db: sqlite_utils.Database) -> tuple[str, IdentityKey]:
    """The stored device id and identity (ConfigError when the store was never initialised)."""
    device_id = stored_device_id(db)
    if device_id is None:
        raise ConfigError("the store has no identity yet; run `fedge-agent init --profile FILE --device-id ID` first")
    return device_id, load_or_create(db, device_id, create=False)


def stored_authority(db: sqlite_utils.Database) -> bytes | None:
    """The enrollment authority's 32-byte public key, or None when the device was not given one."""
    row = db.execute(f"select authority_public from {TABLE} where id = 1").fetchone()
    return bytes(row[0]) if row and row[0] is not None else None


def set_authority(db: sqlite_utils.Database, public: bytes) -> None:
    """Trust ``public`` as the enrollment authority (after ``load_or_create``)."""
    if len(public) != 32:
        raise ConfigError("authority: expected a 32-byte Ed25519 public key")
    with db.conn:
        db.execute(f"update {TABLE} set authority_public = ? where id = 1", [public])

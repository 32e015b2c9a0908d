"""Model releases on the coordinator: every published global model becomes a signed release.

A release is a row of ``releases`` beside its weights in ``models``: the manifest fields, the
signature and the key that made it. The release key (Ed25519) lives in the coordinator's store,
generated on first use; :func:`rotate_key` makes a new one and a :class:`KeyRotation` signed by
the old and the new key, which devices apply without re-enrolling. Releases signed by a retired
key can be re-signed (:func:`sign_release_version`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fedge.agent.core import wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.release import (
    KeyRotation,
    ReleaseManifest,
    SignedRelease,
    check_version,
    key_id,
    sign_release,
    sign_rotation,
)
from fedge.coordinator.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """A signed release as the coordinator keeps it (the weights stay in the models table)."""

    manifest: ReleaseManifest
    signature: bytes

    @property
    def version(self) -> str:
        return self.manifest.version

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "version": m.version, "parent": m.parent or None, "architecture": m.architecture, "sha256": m.sha256,
            "num_params": m.num_params, "metrics": dict(m.metrics), "produced_by": list(m.produced_by),
            "source": m.source, "key_id": m.key_id, "created": m.created,
        }


# ---------------------------------------------------------------------- keys


def release_key(store: Store, clock: Callable[[], float] = time.time) -> IdentityKey:
    """The active (newest unretired) release key; generated and stored on first use."""
    rows = list(store.db.query("select private from release_keys where retired is null order by created desc, rowid desc limit 1"))
    if rows:
        return IdentityKey.from_private_bytes(rows[0]["private"])
    key = IdentityKey.generate()
    store.db["release_keys"].insert(
        {"key_id": key_id(key.public_bytes()), "public": key.public_bytes(), "private": key.private_bytes(), "created": clock()}
    )
    log.info("generated release key %s", key_id(key.public_bytes()))
    return key


def trusted_keys(store: Store) -> dict[str, bytes]:
    """Public release keys devices should trust now (every unretired key), by key id."""
    return {r["key_id"]: r["public"] for r in store.db.query("select key_id, public from release_keys where retired is null")}


def rotate_key(store: Store, *, retire_old: bool = True, clock: Callable[[], float] = time.time) -> KeyRotation:
    """A new release key, vouched for by the active one; the old is retired unless ``retire_old`` is False."""
    old = release_key(store, clock)
    new = IdentityKey.generate()
    seq = int(next(store.db.query("select coalesce(max(sequence), 0) + 1 as n from key_rotations"))["n"])
    retire = tuple(sorted(trusted_keys(store))) if retire_old else ()
    rotation = sign_rotation(old, new, seq, retire)
    now = clock()
    with store.db.conn:
        store.db["release_keys"].insert(
            {"key_id": key_id(new.public_bytes()), "public": new.public_bytes(), "private": new.private_bytes(), "created": now}
        )
        for kid in retire:
            store.db.execute("update release_keys set retired = ? where key_id = ?", [now, kid])
        store.db["key_rotations"].insert(
            {"sequence": seq, "new_key_id": key_id(new.public_bytes()), "message": wire.encode(rotation), "created": now}
        )
    log.info("release key rotated to %s (sequence %d, retired %s)", key_id(new.public_bytes()), seq, list(retire))
    return rotation


def rotations(store: Store) -> list[KeyRotation]:
    """Every rotation in order: a device that missed some applies them all."""
    return [wire.decode(r["message"], expect=KeyRotation) for r in store.db.query("select message from key_rotations order by sequence")]


# ---------------------------------------------------------------------- releases


def _save(store: Store, manifest: ReleaseManifest, signature: bytes) -> Release:
    m = manifest
    store.db["releases"].upsert(
        {
            "version": m.version, "parent": m.parent, "architecture": m.architecture, "sha256": m.sha256,
            "num_params": m.num_params, "metrics": json.dumps(m.metrics), "produced_by": json.dumps(list(m.produced_by)),
            "source": m.source, "key_id": m.key_id, "created": m.created, "signature": signature,
        },
        pk="version",
    )
    return Release(manifest, signature)


def create_release(store: Store, model_version: str, *, clock: Callable[[], float] = time.time) -> Release:
    """Sign the stored model ``model_version`` (a round's output) as a release; idempotent."""
    existing = store.db["releases"].count_where("version = ?", [model_version])
    if existing:
        return get_release(store, model_version)
    model = store.model(model_version)
    rounds = (model.produced_by_round,) if model.produced_by_round is not None else ()
    key = release_key(store, clock)
    metrics = {k: float(v) for k, v in model.metrics.items() if isinstance(v, (int, float))}
    manifest = ReleaseManifest(
        version=check_version(model.version), parent=model.parent or "", architecture=model.architecture,
        sha256=model.sha256, num_params=int(model.weights.size), metrics=metrics, produced_by=rounds,
        source="rounds" if rounds else "initial", key_id=key_id(key.public_bytes()), created=clock(),
    )
    rel = _save(store, manifest, sign_release(manifest, key))
    log.info("release %s signed with key %s", model_version, manifest.key_id)
    return rel


def import_release(
    store: Store, path: str | Path, *, version: str, architecture: str, parent: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Release:
    """Import flat float32 weights from an ``.npz`` (array ``weights``) or ``.npy`` file as a signed release."""
    path = Path(path)
    try:
        check_version(version)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                weights = np.asarray(f["weights"])
        else:
            weights = np.load(path, allow_pickle=False)
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read weights ({e})") from None
    if weights.ndim != 1 or not np.issubdtype(weights.dtype, np.floating) or not np.all(np.isfinite(weights)):
        raise ConfigError(f"{path}: expected one flat vector of finite floats")
    if parent is not None:
        store.model(parent)  # ProtocolError if unknown
    store.put_model(version, weights.astype(np.float32), architecture=architecture, parent=parent, now=clock())
    rel = create_release(store, version, clock=clock)
    manifest = ReleaseManifest(**{**rel.manifest.__dict__, "source": f"import:{path.name}"[:256]})
    return _save(store, manifest, sign_release(manifest, release_key(store, clock)))


def sign_release_version(store: Store, version: str, *, clock: Callable[[], float] = time.time) -> Release:
    """Re-sign a release with the active key (after a rotation retired the key that signed it)."""
    rel = get_release(store, version)
    key = release_key(store, clock)
    manifest = ReleaseManifest(**{**rel.manifest.__dict__, "key_id": key_id(key.public_bytes())})
    return _save(store, manifest, sign_release(manifest, key))


def _from_row(r: dict[str, Any]) -> Release:
    manifest = ReleaseManifest(
        version=r["version"], parent=r["parent"] or "", architecture=r["architecture"], sha256=r["sha256"],
        num_params=r["num_params"], metrics=json.loads(r["metrics"] or "{}"), produced_by=tuple(json.loads(r["produced_by"] or "[]")),
        source=r["source"] or "", key_id=r["key_id"], created=r["created"],
    )
    return Release(manifest, r["signature"])


def get_release(store: Store, version: str) -> Release:
    rows = list(store.db.query("select * from releases where version = ?", [version]))
    if not rows:
        raise ConfigError(f"no release {version!r}")
    return _from_row(rows[0])


def list_releases(store: Store) -> list[Release]:
    """Every release, oldest first."""
    return [_from_row(r) for r in store.db.query("select * from releases order by created, rowid")]


def signed_release(store: Store, version: str) -> SignedRelease:
    """The release as it travels: manifest, signature and weights."""
    rel = get_release(store, version)
    weights = np.ascontiguousarray(store.model(version).weights, dtype="<f4")
    return SignedRelease(rel.manifest, rel.signature, weights)

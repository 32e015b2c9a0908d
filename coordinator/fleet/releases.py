"""Model releases on the coordinator: every published global model becomes a signed release.

A release is a row of ``releases`` beside its weights in ``models``: the manifest fields, the
signature and the key that made it. The release key (Ed25519) lives in the coordinator's store,
generated on first use; :func:`rotate_key` makes a new one and a :class:`KeyRotation` signed by
the old and the new key, which devices apply without re-enrolling. Releases signed by a retired
key can be re-signed (:func:`sign_release_version`).

A built model (``fedge-coordinator models build``) enters with :func:`import_model`: its
``.tflite`` and ``.json`` are kept in ``model_files`` under the architecture's name, and every
release of that architecture (the imported start and each round's output) names their SHA-256s
in its signed manifest and carries them to devices, so a rollout moves a device to it.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.agent.core import wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.messages.fleet import KeyRotation, ReleaseManifest, SignedRelease, check_version
from fedge.agent.core.release import file_sha256, key_id, sign_release, sign_rotation
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
            "version": m.version,
            "parent": m.parent or None,
            "architecture": m.architecture,
            "sha256": m.sha256,
            "num_params": m.num_params,
            "metrics": dict(m.metrics),
            "produced_by": list(m.produced_by),
            "source": m.source,
            "key_id": m.key_id,
            "created": m.created,
            "model_sha256": m.model_sha256 or None,
            "model_meta_sha256": m.model_meta_sha256 or None,
        }


# ---------------------------------------------------------------------- keys


def release_key(store: Store, clock: Callable[[], float] = time.time) -> IdentityKey:
    """The active (newest unretired) release key; generated and stored on first use."""
    rows = list(
        store.db.query(
            "select private from release_keys where retired is null order by created desc, rowid desc limit 1"
        )
    )
    if rows:
        return IdentityKey.from_private_bytes(rows[0]["private"])
    key = IdentityKey.generate()
    store.db["release_keys"].insert(
        {
            "key_id": key_id(key.public_bytes()),
            "public": key.public_bytes(),
            "private": key.private_bytes(),
            "created": clock(),
        }
    )
    log.info("generated release key %s", key_id(key.public_bytes()))
    return key


def trusted_keys(store: Store) -> dict[str, bytes]:
    """Public release keys devices should trust now (every unretired key), by key id."""
    return {
        r["key_id"]: r["public"]
        for r in store.db.query("select key_id, public from release_keys where retired is null")
    }


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
            {
                "key_id": key_id(new.public_bytes()),
                "public": new.public_bytes(),
                "private": new.private_bytes(),
                "created": now,
            }
        )
        for kid in retire:
            store.db.execute("update release_keys set retired = ? where key_id = ?", [now, kid])
        store.db["key_rotations"].insert(
            {
                "sequence": seq,
                "new_key_id": key_id(new.public_bytes()),
                "message": wire.encode(rotation),
                "created": now,
            }
        )
    log.info("release key rotated to %s (sequence %d, retired %s)", key_id(new.public_bytes()), seq, list(retire))
    return rotation


def rotations(store: Store) -> list[KeyRotation]:
    """Every rotation in order: a device that missed some applies them all."""
    return [
        wire.decode(r["message"], expect=KeyRotation)
        for r in store.db.query("select message from key_rotations order by sequence")
    ]


# ---------------------------------------------------------------------- releases


def _save(store: Store, manifest: ReleaseManifest, signature: bytes) -> Release:
    m = manifest
    store.db["releases"].upsert(
        {
            "version": m.version,
            "parent": m.parent,
            "architecture": m.architecture,
            "sha256": m.sha256,
            "num_params": m.num_params,
            "metrics": json.dumps(m.metrics),
            "produced_by": json.dumps(list(m.produced_by)),
            "source": m.source,
            "key_id": m.key_id,
            "created": m.created,
            "signature": signature,
            "model_sha256": m.model_sha256,
            "model_meta_sha256": m.model_meta_sha256,
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
    files = model_files(store, model.architecture)
    manifest = ReleaseManifest(
        version=check_version(model.version),
        parent=model.parent or "",
        architecture=model.architecture,
        sha256=model.sha256,
        num_params=int(model.weights.size),
        metrics=metrics,
        produced_by=rounds,
        source="rounds" if rounds else "initial",
        key_id=key_id(key.public_bytes()),
        created=clock(),
        model_sha256=file_sha256(files[0]) if files else "",
        model_meta_sha256=file_sha256(files[1]) if files else "",
    )
    rel = _save(store, manifest, sign_release(manifest, key))
    log.info("release %s signed with key %s", model_version, manifest.key_id)
    return rel


def import_release(
    store: Store,
    path: str | Path,
    *,
    version: str,
    architecture: str,
    parent: str | None = None,
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


def model_files(store: Store, architecture: str) -> tuple[bytes, bytes] | None:
    """The built model's ``.tflite`` and ``.json`` bytes for ``architecture``, or None (a zoo model)."""
    rows = list(store.db.query("select model, meta from model_files where architecture = ?", [architecture]))
    return (bytes(rows[0]["model"]), bytes(rows[0]["meta"])) if rows else None


def model_path(store: Store, architecture: str, directory: str | Path | None = None) -> Path | None:
    """A path ``load_spec`` takes for the built model ``architecture`` (written, content-addressed,
    under ``directory`` or the temporary directory), or None when it is not an imported model."""
    files = model_files(store, architecture)
    if files is None:
        return None
    return write_model_files(files[0], files[1], architecture, directory)


def write_model_files(model: bytes, meta: bytes, name: str, directory: str | Path | None = None) -> Path:
    """Write a model's files as ``<directory>/<sha256 prefix>/<name>.tflite`` and ``.json`` (atomically,
    kept if already there); return the ``.tflite`` path."""
    base = Path(directory) if directory is not None else Path(tempfile.gettempdir()) / "fedge-models"
    folder = base / file_sha256(model + meta)[:24]
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, data in ((".json", meta), (".tflite", model)):
        target = folder / f"{name}{suffix}"
        if target.exists() and target.read_bytes() == data:
            continue
        tmp = folder / f".{name}{suffix}.tmp"
        tmp.write_bytes(data)
        tmp.replace(target)
    return folder / f"{name}.tflite"


def import_model(
    store: Store,
    path: str | Path,
    *,
    version: str,
    clock: Callable[[], float] = time.time,
) -> Release:
    """A built model (a directory holding one ``.tflite`` with its ``.json``, or the ``.tflite``
    itself) as a signed release carrying its architecture file, starting from the weights it was
    built with. The architecture is the model's name; a name already imported with other files
    is refused (build it under a new name)."""
    from fedge.agent.core.errors import TrainingError
    from fedge.agent.training.models import load_spec
    from fedge.agent.training.trainer import Trainer

    path = Path(path)
    try:
        check_version(version)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if path.is_dir():
        found = sorted(p for p in path.glob("*.tflite") if p.with_suffix(".json").exists())
        if len(found) != 1:
            raise ConfigError(f"{path}: expected one built model (.tflite with its .json), found {len(found)}")
        path = found[0]
    try:
        spec = load_spec(path)  # checks the metadata against the file and its embedded copy
        initial = Trainer(spec).initial_weights()
    except (TrainingError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{path}: not a trainable built model ({e})") from None
    model, meta = path.read_bytes(), path.with_suffix(".json").read_bytes()
    name = spec.name
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name):
        raise ConfigError(f"{path}: model name {name!r} must be 1-64 of [A-Za-z0-9_.-], not starting with '.' or '-'")
    existing = model_files(store, name)
    if existing is not None and existing != (model, meta):
        raise ConfigError(f"a different model named {name!r} was imported before; build this one under another name")
    if store.db["models"].count_where("version = ?", [version]):
        raise ConfigError(f"model version {version!r} exists already")
    now = clock()
    with store.db.conn:
        if existing is None:
            store.db["model_files"].insert(
                {
                    "architecture": name,
                    "model": model,
                    "meta": meta,
                    "model_sha256": file_sha256(model),
                    "meta_sha256": file_sha256(meta),
                    "created": now,
                }
            )
    store.put_model(version, initial, architecture=name, now=now)
    rel = create_release(store, version, clock=clock)
    manifest = ReleaseManifest(**{**rel.manifest.__dict__, "source": f"import:{path.name}"[:256]})
    rel = _save(store, manifest, sign_release(manifest, release_key(store, clock)))
    log.info("imported built model %s (%d weights) as release %s", name, spec.num_params, version)
    return rel


def sign_release_version(store: Store, version: str, *, clock: Callable[[], float] = time.time) -> Release:
    """Re-sign a release with the active key (after a rotation retired the key that signed it)."""
    rel = get_release(store, version)
    key = release_key(store, clock)
    manifest = ReleaseManifest(**{**rel.manifest.__dict__, "key_id": key_id(key.public_bytes())})
    return _save(store, manifest, sign_release(manifest, key))


def _from_row(r: dict[str, Any]) -> Release:
    manifest = ReleaseManifest(
        version=r["version"],
        parent=r["parent"] or "",
        architecture=r["architecture"],
        sha256=r["sha256"],
        num_params=r["num_params"],
        metrics=json.loads(r["metrics"] or "{}"),
        produced_by=tuple(json.loads(r["produced_by"] or "[]")),
        source=r["source"] or "",
        key_id=r["key_id"],
        created=r["created"],
        model_sha256=r.get("model_sha256") or "",
        model_meta_sha256=r.get("model_meta_sha256") or "",
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
    """The release as it travels: manifest, signature, weights, and a built model's files."""
    rel = get_release(store, version)
    weights = np.ascontiguousarray(store.model(version).weights, dtype="<f4")
    if not rel.manifest.carries_model:
        return SignedRelease(rel.manifest, rel.signature, weights)
    files = model_files(store, rel.manifest.architecture)
    if files is None:
        raise ConfigError(f"release {version!r} names model files the store does not hold")
    return SignedRelease(rel.manifest, rel.signature, weights, files[0], files[1])

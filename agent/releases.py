"""The device's model releases: verify, install, evaluate, roll back, pin, and remember every rollout.

The agent store keeps the current release and the one before it (for rollback), the release keys
the device trusts (the first comes with enrollment, later ones by signed rotation), the version
it is pinned to, and every rollout it took. A release is installed only after
:func:`~fedge.agent.core.release.verify_release` accepted it and it ran on held-out local data; on any
failure the previous release keeps running. The daemon passes each fleet command to
:meth:`ReleaseManager.handle` and publishes the reports it returns on ``device_out``.

A release that carries its architecture (a built model: ``.tflite`` and ``.json``) is checked
against the SHA-256s its signed manifest names, written under the device's models directory
(``<models_dir>/<model sha256 prefix>/<architecture>.tflite``) and kept in the store with the
release; before it is installed, one training step is run in a fresh process to measure the
memory its training takes (:func:`~fedge.agent.training.memory.training_peak_bytes`), and a model over
the profile's cap (``[compute] memory_mb``) fails to install, saying how much it needs.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from fedge.agent.core import wire
from fedge.agent.core.errors import ConfigError, FedgeError, ProtocolError, SecurityError, TrainingError
from fedge.agent.core.messages.fleet import (
    InstallCommand,
    InstallReport,
    InstallResult,
    KeyRotation,
    PinCommand,
    ReleaseManifest,
    RollbackCommand,
    SignedRelease,
)
from fedge.agent.core.release import apply_rotation, file_sha256, key_id, verify_rollback, verify_signed

log = logging.getLogger(__name__)

CURRENT, PREVIOUS = "current", "previous"
#: an architecture name a built model's files may be written under
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class ModelTooLarge(FedgeError):
    """Training the release's model would take more memory than the device's profile allows."""


def model_file_path(models_dir: str | Path, manifest: ReleaseManifest) -> Path:
    """Where a built model's ``.tflite`` lives on the device (its ``.json`` beside it)."""
    if not manifest.carries_model:
        raise ValueError(f"release {manifest.version} carries no model file")
    if not _FILE_NAME.match(manifest.architecture):
        raise ValueError(f"architecture {manifest.architecture!r} is not a file name")
    return Path(models_dir) / manifest.model_sha256[:24] / f"{manifest.architecture}.tflite"


def write_model_files(models_dir: str | Path, manifest: ReleaseManifest, model: bytes, meta: bytes) -> Path:
    """Write a built model's files where :func:`model_file_path` says (atomically; files already there
    with the signed hashes are kept); return the ``.tflite`` path."""
    if file_sha256(model) != manifest.model_sha256 or file_sha256(meta) != manifest.model_meta_sha256:
        raise SecurityError("model files do not match the release")
    path = model_file_path(models_dir, manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((path.with_suffix(".json"), meta), (path, model)):
        if target.exists() and file_sha256(target.read_bytes()) == file_sha256(data):
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return path


@dataclass(frozen=True)
class Installed:
    """One installed release: its manifest, verified weights, and a built model's files (else empty)."""

    manifest: ReleaseManifest
    weights: np.ndarray
    installed: float
    model: bytes = b""
    model_meta: bytes = b""


#: Evaluates a release on the device's held-out data: (accuracy, examples), or None without data.
Evaluator = Callable[[ReleaseManifest, np.ndarray], "tuple[float, int] | None"]


class LocalEvaluator:
    """Runs a release in the zoo Trainer (TFLite) on the store's ``test`` split: accuracy, examples."""

    def __init__(
        self,
        store: Any,
        num_threads: int = 1,
        trainers: dict[str, Any] | None = None,
        models_dir: str | Path | None = None,
    ) -> None:
        self._store = store
        self._threads = num_threads
        self._trainers: dict[str, Any] = {} if trainers is None else trainers  # may be shared in one thread
        self._models_dir = models_dir

    def __call__(self, manifest: ReleaseManifest, weights: np.ndarray) -> tuple[float, int] | None:
        from fedge.agent.local_data import check_fits, load_examples
        from fedge.agent.training.models import load_spec
        from fedge.agent.training.trainer import Trainer

        name: str | Path = manifest.architecture
        if manifest.carries_model:
            if self._models_dir is None:
                raise ValueError("no models directory for a release that carries its model")
            name = model_file_path(self._models_dir, manifest)
        key = str(name)
        trainer = self._trainers.get(key)
        if trainer is None:
            trainer = self._trainers[key] = Trainer(load_spec(name), self._threads)
        # a model this device's data cannot feed would install and then never train: refuse it now
        check_fits(self._store, trainer.spec)
        x, y = load_examples(self._store, "test", trainer.spec)
        if len(y) == 0:
            trainer.set_flat_weights(weights)  # still proves the release loads into the interpreter
            return None
        ev = trainer.evaluate(weights, x, y)
        return ev.accuracy, ev.num_examples


class ReleaseManager:
    """One device's releases in its agent store. Single-threaded: call from the daemon's loop."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        device_id: str,
        *,
        evaluator: Evaluator | None = None,
        clock: Callable[[], float] = time.time,
        models_dir: str | Path | None = None,
        memory_cap_mb: float | None = None,
        batch_size: int = 32,
        num_threads: int = 1,
        memory_probe: Callable[[Path, int, int], int] | None = None,
    ) -> None:
        self._db = db
        self.device_id = device_id
        self._evaluator = evaluator
        self._clock = clock
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self._memory_cap_mb = memory_cap_mb
        self._batch_size = batch_size
        self._threads = num_threads
        self._memory_probe = memory_probe
        #: bytes the last built model's trial training step took (None before any)
        self.last_model_memory: int | None = None
        self._extra = {"device": device_id}
        self._rotations: dict[int, KeyRotation] = {}  # received, not yet applicable (in memory only)

    # ------------------------------------------------------------------ trust

    def trust_key(self, public: bytes) -> str:
        """Trust a release key given at enrollment (out of band); return its key id."""
        kid = key_id(public)
        with self._db.conn:
            self._db.execute(
                "insert or ignore into release_keys (key_id, public, added) values (?, ?, ?)",
                [kid, bytes(public), self._clock()],
            )
        return kid

    def trusted_keys(self) -> dict[str, bytes]:
        return {r[0]: bytes(r[1]) for r in self._db.execute("select key_id, public from release_keys").fetchall()}

    def apply_rotation(self, rotation: KeyRotation) -> None:
        """Trust a new release key vouched for by a trusted one (SecurityError otherwise; trust unchanged)."""
        seq = self._db.execute("select rotation_seq from release_state where id = 1").fetchone()[0]
        keys = apply_rotation(self.trusted_keys(), seq, rotation)
        with self._db.conn:
            self._db.execute("delete from release_keys")
            for kid, pub in keys.items():
                self._db.execute(
                    "insert into release_keys (key_id, public, added) values (?, ?, ?)", [kid, pub, self._clock()]
                )
            self._db.execute("update release_state set rotation_seq = ? where id = 1", [rotation.sequence])
        log.info("release keys rotated (sequence %d): %s", rotation.sequence, sorted(keys), extra=self._extra)

    def _apply_pending_rotations(self) -> None:
        """Apply held rotations in sequence order; one signed by a key trusted only after an earlier
        rotation waits for it (retained rotations may arrive in any order)."""
        progress = True
        while progress and self._rotations:
            progress = False
            seq = self._db.execute("select rotation_seq from release_state where id = 1").fetchone()[0]
            for n in sorted(self._rotations):
                if n <= seq:
                    del self._rotations[n]
                    continue
                try:
                    self.apply_rotation(self._rotations[n])
                except SecurityError:
                    continue
                del self._rotations[n]
                progress = True
                break
        if self._rotations:
            log.warning("key rotations %s not (yet) applicable", sorted(self._rotations), extra=self._extra)

    # ------------------------------------------------------------------ state

    def _slot(self, slot: str) -> Installed | None:
        row = self._db.execute("select release, installed from releases where slot = ?", [slot]).fetchone()
        if row is None:
            return None
        rel = wire.decode(bytes(row[0]), expect=SignedRelease)
        # re-check the stored bytes against the signed hash (not the key: it may have been retired since)
        from fedge.agent.core.release import weights_sha256

        if weights_sha256(rel.weights) != rel.manifest.sha256:
            raise SecurityError("stored release is corrupt")
        if rel.manifest.carries_model and (
            file_sha256(rel.model) != rel.manifest.model_sha256
            or file_sha256(rel.model_meta) != rel.manifest.model_meta_sha256
        ):
            raise SecurityError("stored release is corrupt")
        return Installed(
            rel.manifest, np.asarray(rel.weights, np.float32).copy(), row[1], bytes(rel.model), bytes(rel.model_meta)
        )

    def model_path(self, installed: Installed) -> Path | None:
        """The ``.tflite`` path of an installed built model (rewritten from the store if it went
        missing on disk), or None for a zoo architecture."""
        if not installed.manifest.carries_model:
            return None
        if self.models_dir is None:
            raise ConfigError("no models directory: cannot run a release that carries its model")
        return write_model_files(self.models_dir, installed.manifest, installed.model, installed.model_meta)

    def current(self) -> Installed | None:
        """The release the device runs now."""
        return self._slot(CURRENT)

    def previous(self) -> Installed | None:
        """The release it ran before (the rollback target)."""
        return self._slot(PREVIOUS)

    def running(self) -> str:
        """The current release's version, or ""."""
        row = self._db.execute("select version from releases where slot = ?", [CURRENT]).fetchone()
        return row[0] if row else ""

    def pinned(self) -> str:
        return self._db.execute("select pinned from release_state where id = 1").fetchone()[0]

    def _taken_version(self, rollout_id: str) -> str | None:
        row = self._db.execute("select version from rollouts_taken where rollout_id = ?", [rollout_id]).fetchone()
        return row[0] if row else None

    def taken(self, rollout_id: str) -> str | None:
        """The recorded result of a rollout the device took, or None."""
        row = self._db.execute("select result from rollouts_taken where rollout_id = ?", [rollout_id]).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ commands

    def handle(self, msg: Any) -> list[InstallReport]:
        """Apply one fleet message; return the reports to publish on ``device_out``."""
        if isinstance(msg, KeyRotation):
            self._rotations[msg.sequence] = msg
            self._apply_pending_rotations()
            return []
        if isinstance(msg, SignedRelease):
            return []  # a channel's retained announcement: installs come only with a rollout command
        if getattr(msg, "device_id", None) != self.device_id:
            raise ProtocolError("fleet command for another device")
        try:
            if isinstance(msg, InstallCommand):
                return [self.install(msg.release, msg.rollout_id)]
            if isinstance(msg, RollbackCommand):
                try:
                    verify_rollback(msg, self.trusted_keys())
                except SecurityError:
                    log.warning("rollback refused: not signed by a trusted release key", extra=self._extra)
                    return [
                        self._report(
                            msg.rollout_id, msg.version, InstallResult.REFUSED, detail="rollback signature refused"
                        )
                    ]
                return [self.rollback(msg.rollout_id, msg.version)]
            if isinstance(msg, PinCommand):
                return [self.pin(msg.version, msg.release)]
        except SecurityError:  # a stored release failed its hash check: say so, keep running
            log.warning("a stored release is corrupt", extra=self._extra)
            version = msg.release.manifest.version if isinstance(msg, InstallCommand) else msg.version
            return [
                self._report(
                    getattr(msg, "rollout_id", ""), version, InstallResult.FAILED, detail="stored release corrupt"
                )
            ]
        raise ProtocolError(f"not a fleet command: {type(msg).__name__}")

    def install(self, release: SignedRelease, rollout_id: str) -> InstallReport:
        """Verify, evaluate and install ``release`` for ``rollout_id``; the previous release keeps
        running on any failure. A rollout is taken at most once (pin installs pass "")."""
        version = release.manifest.version
        if rollout_id and self.taken(rollout_id) is not None:
            return self._report(rollout_id, version, InstallResult.ALREADY_TAKEN, detail="rollout taken before")
        pinned = self.pinned()
        if pinned and pinned != version:
            return self._report(rollout_id, version, InstallResult.PINNED, detail=f"pinned to {pinned}")
        try:
            weights = verify_signed(release, self.trusted_keys())
        except SecurityError:
            log.warning("release %s refused", version, extra=self._extra)
            return self._done(rollout_id, version, InstallResult.REFUSED, detail="release refused")
        try:
            current = self.current()
        except SecurityError:  # the stored copy went bad on disk: replace it, nothing to compare with
            log.warning("the current release's stored copy is corrupt", extra=self._extra)
            current = None
        if current is not None and current.manifest.version == version:
            return self._done(rollout_id, version, InstallResult.INSTALLED, detail="already running")
        if current is not None and is_older(release.manifest, current.manifest):
            # anti-rollback: going back is only the signed rollback of a rollout this device took
            log.warning(
                "release %s is older than the running %s on model line %s; refused",
                version,
                current.manifest.version,
                current.manifest.architecture,
                extra=self._extra,
            )
            return self._done(rollout_id, version, InstallResult.REFUSED, detail="older than the running release")
        try:
            if release.manifest.carries_model:
                self._prepare_model(release)
            metric = self._evaluate(release.manifest, weights)
        except (ModelTooLarge, TrainingError) as e:  # too large, or this device's data cannot feed it
            log.warning("release %s refused: %s", version, e, extra=self._extra)
            return self._done(rollout_id, version, InstallResult.FAILED, detail=f"install failed: {e}"[:500])
        except (FedgeError, ValueError, RuntimeError, MemoryError, OSError) as e:
            log.warning("release %s failed to install: %s", version, e, extra=self._extra)
            return self._done(rollout_id, version, InstallResult.FAILED, detail=f"install failed: {type(e).__name__}")
        baseline = None
        if current is not None and metric is not None:
            try:  # the release it replaces, on the same data: the coordinator's regression criterion
                baseline = self._evaluate(current.manifest, current.weights)
            except (FedgeError, ValueError, RuntimeError, MemoryError) as e:
                log.info("previous release %s not evaluated: %s", current.manifest.version, e, extra=self._extra)
        with self._db.conn:
            self._db.execute("delete from releases where slot = ?", [PREVIOUS])
            self._db.execute("update releases set slot = ? where slot = ?", [PREVIOUS, CURRENT])
            self._db.execute("delete from releases where version = ?", [version])
            self._db.execute(
                "insert into releases (version, slot, release, installed) values (?, ?, ?, ?)",
                [version, CURRENT, wire.encode(release), self._clock()],
            )
            if rollout_id:
                self._record(rollout_id, version, InstallResult.INSTALLED)
        log.info("installed release %s (rollout %s)", version, rollout_id or "-", extra=self._extra)
        return self._report(
            rollout_id,
            version,
            InstallResult.INSTALLED,
            metric=metric[0] if metric else None,
            baseline=baseline[0] if baseline else None,
            evaluated=metric[1] if metric else 0,
        )

    def rollback(self, rollout_id: str, version: str) -> InstallReport:
        """Leave ``version`` for the previous release; UNCHANGED when ``version`` is not running."""
        if self.running() != version:
            return self._report(rollout_id, version, InstallResult.UNCHANGED, detail="not running that version")
        if rollout_id and (self.taken(rollout_id), self._taken_version(rollout_id)) != (
            InstallResult.INSTALLED.value,
            version,
        ):
            # only the rollout that installed this version may take it back
            return self._report(
                rollout_id, version, InstallResult.UNCHANGED, detail="not the rollout that installed it"
            )
        if self.previous() is None:
            return self._report(rollout_id, version, InstallResult.FAILED, detail="no previous release")
        with self._db.conn:
            self._db.execute("delete from releases where slot = ?", [CURRENT])
            self._db.execute("update releases set slot = ? where slot = ?", [CURRENT, PREVIOUS])
        log.info("rolled back from %s to %s", version, self.running(), extra=self._extra)
        return self._report(rollout_id, version, InstallResult.ROLLED_BACK)

    def pin(self, version: str, release: SignedRelease | None = None) -> InstallReport:
        """Pin to ``version`` ("" unpins) and run it: from the previous slot, or by installing ``release``."""
        with self._db.conn:
            self._db.execute("update release_state set pinned = ? where id = 1", [version])
        if not version or self.running() == version:
            return self._report("", version, InstallResult.UNCHANGED, detail="pinned" if version else "unpinned")
        prev = self.previous()
        if prev is not None and prev.manifest.version == version:
            with self._db.conn:
                self._db.execute("update releases set slot = 'swap' where slot = ?", [CURRENT])
                self._db.execute("update releases set slot = ? where slot = ?", [CURRENT, PREVIOUS])
                self._db.execute("update releases set slot = ? where slot = 'swap'", [PREVIOUS])
            return self._report("", version, InstallResult.INSTALLED, detail="pinned (previous release)")
        if release is None:
            return self._report("", version, InstallResult.FAILED, detail="pinned version not held")
        return self.install(release, "")

    # ------------------------------------------------------------------ helpers

    def _prepare_model(self, release: SignedRelease) -> Path:
        """Write a built model's (verified) files, check they describe the release, and measure the
        memory one training step takes; ModelTooLarge over the profile's cap."""
        from fedge.agent.training.memory import training_peak_bytes
        from fedge.agent.training.models import load_spec

        if self.models_dir is None:
            raise ConfigError("no models directory: cannot install a release that carries its model")
        m = release.manifest
        path = write_model_files(self.models_dir, m, release.model, release.model_meta)
        spec = load_spec(path)
        if spec.name != m.architecture or spec.num_params != m.num_params:
            raise ValueError(
                f"model file is {spec.name} with {spec.num_params} weights, the release names "
                f"{m.architecture} with {m.num_params}"
            )
        probe = self._memory_probe or training_peak_bytes
        need = probe(path, self._batch_size, self._threads)
        self.last_model_memory = need
        log.info(
            "model %s: one training step at batch %d takes %.1f MiB (measured)",
            m.architecture,
            self._batch_size,
            need / 2**20,
            extra=self._extra,
        )
        if self._memory_cap_mb is not None and need > self._memory_cap_mb * 2**20:
            raise ModelTooLarge(
                f"training {m.architecture} needs {need / 2**20:.1f} MiB at batch {self._batch_size} (measured), "
                f"over this device's cap of {self._memory_cap_mb:g} MiB"
            )
        return path

    def _evaluate(self, manifest: ReleaseManifest, weights: np.ndarray) -> tuple[float, int] | None:
        if self._evaluator is None:
            return None
        out = self._evaluator(manifest, weights)
        if out is not None and not math.isfinite(out[0]):
            raise ValueError("evaluation is not finite")
        return out

    def _record(self, rollout_id: str, version: str, result: InstallResult) -> None:
        self._db.execute(
            "insert or ignore into rollouts_taken (rollout_id, version, result, at) values (?, ?, ?, ?)",
            [rollout_id, version, result.value, self._clock()],
        )

    def _done(self, rollout_id: str, version: str, result: InstallResult, detail: str = "") -> InstallReport:
        if rollout_id:
            with self._db.conn:
                self._record(rollout_id, version, result)
        return self._report(rollout_id, version, result, detail=detail)

    def _report(
        self,
        rollout_id: str,
        version: str,
        result: InstallResult,
        *,
        metric: float | None = None,
        baseline: float | None = None,
        evaluated: int = 0,
        detail: str = "",
    ) -> InstallReport:
        return InstallReport(
            self.device_id, rollout_id, version, result, self.running(), metric, baseline, evaluated, detail
        )


#: Fleet messages the daemon hands to :meth:`ReleaseManager.handle` (besides rotations on RELEASE_KEYS).
FLEET_COMMANDS = (InstallCommand, RollbackCommand, PinCommand)


def is_older(candidate: ReleaseManifest, running: ReleaseManifest) -> bool:
    """Whether ``candidate`` is older than ``running`` on the same model line (architecture): signed
    earlier, or the running release's own parent."""
    if candidate.architecture != running.architecture:
        return False
    return candidate.created < running.created or candidate.version == running.parent


def outbox_key(report: InstallReport) -> str:
    """The outbox stage for a report: unique per rollout (or pin), version and result."""
    return f"fleet.install_report/{report.rollout_id or 'pin'}/{report.version}/{report.result.value}"


def trust_release_keys(db: sqlite_utils.Database, device_id: str, keys_hex: tuple[str, ...] | list[str]) -> list[str]:
    """Trust release public keys given at enrollment (hex); ConfigError for a malformed one."""
    from fedge.agent.core.errors import ConfigError

    out = []
    for k in keys_hex:
        try:
            raw = bytes.fromhex(k.strip())
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError("release key: expected 64 hex digits (an Ed25519 public key)")
        out.append(ReleaseManager(db, device_id).trust_key(raw))
    return out

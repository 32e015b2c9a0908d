"""Fleet operations on the wire: signed releases, key rotations, install, roll back and pin
commands, and the device's install report.

A release travels as a :class:`SignedRelease`: a :class:`ReleaseManifest` (what the coordinator
signs, with its canonical bytes), the release key's signature and the weights. Trust in release
keys moves by :class:`KeyRotation`. Signing and verifying them is :mod:`fedge.agent.core.release`.
Commands go to ``device_in(id)``, reports come back on ``device_out(id)``.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from dataclasses import dataclass

import numpy as np

from fedge.agent.core.crypto import transcript
from fedge.agent.core.wire import message

_VERSION = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_F64 = struct.Struct(">d")


def check_version(version: str) -> str:
    """A release version is 1-64 of ``[A-Za-z0-9_.:+-]``; ValueError otherwise."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError(f"invalid release version {version!r}")
    return version


@dataclass(frozen=True)
class ReleaseManifest:
    """What the coordinator signs for one release. ``parent`` is "" for a first release;
    ``produced_by`` lists the rounds that trained it, ``source`` says ``rounds`` or ``import:<file>``."""

    version: str
    parent: str
    architecture: str
    sha256: str
    num_params: int
    metrics: dict[str, float]
    produced_by: tuple[int, ...]
    source: str
    key_id: str
    created: float
    #: SHA-256 of the architecture file (``.tflite``) and of its ``.json`` metadata the release
    #: carries; both "" for a zoo architecture (the file is already on the device)
    model_sha256: str = ""
    model_meta_sha256: str = ""

    @property
    def carries_model(self) -> bool:
        """True when the release carries its architecture file (a built model)."""
        return bool(self.model_sha256)

    def __post_init__(self) -> None:
        check_version(self.version)
        if bool(self.model_sha256) != bool(self.model_meta_sha256):
            raise ValueError("model_sha256 and model_meta_sha256 go together")
        for h in (self.model_sha256, self.model_meta_sha256):
            if h and not _HEX64.match(h):
                raise ValueError("model hashes must be 64 lowercase hex digits")
        if self.parent:
            check_version(self.parent)
        if not self.architecture or len(self.architecture) > 64:
            raise ValueError("architecture must be 1-64 characters")
        if not _HEX64.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if not _KEY_ID.match(self.key_id):
            raise ValueError("key_id must be 16 lowercase hex digits")
        if not 0 < self.num_params < 2**31:
            raise ValueError("num_params out of range")
        if not all(math.isfinite(v) for v in self.metrics.values()) or not math.isfinite(self.created):
            raise ValueError("metrics and created must be finite")
        if len(self.source) > 256:
            raise ValueError("source is too long")

    def canonical_bytes(self) -> bytes:
        """The exact bytes signed: a domain-separated transcript of every field in a fixed order."""
        metrics = b"".join(
            struct.pack(">H", len(k.encode())) + k.encode() + _F64.pack(v) for k, v in sorted(self.metrics.items())
        )
        rounds = b"".join(struct.pack(">q", r) for r in self.produced_by)
        fields: tuple[bytes | str | int, ...] = (
            self.version,
            self.parent,
            self.architecture,
            self.sha256,
            self.num_params,
            metrics,
            rounds,
            self.source,
            self.key_id,
            _F64.pack(self.created),
        )
        if self.carries_model:  # a release without model files signs exactly what it did before them
            return transcript("release/manifest-with-model", *fields, self.model_sha256, self.model_meta_sha256)
        return transcript("release/manifest", *fields)


@message("fleet.release")
@dataclass(frozen=True)
class SignedRelease:
    """A release as it travels: manifest, the release key's signature over it, the flat weights,
    and for a built model its architecture file and metadata (empty for a zoo architecture)."""

    manifest: ReleaseManifest
    signature: bytes
    weights: np.ndarray
    model: bytes = b""
    model_meta: bytes = b""


@message("fleet.key_rotation")
@dataclass(frozen=True)
class KeyRotation:
    """Trust ``new_public`` from now on and stop trusting ``retire`` (key ids).

    Signed by a currently trusted key (``signer_key_id``) and by the new key itself;
    ``sequence`` only grows, so an old rotation cannot be replayed.
    """

    sequence: int
    new_public: bytes
    retire: tuple[str, ...]
    signer_key_id: str
    signature: bytes
    new_key_signature: bytes


def _check_rollout(rollout_id: str) -> None:
    if not 1 <= len(rollout_id) <= 64:
        raise ValueError("rollout_id must be 1-64 characters")


@message("fleet.install")
@dataclass(frozen=True)
class InstallCommand:
    """Install ``release`` as part of rollout ``rollout_id`` (a device takes each rollout at most once)."""

    device_id: str
    rollout_id: str
    release: SignedRelease

    def __post_init__(self) -> None:
        _check_rollout(self.rollout_id)


@message("fleet.rollback")
@dataclass(frozen=True)
class RollbackCommand:
    """Leave ``version`` (installed by ``rollout_id``) for the release the device ran before it;
    signed by a release key (``key_id``) over device, rollout and version, like a release
    (:func:`fedge.agent.core.release.sign_rollback`): going back is as guarded as going forward."""

    device_id: str
    rollout_id: str
    version: str
    key_id: str
    signature: bytes

    def __post_init__(self) -> None:
        _check_rollout(self.rollout_id)
        check_version(self.version)
        if not _KEY_ID.match(self.key_id):
            raise ValueError(f"rollback key id: expected 16 hex digits, got {self.key_id!r}")


@message("fleet.pin")
@dataclass(frozen=True)
class PinCommand:
    """Run ``version`` and refuse every other release until unpinned (``version`` ""); ``release``
    carries it when the device may not hold it yet."""

    device_id: str
    version: str
    release: SignedRelease | None

    def __post_init__(self) -> None:
        if self.version:
            check_version(self.version)
        if self.release is not None and self.release.manifest.version != self.version:
            raise ValueError("pin release does not match the pinned version")


class InstallResult(enum.Enum):
    """What a device did with a command."""

    INSTALLED = "installed"  # verified, loaded, evaluated: now the current release
    FAILED = "failed"  # verified but could not be installed or run; the previous release keeps running
    REFUSED = "refused"  # signature or hash check failed; never loaded
    PINNED = "pinned"  # the device is pinned to another version
    ALREADY_TAKEN = "already_taken"  # this rollout was taken before
    ROLLED_BACK = "rolled_back"  # back on the previous release
    UNCHANGED = "unchanged"  # rollback or pin needed nothing (not running that version)


@message("fleet.install_report")
@dataclass(frozen=True)
class InstallReport:
    """A device's answer to a fleet command, with the on-device evaluation on held-out local data.

    ``metric`` is the accuracy of the new release and ``baseline`` that of the release it
    replaced, on the same ``evaluated`` examples (None when the device has no held-out data).
    ``rollout_id`` is "" for pin commands.
    """

    device_id: str
    rollout_id: str
    version: str
    result: InstallResult
    running: str
    metric: float | None
    baseline: float | None
    evaluated: int
    detail: str

    def __post_init__(self) -> None:
        if len(self.rollout_id) > 64 or len(self.detail) > 500:
            raise ValueError("rollout_id or detail too long")
        for v in (self.metric, self.baseline):
            if v is not None and not math.isfinite(v):
                raise ValueError("metrics must be finite")
        if self.evaluated < 0:
            raise ValueError("evaluated must be >= 0")

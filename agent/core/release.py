"""Signed model releases and release-key rotation, shared by the coordinator and the agents.

A release is a global model the coordinator published: a :class:`ReleaseManifest` (version,
parent, architecture, SHA-256 of the weights, metrics, where it came from, signing key id), an
Ed25519 signature over its canonical bytes, and the weights. A device installs only what
:func:`verify_release` accepts: a signature by a key it trusts and weights matching the hash.
Trust moves by :class:`KeyRotation` messages signed by a trusted key (and by the new key, to
prove it is held), so the release key rotates without re-enrolling devices. Every refusal is
one opaque :class:`~agent.core.errors.SecurityError`.

A release may carry its architecture: the built ``.tflite`` and its ``.json`` metadata
(``fedge-coordinator models build``). The manifest then names their SHA-256s
(``model_sha256``, ``model_meta_sha256``), so the signature covers the files and a rollout can
move a device to a new architecture. A release without them trains the zoo model named by
``architecture``, and its signed bytes are those of a release made before model files existed.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedge.agent.core.crypto import IdentityKey, transcript, verify
from fedge.agent.core.errors import SecurityError
from fedge.agent.core.wire import message

_VERSION = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_F64 = struct.Struct(">d")


def key_id(public: bytes) -> str:
    """Short id of a release public key: the first 8 bytes of its SHA-256, hex."""
    return hashlib.sha256(bytes(public)).digest()[:8].hex()


def weights_sha256(weights: np.ndarray) -> str:
    """SHA-256 hex of flat weights as raw little-endian float32 (the form they travel in)."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f4").tobytes()).hexdigest()


def file_sha256(data: bytes) -> str:
    """SHA-256 hex of a model file's bytes."""
    return hashlib.sha256(bytes(data)).hexdigest()


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


def sign_release(manifest: ReleaseManifest, key: IdentityKey) -> bytes:
    """The release key's signature over ``manifest`` (whose key_id must name that key)."""
    if manifest.key_id != key_id(key.public_bytes()):
        raise SecurityError("manifest names another release key")
    return key.sign(manifest.canonical_bytes())


def verify_release(
    manifest: ReleaseManifest,
    signature: bytes,
    weights: np.ndarray,
    trusted_keys: Mapping[str, bytes],
    model: bytes = b"",
    model_meta: bytes = b"",
) -> np.ndarray:
    """The weights as float32 if ``signature`` is a trusted key's over ``manifest`` and they match its
    hash, and the model files (if the manifest names them) match theirs.

    Unknown key, bad signature, wrong size or hash, a model file the manifest does not name or
    one that differs from its hash: one opaque SecurityError.
    """
    public = trusted_keys.get(manifest.key_id)
    if public is None or key_id(public) != manifest.key_id:
        raise SecurityError("release refused")
    try:
        verify(public, manifest.canonical_bytes(), bytes(signature))
    except SecurityError:
        raise SecurityError("release refused") from None
    w = np.asarray(weights)
    if w.dtype != np.dtype("<f4") or w.ndim != 1 or w.size != manifest.num_params:
        raise SecurityError("release refused")
    if weights_sha256(w) != manifest.sha256:
        raise SecurityError("release refused")
    if manifest.carries_model:
        if file_sha256(model) != manifest.model_sha256 or file_sha256(model_meta) != manifest.model_meta_sha256:
            raise SecurityError("release refused")
    elif model or model_meta:
        raise SecurityError("release refused")
    return w.astype(np.float32)


def verify_signed(release: SignedRelease, trusted_keys: Mapping[str, bytes]) -> np.ndarray:
    """:func:`verify_release` on a :class:`SignedRelease`."""
    return verify_release(
        release.manifest, release.signature, release.weights, trusted_keys, release.model, release.model_meta
    )


# ---------------------------------------------------------------------- key rotation


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


def rotation_payload(sequence: int, new_public: bytes, retire: tuple[str, ...], signer_key_id: str) -> bytes:
    """What both keys sign for a rotation."""
    return transcript("release/key-rotation", sequence, bytes(new_public), ",".join(retire), signer_key_id)


def sign_rotation(
    signer: IdentityKey, new_key: IdentityKey, sequence: int, retire: tuple[str, ...] = ()
) -> KeyRotation:
    """A rotation to ``new_key`` vouched for by ``signer`` (a key the devices trust now)."""
    signer_id = key_id(signer.public_bytes())
    payload = rotation_payload(sequence, new_key.public_bytes(), tuple(retire), signer_id)
    return KeyRotation(
        sequence, new_key.public_bytes(), tuple(retire), signer_id, signer.sign(payload), new_key.sign(payload)
    )


def apply_rotation(trusted: Mapping[str, bytes], last_sequence: int, rotation: KeyRotation) -> dict[str, bytes]:
    """The trusted key set after ``rotation``; SecurityError if it is not signed by a trusted key and
    the new key, replays an old sequence, or would leave no key trusted."""
    signer = trusted.get(rotation.signer_key_id)
    if signer is None or rotation.sequence <= last_sequence:
        raise SecurityError("key rotation refused")
    payload = rotation_payload(rotation.sequence, rotation.new_public, tuple(rotation.retire), rotation.signer_key_id)
    try:
        verify(signer, payload, bytes(rotation.signature))
        verify(bytes(rotation.new_public), payload, bytes(rotation.new_key_signature))
    except SecurityError:
        raise SecurityError("key rotation refused") from None
    new_id = key_id(rotation.new_public)
    if new_id in rotation.retire:
        raise SecurityError("key rotation refused")
    out = {k: v for k, v in trusted.items() if k not in rotation.retire}
    out[new_id] = bytes(rotation.new_public)
    return out

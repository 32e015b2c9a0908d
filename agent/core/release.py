"""Signing and verifying model releases and release-key rotations, shared by the coordinator and the agents.

A release is a global model the coordinator published: a
:class:`~fedge.agent.core.messages.fleet.ReleaseManifest` (version, parent, architecture, SHA-256
of the weights, metrics, where it came from, signing key id), an Ed25519 signature over its
canonical bytes, and the weights; the wire types live in :mod:`fedge.agent.core.messages.fleet`.
A device installs only what :func:`verify_release` accepts: a signature by a key it trusts and
weights matching the hash. Trust moves by ``KeyRotation`` messages signed by a trusted key (and by
the new key, to prove it is held), so the release key rotates without re-enrolling devices. Every
refusal is one opaque :class:`~fedge.agent.core.errors.SecurityError`.

A release may carry its architecture: the built ``.tflite`` and its ``.json`` metadata
(``fedge-coordinator models build``). The manifest then names their SHA-256s
(``model_sha256``, ``model_meta_sha256``), so the signature covers the files and a rollout can
move a device to a new architecture. A release without them trains the zoo model named by
``architecture``, and its signed bytes are those of a release made before model files existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from fedge.agent.core.crypto import IdentityKey, transcript, verify
from fedge.agent.core.errors import SecurityError
from fedge.agent.core.messages.fleet import KeyRotation, ReleaseManifest, RollbackCommand, SignedRelease


def key_id(public: bytes) -> str:
    """Short id of a release public key: the first 8 bytes of its SHA-256, hex."""
    return hashlib.sha256(bytes(public)).digest()[:8].hex()


def weights_sha256(weights: np.ndarray) -> str:
    """SHA-256 hex of flat weights as raw little-endian float32 (the form they travel in)."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f4").tobytes()).hexdigest()


def file_sha256(data: bytes) -> str:
    """SHA-256 hex of a model file's bytes."""
    return hashlib.sha256(bytes(data)).hexdigest()


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


# ---------------------------------------------------------------------- rollback


def rollback_payload(device_id: str, rollout_id: str, version: str, signer_key_id: str) -> bytes:
    """What the release key signs for a rollback: this device, this rollout, this version."""
    return transcript("release/rollback", device_id, rollout_id, version, signer_key_id)


def sign_rollback(key: IdentityKey, device_id: str, rollout_id: str, version: str) -> RollbackCommand:
    """A rollback command for one device, signed by the release key ``key``."""
    kid = key_id(key.public_bytes())
    return RollbackCommand(
        device_id, rollout_id, version, kid, key.sign(rollback_payload(device_id, rollout_id, version, kid))
    )


def verify_rollback(cmd: RollbackCommand, trusted_keys: Mapping[str, bytes]) -> None:
    """SecurityError unless a trusted release key signed ``cmd`` (one opaque refusal)."""
    public = trusted_keys.get(cmd.key_id)
    if public is None or key_id(public) != cmd.key_id:
        raise SecurityError("rollback refused")
    try:
        verify(public, rollback_payload(cmd.device_id, cmd.rollout_id, cmd.version, cmd.key_id), bytes(cmd.signature))
    except SecurityError:
        raise SecurityError("rollback refused") from None


# ---------------------------------------------------------------------- key rotation


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

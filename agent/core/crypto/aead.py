"""Authenticated encryption (ChaCha20-Poly1305) with the nonce chosen here, never by callers.

A sealed blob is ``nonce(12) || ciphertext || tag(16)``. Any failure to open is an opaque
:class:`SecurityError`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from agent.core.crypto.randomness import random_bytes
from agent.core.errors import SecurityError

AEAD_KEY_BYTES = 32
NONCE_BYTES = 12
OVERHEAD = NONCE_BYTES + 16


def seal(key: bytes, plaintext: bytes, associated: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext``, binding ``associated`` data."""
    if len(key) != AEAD_KEY_BYTES:
        raise SecurityError("bad key")
    nonce = random_bytes(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, blob: bytes, associated: bytes = b"") -> bytes:
    """Decrypt a :func:`seal` blob; raise :class:`SecurityError` if anything is off."""
    if len(key) != AEAD_KEY_BYTES or len(blob) < OVERHEAD:
        raise SecurityError("cannot open")
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
    except Exception:
        raise SecurityError("cannot open") from None

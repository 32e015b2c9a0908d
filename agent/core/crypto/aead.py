"""Authenticated encryption (ChaCha20-Poly1305, RFC 8439) with the nonce chosen here, never by callers.

A sealed blob is ``nonce(12) || ciphertext || tag(16)``. Any failure to open is an opaque
:class:`SecurityError`. libsodium (through pynacl) does the work.
"""

from __future__ import annotations

import nacl.bindings as _nb

from agent.core.crypto.randomness import random_bytes
from agent.core.errors import SecurityError

AEAD_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


def seal(key: bytes, plaintext: bytes, associated: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext``, binding ``associated`` data."""
    if len(key) != AEAD_KEY_BYTES:
        raise SecurityError("bad key")
    nonce = random_bytes(NONCE_BYTES)
    return nonce + _nb.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes(plaintext), bytes(associated), nonce, bytes(key)
    )


def open_sealed(key: bytes, blob: bytes, associated: bytes = b"") -> bytes:
    """Decrypt a :func:`seal` blob; raise :class:`SecurityError` if anything is off."""
    if len(key) != AEAD_KEY_BYTES or len(blob) < OVERHEAD:
        raise SecurityError("cannot open")
    blob = bytes(blob)
    try:
        return _nb.crypto_aead_chacha20poly1305_ietf_decrypt(
            blob[NONCE_BYTES:], bytes(associated), blob[:NONCE_BYTES], bytes(key)
        )
    except Exception:
        raise SecurityError("cannot open") from None

"""Authenticated encryption (ChaCha20-Poly1305, RFC 8439) with the nonce chosen here, never by callers.

A sealed blob is ``nonce(12) || ciphertext || tag(16)``. Any failure to open is an opaque
:class:`SecurityError`. libsodium does the work, called through pynacl's cffi library: the
public wrappers spend ~10 us per call on checks and copies, and every SecAgg+ client seals and
opens one share per neighbour (a simulated 10,000-device round: about a million calls). The
RFC 8439 vector in the tests pins the bytes.
"""

from __future__ import annotations

from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from fedge.agent.core.crypto.bytes_in import as_bytes
from fedge.agent.core.crypto.randomness import random_bytes
from fedge.agent.core.errors import SecurityError

AEAD_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES
#: Far below libsodium's limit; shares and keys are small.
MAX_PLAINTEXT = 1 << 30


def seal(key: bytes, plaintext: bytes, associated: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext``, binding ``associated`` data."""
    key, plaintext, associated = as_bytes(key), as_bytes(plaintext), as_bytes(associated)
    if len(key) != AEAD_KEY_BYTES:
        raise SecurityError("bad key")
    if len(plaintext) > MAX_PLAINTEXT:
        raise SecurityError("plaintext too long")
    nonce = random_bytes(NONCE_BYTES)
    size = len(plaintext) + TAG_BYTES
    out = _ffi.new("unsigned char[]", size)
    written = _ffi.new("unsigned long long *")
    if (
        _lib.crypto_aead_chacha20poly1305_ietf_encrypt(
            out, written, plaintext, len(plaintext), associated, len(associated), _ffi.NULL, nonce, key
        )
        or written[0] != size
    ):
        raise SecurityError("cannot seal")
    return nonce + _ffi.buffer(out, size)[:]


def open_sealed(key: bytes, blob: bytes, associated: bytes = b"") -> bytes:
    """Decrypt a :func:`seal` blob; raise :class:`SecurityError` if anything is off."""
    try:
        key, blob, associated = as_bytes(key), as_bytes(blob), as_bytes(associated)
    except SecurityError:
        raise SecurityError("cannot open") from None
    if len(key) != AEAD_KEY_BYTES or not OVERHEAD <= len(blob) <= MAX_PLAINTEXT + OVERHEAD:
        raise SecurityError("cannot open")
    size = len(blob) - OVERHEAD
    out = _ffi.new("unsigned char[]", max(size, 1))
    written = _ffi.new("unsigned long long *")
    body = blob[NONCE_BYTES:]
    if (
        _lib.crypto_aead_chacha20poly1305_ietf_decrypt(
            out, written, _ffi.NULL, body, len(body), associated, len(associated), blob[:NONCE_BYTES], key
        )
        or written[0] != size
    ):
        raise SecurityError("cannot open")
    return _ffi.buffer(out, size)[:]

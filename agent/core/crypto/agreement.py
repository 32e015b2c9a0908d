"""X25519 key agreement and HKDF-SHA256 key derivation with unambiguous domain separation.

A derived key is bound to a purpose label and context parts (round id, pair ids...), each
length-prefixed, so no two (label, context) tuples ever derive the same key.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import nacl.bindings as _nb
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.core.crypto.randomness import random_bytes
from agent.core.errors import SecurityError

PUBLIC_BYTES = 32
_DOMAIN = b"fedge/v1/"


class AgreementKey:
    """An ephemeral X25519 key pair (one per purpose per round)."""

    __slots__ = ("_sk", "_pk")

    def __init__(self, private: bytes) -> None:
        if not isinstance(private, bytes) or len(private) != 32:
            raise SecurityError("invalid agreement key")
        self._sk = private
        self._pk = _nb.crypto_scalarmult_base(private)

    @classmethod
    def generate(cls) -> AgreementKey:
        """A fresh key pair from OS randomness."""
        return cls(random_bytes(32))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> AgreementKey:
        """Rebuild from 32 private bytes (e.g. a key reconstructed from Shamir shares)."""
        return cls(bytes(raw))

    def private_bytes(self) -> bytes:
        """The 32 private bytes (the secret that SecAgg shares)."""
        return self._sk

    def public_bytes(self) -> bytes:
        """The 32-byte public key to advertise."""
        return self._pk

    def exchange(self, peer_public: bytes) -> bytes:
        """The 32-byte shared secret with ``peer_public``; low-order points are refused."""
        return agree(self._sk, peer_public)


def agree(private: bytes, peer_public: bytes) -> bytes:
    """Raw X25519 (RFC 7748); raises :class:`SecurityError` on a bad or low-order peer key."""
    if len(peer_public) != PUBLIC_BYTES:
        raise SecurityError("bad public key")
    try:
        return _nb.crypto_scalarmult(private, peer_public)
    except Exception:  # libsodium refuses an all-zero result (low-order point)
        raise SecurityError("bad public key") from None


_Q = struct.Struct(">q")
_I = struct.Struct(">I")
_INT_PART = _I.pack(8)


def _info(label: str, context: Iterable[bytes | str | int]) -> bytes:
    head = _DOMAIN + label.encode()
    parts = [_I.pack(len(head)), head]
    for c in context:
        if type(c) is int:
            parts.append(_INT_PART)
            parts.append(_Q.pack(c))
            continue
        if type(c) is str:
            c = c.encode()
        parts.append(_I.pack(len(c)))
        parts.append(c)
    return b"".join(parts)


def derive_key(secret: bytes, label: str, *context: bytes | str | int, length: int = 32) -> bytes:
    """HKDF-SHA256 of ``secret`` into ``length`` bytes for ``label`` and ``context``."""
    return HKDF(hashes.SHA256(), length, None, _info(label, context)).derive(secret)


def hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """Plain RFC 5869 HKDF-SHA256 (for known-answer tests and raw uses)."""
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)

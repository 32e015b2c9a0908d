"""Long-term Ed25519 device identities: sign, verify, raw 32-byte public and private bytes.

Registered at enrollment and reused by model-release signing and SecAgg key advertisements.
Private keys are stored as their 32-byte seed (RFC 8032), never pickled.
"""

from __future__ import annotations

import nacl.bindings as _nb

from fedge.agent.core.crypto.bytes_in import as_bytes
from fedge.agent.core.crypto.randomness import random_bytes
from fedge.agent.core.errors import SecurityError

PUBLIC_BYTES = 32
PRIVATE_BYTES = 32
SIGNATURE_BYTES = 64


class IdentityKey:
    """An Ed25519 signing key. Build with :meth:`generate` or :meth:`from_private_bytes`."""

    __slots__ = ("_seed", "_sk", "_pk")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != PRIVATE_BYTES:
            raise SecurityError("invalid identity key")
        self._seed = seed
        self._pk, self._sk = _nb.crypto_sign_seed_keypair(seed)

    @classmethod
    def generate(cls) -> IdentityKey:
        """A fresh identity from OS randomness."""
        return cls(random_bytes(PRIVATE_BYTES))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> IdentityKey:
        """Load the 32-byte seed written by :meth:`private_bytes`."""
        return cls(bytes(raw))

    def private_bytes(self) -> bytes:
        """The 32-byte seed, for storage (keep it secret)."""
        return self._seed

    def public_bytes(self) -> bytes:
        """The 32-byte raw public key others verify with."""
        return self._pk

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data``."""
        return _nb.crypto_sign(data, self._sk)[:SIGNATURE_BYTES]

    def __repr__(self) -> str:
        return f"IdentityKey(public={self._pk.hex()[:16]}...)"


def verify(public_bytes: bytes, data: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raise an opaque :class:`SecurityError` if it fails."""
    if len(public_bytes) != PUBLIC_BYTES or len(signature) != SIGNATURE_BYTES:
        raise SecurityError("bad signature")
    try:
        _nb.crypto_sign_open(signature + data, public_bytes)
    except Exception:
        raise SecurityError("bad signature") from None


def is_valid(public_bytes: bytes, data: bytes, signature: bytes) -> bool:
    """:func:`verify` as a boolean, for filtering many signatures."""
    try:
        verify(public_bytes, data, signature)
    except SecurityError:
        return False
    return True


class SignatureMemo:
    """:func:`verify` that remembers signatures it has accepted, for one process that checks the
    same signature on behalf of many devices (a simulator's device host).

    Ed25519 verification is a pure function of (key, data, signature), so a hit gives exactly the
    answer a fresh check would; only successes are kept, so a bad signature is checked, and
    refused, every time. A real device never shares one: each checks its own signatures.
    """

    __slots__ = ("_accepted", "checked", "hits")

    def __init__(self) -> None:
        self._accepted: set[tuple[bytes, bytes, bytes]] = set()
        self.checked = 0  #: signatures actually verified
        self.hits = 0  #: signatures answered from the memo

    def __call__(self, public_bytes: bytes, data: bytes, signature: bytes) -> None:
        """Same contract as :func:`verify`."""
        key = (as_bytes(public_bytes), as_bytes(data), as_bytes(signature))
        if key in self._accepted:
            self.hits += 1
            return
        self.checked += 1
        verify(*key)
        self._accepted.add(key)

    def clear(self) -> None:
        """Forget every accepted signature (at the end of a round)."""
        self._accepted.clear()

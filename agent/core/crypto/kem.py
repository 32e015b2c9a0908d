"""ML-KEM-768 (FIPS 203) for the hybrid SecAgg+ suite, loaded only when a round runs that suite.

The implementation is ``cryptography``'s (OpenSSL 3.5+ underneath; the ``pq`` extra installs it):
it costs the agent about 8.7 MiB of RSS, so nothing here is imported until :func:`load` runs, and
:func:`available` only looks for the files. Keys are built from a 64-byte FIPS 203 seed
``d || z`` (random and never shared: SecAgg+ uses one per device per round, for its share channels),
encapsulation is randomized by OpenSSL, every failure is an opaque :class:`SecurityError`. ML-KEM
decapsulation never fails on a well-sized ciphertext (implicit rejection returns ``SHAKE256(z || c)``),
so a tampered ciphertext shows up as the AEAD failure of the share it keys.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from fedge.agent.core.crypto.bytes_in import as_bytes
from fedge.agent.core.errors import SecurityError

SEED_BYTES = 64
PUBLIC_BYTES = 1184
CIPHERTEXT_BYTES = 1088
SHARED_BYTES = 32

_mlkem: Any = None  # cryptography.hazmat.primitives.asymmetric.mlkem once loaded


def available() -> bool:
    """True when an ML-KEM-capable ``cryptography`` is installed, without importing it (the
    OpenSSL it was built with is checked by :func:`load`, when a round needs it)."""
    spec = importlib.util.find_spec("cryptography")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = list(spec.submodule_search_locations)[0]
    return os.path.exists(os.path.join(root, "hazmat", "primitives", "asymmetric", "mlkem.py"))


def load() -> None:
    """Import ML-KEM now (8.7 MiB of RSS); SecurityError if this build cannot run ML-KEM-768."""
    global _mlkem
    if _mlkem is not None:
        return
    try:
        from cryptography.hazmat.primitives.asymmetric import mlkem

        mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(SEED_BYTES))  # UnsupportedAlgorithm without OpenSSL support
    except Exception:
        raise SecurityError("ML-KEM-768 is not available") from None
    _mlkem = mlkem


def runs() -> bool:
    """True when ML-KEM-768 really runs here (imports it)."""
    try:
        load()
    except SecurityError:
        return False
    return True


class KemKey:
    """An ML-KEM-768 decapsulation key rebuilt from its 64-byte seed ``d || z``."""

    __slots__ = ("_sk", "_pk")

    def __init__(self, seed: bytes) -> None:
        load()
        seed = as_bytes(seed)
        if len(seed) != SEED_BYTES:
            raise SecurityError("invalid ML-KEM seed")
        self._sk = _mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        self._pk = self._sk.public_key().public_bytes_raw()

    def public_bytes(self) -> bytes:
        """The 1,184-byte encapsulation key to advertise."""
        return self._pk

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """The 32-byte shared secret of ``ciphertext`` (implicit rejection: never fails on a 1,088-byte input)."""
        ciphertext = as_bytes(ciphertext)
        if len(ciphertext) != CIPHERTEXT_BYTES:
            raise SecurityError("bad KEM ciphertext")
        try:
            return self._sk.decapsulate(ciphertext)
        except Exception:
            raise SecurityError("bad KEM ciphertext") from None


def encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """``(shared secret, ciphertext)`` to the encapsulation key ``public``; SecurityError if it is
    malformed (FIPS 203's modulus check)."""
    load()
    public = as_bytes(public)
    if len(public) != PUBLIC_BYTES:
        raise SecurityError("bad KEM public key")
    try:
        ss, ct = _mlkem.MLKEM768PublicKey.from_public_bytes(public).encapsulate()
    except Exception:
        raise SecurityError("bad KEM public key") from None
    return ss, ct

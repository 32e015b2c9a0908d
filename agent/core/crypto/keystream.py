"""Mask expansion: a ChaCha20 keystream (RFC 8439) from a full 32-byte key, added into numpy buffers.

The PRG, fixed forever because both ends of SecAgg must agree on every byte: the stream is cut
into chunks of ``CHUNK_BYTES`` = 64 KiB; chunk ``i`` is the ChaCha20-Poly1305-IETF ciphertext of
zero bytes under ``key`` and nonce ``i`` (12 bytes, little-endian), tag dropped. That is exactly
the RFC 8439 ChaCha20 keystream for that nonce with the block counter starting at 1 (block 0
keys Poly1305). A short last chunk is a prefix of the full one. Words are read little-endian and
combined with wrapping ``uint16``/``uint32`` arithmetic, one chunk at a time so the sum stays in
cache. Each mask key is used for exactly one vector.
"""

from __future__ import annotations

import sys

import nacl.bindings as _nb
import numpy as np

from agent.core.errors import SecurityError

MASK_KEY_BYTES = 32
#: Part of the PRG definition: changing it changes every mask.
CHUNK_BYTES = 1 << 16
_ZERO_CHUNK = bytes(CHUNK_BYTES)
_aead = _nb.crypto_aead_chacha20poly1305_ietf_encrypt
_NATIVE_IS_LITTLE = sys.byteorder == "little"


def _checked(key: bytes) -> bytes:
    if len(key) != MASK_KEY_BYTES:
        raise SecurityError("bad mask key")
    return bytes(key)


def keystream_chunk(key: bytes, index: int, nbytes: int = CHUNK_BYTES) -> bytes:
    """The first ``nbytes`` of chunk ``index`` of the keystream of ``key``, plus 16 bytes to ignore.

    The trailing 16 bytes are the Poly1305 tag; returning them spares a copy of the chunk.
    """
    zeros = _ZERO_CHUNK if nbytes == CHUNK_BYTES else bytes(nbytes)
    return _aead(zeros, None, index.to_bytes(12, "little"), key)


def expand_into(key: bytes, out: np.ndarray) -> np.ndarray:
    """Fill the contiguous array ``out`` with the keystream of ``key``; return ``out``.

    Bytes are read little-endian, so the mask is the same on every platform.
    """
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable contiguous array")
    key = _checked(key)
    buf = out.reshape(-1).view(np.uint8)
    n = buf.size
    for index, start in enumerate(range(0, n, CHUNK_BYTES)):
        m = min(CHUNK_BYTES, n - start)
        buf[start : start + m] = np.frombuffer(keystream_chunk(key, index, m), np.uint8, m)
    if not _NATIVE_IS_LITTLE and out.dtype.itemsize > 1 and out.dtype.isnative:
        out.byteswap(inplace=True)
    return out


class MaskAccumulator:
    """A running wrapping sum of a vector and ± keystream masks, for SecAgg clients and server.

    ``dtype`` is ``uint16`` or ``uint32``; arithmetic wraps modulo 2^(8*itemsize).
    """

    def __init__(self, dim: int, dtype: np.dtype | type = np.uint32, initial: np.ndarray | None = None):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ValueError("masks are uint16 or uint32")
        self.dim = int(dim)
        if initial is None:
            self.acc = np.zeros(self.dim, self.dtype)
        else:
            if initial.shape != (self.dim,):
                raise ValueError("initial vector has the wrong shape")
            self.acc = np.array(initial, dtype=self.dtype, copy=True)
        self._words = self.dtype.newbyteorder("<")  # keystream words, little-endian everywhere
        self._items = CHUNK_BYTES // self.dtype.itemsize

    def add_vector(self, vec: np.ndarray, sign: int = 1) -> None:
        """acc += sign * vec (wrapping); vec is cast to the accumulator dtype."""
        v = np.asarray(vec)
        if v.dtype != self.dtype:
            v = v.astype(self.dtype)
        (np.add if sign > 0 else np.subtract)(self.acc, v, out=self.acc)

    def add_mask(self, key: bytes, sign: int = 1) -> None:
        """acc += sign * keystream(key), chunk by chunk (wrapping)."""
        self.add_masks([key], [sign])

    def add_masks(self, keys: list[bytes], signs: list[int]) -> None:
        """Several masks at once, same result as :meth:`add_mask` for each.

        Chunk-major: each chunk of the sum stays in cache while every keystream is added to
        it, so the sum crosses the memory bus once instead of once per mask.
        """
        if len(keys) != len(signs):
            raise ValueError("one sign per key")
        plan = [(_checked(k), np.add if s > 0 else np.subtract) for k, s in zip(keys, signs)]
        acc, items, isz, words = self.acc, self._items, self.dtype.itemsize, self._words
        for index, start in enumerate(range(0, self.dim, items)):
            m = min(items, self.dim - start)
            part = acc[start : start + m]
            for key, op in plan:
                op(part, np.frombuffer(keystream_chunk(key, index, m * isz), words, m), out=part)

    def value(self) -> np.ndarray:
        """The accumulated vector (not a copy)."""
        return self.acc

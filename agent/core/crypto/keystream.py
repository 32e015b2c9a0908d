"""Mask expansion: AES-128-CTR keystream from a full 16-byte key, straight into numpy buffers.

Each mask key is used for exactly one vector, so the counter starts at zero. The keystream is
written by the cipher into the caller's buffer (no intermediate bytes objects) and combined
with wrapping ``uint16``/``uint32`` arithmetic, chunk by chunk so the sum stays in cache.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from agent.core.errors import SecurityError

MASK_KEY_BYTES = 16
_ZERO_IV = bytes(16)
_CHUNK_BYTES = 1 << 18  # 256 KiB: keystream chunk plus accumulator chunk stay in L2
_zeros = bytes(_CHUNK_BYTES)


def _encryptor(key: bytes):
    if len(key) != MASK_KEY_BYTES:
        raise SecurityError("bad mask key")
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()


def expand_into(key: bytes, out: np.ndarray) -> np.ndarray:
    """Fill the contiguous array ``out`` with the keystream of ``key``; return ``out``.

    Bytes are read little-endian, so the mask is the same on every platform.
    """
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable contiguous array")
    buf = memoryview(out.reshape(-1).view(np.uint8))
    n = len(buf)
    enc = _encryptor(key)
    pos = 0
    # update_into wants 15 spare output bytes: fill all but the last 16 bytes in place,
    # then the short tail through a 16-byte scratch.
    while n - pos > 16:
        step = min(_CHUNK_BYTES, n - pos - 16)
        enc.update_into(memoryview(_zeros)[:step], buf[pos:])
        pos += step
    if pos < n:
        buf[pos:] = enc.update(bytes(n - pos))
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
        self._items = max(1, _CHUNK_BYTES // self.dtype.itemsize)
        # scratch has 16 spare bytes for update_into.
        self._scratch = np.empty(min(self._items, self.dim) + 16 // self.dtype.itemsize, self.dtype)
        self._scratch_bytes = memoryview(self._scratch.view(np.uint8))

    def add_vector(self, vec: np.ndarray, sign: int = 1) -> None:
        """acc += sign * vec (wrapping); vec is cast to the accumulator dtype."""
        v = np.asarray(vec)
        if v.dtype != self.dtype:
            v = v.astype(self.dtype)
        (np.add if sign > 0 else np.subtract)(self.acc, v, out=self.acc)

    def add_mask(self, key: bytes, sign: int = 1) -> None:
        """acc += sign * keystream(key), chunk by chunk (wrapping)."""
        enc = _encryptor(key)
        op = np.add if sign > 0 else np.subtract
        acc, items, isz = self.acc, self._items, self.dtype.itemsize
        zeros, sbytes, scratch = memoryview(_zeros), self._scratch_bytes, self._scratch
        for start in range(0, self.dim, items):
            m = min(items, self.dim - start)
            enc.update_into(zeros[: m * isz], sbytes)
            part = acc[start : start + m]
            op(part, scratch[:m], out=part)

    def add_masks(self, keys: list[bytes], signs: list[int]) -> None:
        """Several masks at once, same result as :meth:`add_mask` for each.

        Chunk-major: each chunk of the sum stays in cache while every keystream is added to
        it, so the sum crosses the memory bus once instead of once per mask.
        """
        if len(keys) != len(signs):
            raise ValueError("one sign per key")
        plan = [(_encryptor(k).update_into, np.add if s > 0 else np.subtract) for k, s in zip(keys, signs)]
        acc, items, isz = self.acc, self._items, self.dtype.itemsize
        zeros, sbytes, scratch = memoryview(_zeros), self._scratch_bytes, self._scratch
        for start in range(0, self.dim, items):
            m = min(items, self.dim - start)
            z, part, ks = zeros[: m * isz], acc[start : start + m], scratch[:m]
            for update_into, op in plan:
                update_into(z, sbytes)
                op(part, ks, out=part)

    def value(self) -> np.ndarray:
        """The accumulated vector (not a copy)."""
        return self.acc

"""Mask expansion: libsodium's deterministic ChaCha20 stream from a full 32-byte key, written
straight into numpy buffers.

The PRG, fixed forever because both ends of SecAgg must agree on every byte: the mask of ``n``
bytes under ``key`` is ``randombytes_buf_deterministic(n, key)``, i.e. the RFC 8439 ChaCha20
keystream with ``key``, the nonce ``b"LibsodiumDRG"`` and the block counter starting at 0
(documented by libsodium; tied to the RFC by a plain-Python reference in the tests). Words are
read little-endian and combined with wrapping ``uint16``/``uint32`` arithmetic. Each mask key is
used for exactly one vector, so the fixed nonce never repeats under one key.

The stream is written by libsodium into the caller's buffer through pynacl's cffi library (the
public wrapper returns a fresh ``bytes`` object per call: a copy and an allocation per mask that
a simulated round of 10,000 devices pays 500,000 times); a test pins both paths to one stream.
"""

from __future__ import annotations

import nacl.bindings as _nb
import numpy as np
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from agent.core.errors import SecurityError

MASK_KEY_BYTES = 32
#: The longest stream libsodium's 32-bit block counter allows (2^32 blocks of 64 bytes).
MAX_STREAM_BYTES = (1 << 32) * 64


def _checked(key: bytes) -> bytes:
    if len(key) != MASK_KEY_BYTES:
        raise SecurityError("bad mask key")
    return bytes(key)


def _fill(buf: np.ndarray, key: bytes) -> None:
    """Write the keystream of ``key`` over the whole contiguous array ``buf``."""
    n = buf.nbytes
    if n > MAX_STREAM_BYTES:
        raise ValueError("mask longer than the keystream allows")
    if n:
        _lib.randombytes_buf_deterministic(_ffi.from_buffer(buf, require_writable=True), n, key)


def keystream(key: bytes, nbytes: int) -> bytes:
    """The first ``nbytes`` of the keystream of ``key`` (pynacl's public call; for tests and benches)."""
    return _nb.randombytes_buf_deterministic(nbytes, _checked(key))


def expand_into(key: bytes, out: np.ndarray) -> np.ndarray:
    """Fill the contiguous array ``out`` with the keystream of ``key``; return ``out``.

    Bytes are read little-endian, so the mask is the same on every platform.
    """
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable contiguous array")
    _fill(out, _checked(key))
    big = out.dtype.byteorder == ">" or (out.dtype.byteorder == "=" and not np.little_endian)
    if out.dtype.itemsize > 1 and big:
        out.byteswap(inplace=True)  # the stream's bytes are little-endian words
    return out


class MaskAccumulator:
    """A running wrapping sum of a vector and ± keystream masks, for SecAgg clients and server.

    ``dtype`` is ``uint16`` or ``uint32``; arithmetic wraps modulo 2^(8*itemsize). One scratch
    vector of ``dim`` words holds each mask while it is added.
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
        # keystream words, little-endian everywhere (numpy converts on big-endian hosts)
        self._scratch = np.empty(self.dim, self.dtype.newbyteorder("<"))

    def add_vector(self, vec: np.ndarray, sign: int = 1) -> None:
        """acc += sign * vec (wrapping); vec is cast to the accumulator dtype."""
        v = np.asarray(vec)
        if v.dtype != self.dtype:
            v = v.astype(self.dtype)
        (np.add if sign > 0 else np.subtract)(self.acc, v, out=self.acc)

    def add_mask(self, key: bytes, sign: int = 1) -> None:
        """acc += sign * keystream(key) (wrapping)."""
        self.add_masks([key], [sign])

    def add_masks(self, keys: list[bytes], signs: list[int]) -> None:
        """Several masks at once, same result as :meth:`add_mask` for each."""
        if len(keys) != len(signs):
            raise ValueError("one sign per key")
        checked = [_checked(k) for k in keys]  # all or nothing: a bad key changes no word
        acc, scratch = self.acc, self._scratch
        for key, sign in zip(checked, signs):
            _fill(scratch, key)
            (np.add if sign > 0 else np.subtract)(acc, scratch, out=acc)

    def value(self) -> np.ndarray:
        """The accumulated vector (not a copy)."""
        return self.acc

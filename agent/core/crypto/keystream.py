"""Mask expansion: libsodium's deterministic ChaCha20 stream, one derived key per 256 KiB chunk,
written straight into numpy buffers.

The PRG, fixed forever because both ends of SecAgg must agree on every byte: the mask under
``key`` is cut into chunks of ``CHUNK_BYTES``; chunk ``i`` is
``randombytes_buf_deterministic(len, K_i)`` with ``K_i = BLAKE2b-256(i as 8 bytes little-endian,
key=key, person="fedge/v1/mask")``, i.e. the RFC 8439 ChaCha20 keystream under ``K_i``, nonce
``"LibsodiumDRG"``, block counter from 0 (documented by libsodium; tied to the RFC and to stdlib
BLAKE2b in the tests). A short last chunk is a prefix of the full one. Chunks make the stream
seekable, so a mask is added chunk by chunk with a 256 KiB scratch buffer whatever the model
size. Words are read little-endian and combined with wrapping ``uint16``/``uint32`` arithmetic.
Each mask key expands exactly one vector.

libsodium is called through pynacl's cffi library, writing into the caller's buffer (the public
wrapper returns a fresh ``bytes`` per call: a copy and an allocation that a simulated round of
10,000 devices pays 500,000 times); :func:`keystream` builds the same stream through pynacl's
public calls, and a test pins one to the other.
"""

from __future__ import annotations

import nacl.bindings as _nb
import numpy as np
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from fedge.agent.core.crypto.agreement import _blake2b
from fedge.agent.core.crypto.bytes_in import as_bytes
from fedge.agent.core.errors import SecurityError

MASK_KEY_BYTES = 32
#: Part of the PRG definition: changing it changes every mask.
CHUNK_BYTES = 1 << 18
MASK_PERSON = b"fedge/v1/mask"
_MASK = _ffi.new("unsigned char[]", MASK_PERSON.ljust(16, b"\0"))


def _checked(key: object) -> bytes:
    key = as_bytes(key)
    if len(key) != MASK_KEY_BYTES:
        raise SecurityError("bad mask key")
    return key


def _chunk_key(key: bytes, index: int) -> bytes:
    return _blake2b(index.to_bytes(8, "little"), 32, key, _MASK)


def _fill(buf: np.ndarray, chunk_key: bytes) -> None:
    """Write the stream of ``chunk_key`` over the contiguous array ``buf`` (at most one chunk)."""
    if buf.nbytes:
        _lib.randombytes_buf_deterministic(_ffi.from_buffer(buf, require_writable=True), buf.nbytes, chunk_key)


def keystream(key: bytes, nbytes: int) -> bytes:
    """The first ``nbytes`` of the mask stream of ``key``, through pynacl's public calls (tests, benches)."""
    key = _checked(key)
    parts = []
    for index, start in enumerate(range(0, nbytes, CHUNK_BYTES)):
        k = _nb.crypto_generichash_blake2b_salt_personal(index.to_bytes(8, "little"), 32, key=key, person=MASK_PERSON)
        parts.append(_nb.randombytes_buf_deterministic(min(CHUNK_BYTES, nbytes - start), k))
    return b"".join(parts)


def expand_into(key: bytes, out: np.ndarray) -> np.ndarray:
    """Fill the contiguous array ``out`` with the mask stream of ``key``; return ``out``.

    Bytes are read little-endian, so the mask is the same on every platform.
    """
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable contiguous array")
    key = _checked(key)
    raw = out.reshape(-1).view(np.uint8)
    for index, start in enumerate(range(0, raw.size, CHUNK_BYTES)):
        _fill(raw[start : start + CHUNK_BYTES], _chunk_key(key, index))
    big = out.dtype.byteorder == ">" or (out.dtype.byteorder == "=" and not np.little_endian)
    if out.dtype.itemsize > 1 and big:
        out.byteswap(inplace=True)  # the stream's bytes are little-endian words
    return out


class MaskAccumulator:
    """A running wrapping sum of a vector and ± keystream masks, for SecAgg clients and server.

    ``dtype`` is ``uint16`` or ``uint32``; arithmetic wraps modulo 2^(8*itemsize). Masks are
    added chunk-major through one scratch chunk: each chunk of the sum stays in cache while
    every mask's chunk is added to it.
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
        self._items = CHUNK_BYTES // self.dtype.itemsize
        # keystream words, little-endian everywhere (numpy converts on big-endian hosts)
        self._scratch = np.empty(min(self._items, self.dim), self.dtype.newbyteorder("<"))

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
        plan = [(_checked(k), np.add if s > 0 else np.subtract) for k, s in zip(keys, signs)]  # all or nothing
        acc, items, scratch = self.acc, self._items, self._scratch
        for index, start in enumerate(range(0, self.dim, items)):
            m = min(items, self.dim - start)
            part, ks = acc[start : start + m], scratch[:m]
            for key, op in plan:
                _fill(ks, _chunk_key(key, index))
                op(part, ks, out=part)

    def value(self) -> np.ndarray:
        """The accumulated vector (not a copy)."""
        return self.acc

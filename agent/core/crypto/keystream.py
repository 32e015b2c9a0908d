"""Mask expansion: a keystream per 256 KiB chunk under a derived key, written straight into numpy
buffers. Two streams, both from libsodium: ChaCha20 (everywhere) and AES-256-CTR (where the CPU
has AES instructions; see "AES-256-CTR" below).

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

AES-256-CTR (``stream=AES256_CTR``): chunk ``i`` is the AES-256-CTR keystream under
``A_i = BLAKE2b-256(i as 8 bytes little-endian, key=key, person="fedge/v1/aesmask")`` with the
counter block ``0^96 || BE32(2 + j)`` for block j. libsodium has no AES-CTR call, but AES-256-GCM
encrypts with exactly that CTR stream (nonce 0^96, counter from 2: NIST SP 800-38D), so the
ciphertext of a zero plaintext is the stream; the 16-byte tag is written past the chunk and
discarded (into the next chunk, which overwrites it, or a small tail buffer). libsodium offers
AES-256-GCM only where the CPU has AES and carry-less multiply instructions
(:func:`aes_available`), which is where this stream is worth having; ``cryptography`` is not
loaded. Tests pin it to NIST SP 800-38A AES-256-CTR vectors through a plain-Python AES.
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
AES_MASK_PERSON = b"fedge/v1/aesmask"
_MASK = _ffi.new("unsigned char[]", MASK_PERSON.ljust(16, b"\0"))
_AES_MASK = _ffi.new("unsigned char[]", AES_MASK_PERSON.ljust(16, b"\0"))
#: The mask streams (named in the SecAgg+ suite).
CHACHA20 = "chacha20"
AES256_CTR = "aes256ctr"
STREAMS = (CHACHA20, AES256_CTR)
_TAG = 16
_AES_NONCE = bytes(12)
_zeros: list = []  # the zero plaintext AES-GCM encrypts, allocated on first use (read-only)


def aes_available() -> bool:
    """True when libsodium runs AES-256-GCM here (AES-NI and PCLMUL, or ARMv8 crypto)."""
    return bool(_lib.crypto_aead_aes256gcm_is_available())


def _check_stream(stream: str) -> str:
    if stream == CHACHA20:
        return stream
    if stream == AES256_CTR:
        if not aes_available():
            raise SecurityError("AES-256-CTR masks need AES instructions")
        return stream
    raise SecurityError("unknown mask stream")


def _zero_plain() -> object:
    if not _zeros:
        _zeros.append(_ffi.new("unsigned char[]", CHUNK_BYTES))
    return _zeros[0]


def _checked(key: object) -> bytes:
    key = as_bytes(key)
    if len(key) != MASK_KEY_BYTES:
        raise SecurityError("bad mask key")
    return key


def _chunk_key(key: bytes, index: int, stream: str = CHACHA20) -> bytes:
    return _blake2b(index.to_bytes(8, "little"), 32, key, _MASK if stream == CHACHA20 else _AES_MASK)


def _fill(buf: np.ndarray, chunk_key: bytes, stream: str = CHACHA20, room: bool = False) -> None:
    """Write the stream of ``chunk_key`` over the contiguous array ``buf`` (at most one chunk).

    AES-256-CTR writes a 16-byte tag past the end: into the memory after ``buf`` when ``room``
    says the caller has it (and overwrites it later), else through a small tail buffer."""
    n = buf.nbytes
    if not n:
        return
    ptr = _ffi.from_buffer(buf, require_writable=True)
    if stream == CHACHA20:
        _lib.randombytes_buf_deterministic(ptr, n, chunk_key)
        return
    zeros = _zero_plain()
    if room:
        _lib.crypto_aead_aes256gcm_encrypt(ptr, _ffi.NULL, zeros, n, _ffi.NULL, 0, _ffi.NULL, _AES_NONCE, chunk_key)
        return
    tmp = _ffi.new("unsigned char[]", n + _TAG)
    _lib.crypto_aead_aes256gcm_encrypt(tmp, _ffi.NULL, zeros, n, _ffi.NULL, 0, _ffi.NULL, _AES_NONCE, chunk_key)
    _ffi.memmove(ptr, tmp, n)


def keystream(key: bytes, nbytes: int, stream: str = CHACHA20) -> bytes:
    """The first ``nbytes`` of the mask stream of ``key``, through pynacl's public calls (tests, benches)."""
    key = _checked(key)
    stream = _check_stream(stream)
    person = MASK_PERSON if stream == CHACHA20 else AES_MASK_PERSON
    parts = []
    for index, start in enumerate(range(0, nbytes, CHUNK_BYTES)):
        k = _nb.crypto_generichash_blake2b_salt_personal(index.to_bytes(8, "little"), 32, key=key, person=person)
        m = min(CHUNK_BYTES, nbytes - start)
        if stream == CHACHA20:
            parts.append(_nb.randombytes_buf_deterministic(m, k))
        else:
            parts.append(_nb.crypto_aead_aes256gcm_encrypt(bytes(m), None, _AES_NONCE, k)[:m])
    return b"".join(parts)


def expand_into(key: bytes, out: np.ndarray, stream: str = CHACHA20) -> np.ndarray:
    """Fill the contiguous array ``out`` with the mask stream of ``key``; return ``out``.

    Bytes are read little-endian, so the mask is the same on every platform.
    """
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable contiguous array")
    key = _checked(key)
    stream = _check_stream(stream)
    raw = out.reshape(-1).view(np.uint8)
    for index, start in enumerate(range(0, raw.size, CHUNK_BYTES)):
        # a chunk followed by 16 bytes of the next takes AES-GCM's tag there (overwritten next)
        room = start + CHUNK_BYTES + _TAG <= raw.size
        _fill(raw[start : start + CHUNK_BYTES], _chunk_key(key, index, stream), stream, room=room)
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

    def __init__(
        self,
        dim: int,
        dtype: np.dtype | type = np.uint32,
        initial: np.ndarray | None = None,
        stream: str = CHACHA20,
    ):
        self.stream = _check_stream(stream)
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
        # keystream words, little-endian everywhere (numpy converts on big-endian hosts), with
        # room after them for the tag AES-GCM writes past the stream
        words = min(self._items, self.dim)
        self._raw = np.empty(words * self.dtype.itemsize + _TAG, np.uint8)
        self._scratch = self._raw[: words * self.dtype.itemsize].view(self.dtype.newbyteorder("<"))

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
        acc, items, scratch, stream = self.acc, self._items, self._scratch, self.stream
        for index, start in enumerate(range(0, self.dim, items)):
            m = min(items, self.dim - start)
            part, ks = acc[start : start + m], scratch[:m]
            for key, op in plan:
                _fill(ks, _chunk_key(key, index, stream), stream, room=True)
                op(part, ks, out=part)

    def value(self) -> np.ndarray:
        """The accumulated vector (not a copy)."""
        return self.acc

"""What client and server must compute identically: transcripts to sign, per-pair keys, mask signs."""

from __future__ import annotations

import struct

import numpy as np

from fedge.agent.core.crypto import MASK_KEY_BYTES, derive_key, transcript
from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.messages.secagg import SecAggConfig
from fedge.agent.core.secagg.params import SecAggParams


def config_digest(cfg: SecAggConfig) -> bytes:
    """Binds round, parameters, graph seed, roster and suite; every signature covers it."""
    p = cfg.params
    return transcript(
        "secagg/config",
        cfg.round_id,
        p.num_clients,
        p.neighbours,
        p.threshold,
        p.dim,
        p.bits,
        p.min_clients,
        cfg.graph_seed,
        cfg.roster,
        cfg.suite,
    )


def advert_payload(digest: bytes, device_id: str, c_public: bytes, s_public: bytes, kem_public: bytes = b"") -> bytes:
    """What a device signs to advertise its keys (the server cannot substitute them); the hybrid
    suite's ML-KEM encapsulation key is signed with them."""
    if kem_public:
        return transcript("secagg/advertise", digest, device_id, c_public, s_public, kem_public)
    return transcript("secagg/advertise", digest, device_id, c_public, s_public)


def survivors_payload(digest: bytes, bitmap: bytes) -> bytes:
    """What survivors sign in CONSISTENCY_CHECK: the survivor set they were shown."""
    return transcript("secagg/survivors", digest, bitmap)


_SHARE_AD = struct.Struct(">16s32sii")


def share_associated(digest: bytes, sender: int, receiver: int) -> bytes:
    """AEAD associated data of the sealed shares from ``sender`` to ``receiver`` (fixed layout)."""
    return _SHARE_AD.pack(b"fedge/share-ad/1", digest, sender, receiver)


def share_key(shared: bytes, round_id: int, i: int, j: int) -> bytes:
    """AEAD key for the pair {i, j} from their c-key agreement."""
    return derive_key(shared, "secagg/share-key", round_id, min(i, j), max(i, j), length=32)


def pair_mask_key(shared: bytes, round_id: int, i: int, j: int) -> bytes:
    """Keystream key of the pair {i, j}'s mask from their s-key agreement."""
    return derive_key(shared, "secagg/pair-mask", round_id, min(i, j), max(i, j), length=MASK_KEY_BYTES)


def self_mask_key(seed: bytes, round_id: int, i: int) -> bytes:
    """Keystream key of client i's self mask from its 32-byte seed."""
    return derive_key(seed, "secagg/self-mask", round_id, i, length=MASK_KEY_BYTES)


def seed_commitment(seed: bytes, round_id: int, i: int) -> bytes:
    """Client i's commitment to its self-mask seed, sent with its shares: the coordinator checks
    the seed it reconstructs against it, so a neighbour's forged share can not slip a wrong self
    mask into the sum even when only t shares came back. Hiding: the seed is 32 random bytes and
    a separate derivation label keeps it independent of the mask key."""
    return derive_key(seed, "secagg/seed-commitment", round_id, i, length=32)


def mask_sign(i: int, j: int) -> int:
    """Client i adds the pair mask for j > i and subtracts it for j < i, so pairs cancel."""
    return 1 if i < j else -1


def word_dtype(params: SecAggParams) -> np.dtype:
    """uint16 when bits <= 16, else uint32."""
    return np.dtype(np.uint16) if params.word_bits == 16 else np.dtype(np.uint32)


def reduce_bits(vec: np.ndarray, bits: int) -> np.ndarray:
    """vec mod 2^bits in place (no-op for 16 and 32)."""
    if bits not in (16, 32):
        np.bitwise_and(vec, vec.dtype.type((1 << bits) - 1), out=vec)
    return vec


def bitmap_of(indices: np.ndarray | list[int], n: int) -> np.ndarray:
    """Packed bitmap (uint8) of roster indices."""
    bits = np.zeros(n, np.uint8)
    bits[np.asarray(indices, dtype=np.int64)] = 1
    return np.packbits(bits)


def indices_of(bitmap: np.ndarray, n: int) -> np.ndarray:
    """Roster indices set in a packed bitmap; raises ValueError on a wrong size or stray bits."""
    b = np.asarray(bitmap)
    if b.dtype != np.uint8 or b.shape != ((n + 7) // 8,):
        raise ValueError("bitmap has the wrong size")
    bits = np.unpackbits(b)
    if bits[n:].any():
        raise ValueError("bitmap has bits past the roster")
    return np.flatnonzero(bits[:n])


def index_list(arr: np.ndarray, n: int) -> list[int]:
    """Roster indices from a wire array: 1-D uint32, each < n, no repeats; else ProtocolError."""
    a = np.asarray(arr)
    if a.dtype != np.uint32 or a.ndim != 1 or (a.size and int(a.max()) >= n):
        raise ProtocolError("malformed roster index list")
    out = a.tolist()
    if len(set(out)) != len(out):
        raise ProtocolError("repeated roster index")
    return out


def chunks(blob: bytes, size: int, count: int) -> list[bytes]:
    """Split ``blob`` into ``count`` items of ``size`` bytes; ProtocolError if it does not fit."""
    if len(blob) != size * count:
        raise ProtocolError("packed field has the wrong length")
    return [blob[i * size : (i + 1) * size] for i in range(count)]


def indices(ids: list[int]) -> np.ndarray:
    """Roster indices as the uint32 wire array."""
    return np.asarray(ids, dtype=np.uint32)


# ---------------------------------------------------------------------- hybrid suite (X25519 + ML-KEM-768)
#
# Concatenate-then-KDF (the IETF hybrid drafts' combiner, with the ciphertext bound as in the
# Giacon-Heuer-Poettering KEM combiner): a key is derive_key(x25519_secret || mlkem_secret, label,
# round, pair, ciphertext). derive_key hashes the concatenation first (BLAKE2b extract), so the key
# is as strong as the stronger of the two secrets. The pair secrets travel inside the share
# channels; see docs/secagg.md, "Hybrid suite".


def mask_x25519_private(sigma: bytes) -> bytes:
    """The X25519 mask key (s-key) of a hybrid device, from its Shamir-shared 32-byte mask secret."""
    return derive_key(sigma, "secagg/pq/s-x25519", length=32)


def pair_secret(sigma: bytes, round_id: int, i: int, j: int) -> bytes:
    """The post-quantum pair secret client ``i < j`` chooses for the pair {i, j} and seals into its
    share to j: a function of i's mask secret, so recoverable from i's Shamir shares."""
    return derive_key(sigma, "secagg/pq/pair-secret", round_id, i, j, length=32)


def wrap_key(sigma: bytes, round_id: int, i: int, j: int) -> bytes:
    """The one-time pad client ``j > i`` seals into its share to i, over which i sends the coordinator
    the pair secret of {i, j} with its masked input: a function of j's mask secret, so the
    coordinator opens it exactly when it rebuilds j's mask secret (j dropped)."""
    return derive_key(sigma, "secagg/pq/pair-wrap", round_id, i, j, length=32)


def xor(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two equal-length strings."""
    if len(a) != len(b):
        raise ProtocolError("xor of unequal lengths")
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def hybrid_share_key(
    dh: bytes, kem_secret: bytes, ciphertext: bytes, round_id: int, sender: int, receiver: int
) -> bytes:
    """AEAD key of the shares ``sender`` seals to ``receiver``: X25519 c-agreement || ML-KEM secret of
    the sender's encapsulation to the receiver's channel key, the ciphertext bound (one key per
    direction; a changed ciphertext gives another key, so the AEAD refuses it)."""
    return derive_key(dh + kem_secret, "secagg/pq/share-key", round_id, sender, receiver, ciphertext, length=32)


def hybrid_pair_mask_key(dh: bytes, pair_secret: bytes, round_id: int, i: int, j: int) -> bytes:
    """Keystream key of the pair {i, j}'s mask: X25519 s-agreement || the pair secret (sealed in the
    post-quantum share channel)."""
    return derive_key(dh + pair_secret, "secagg/pq/pair-mask", round_id, min(i, j), max(i, j), length=MASK_KEY_BYTES)


def wrapped_count(me: int, held: list[int]) -> int:
    """How many pair secrets ``me`` wraps in its masked input: one per held neighbour above it."""
    return sum(1 for j in held if j > me)

"""Known answers for the AES-256-CTR mask stream: FIPS 197 and NIST SP 800-38A through a plain-Python
AES, the GCM paper's zero-key test case, and the documented chunk layout (stdlib BLAKE2b)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedge.agent.core.crypto import MaskAccumulator, expand_into
from fedge.agent.core.crypto import keystream as ks
from fedge.agent.core.crypto.keystream import AES256_CTR, CHACHA20, CHUNK_BYTES, keystream
from fedge.agent.core.errors import SecurityError

h = bytes.fromhex

pytestmark = pytest.mark.skipif(not ks.aes_available(), reason="libsodium has no AES instructions to use here")


# ---------------------------------------------------------------- a plain-Python AES-256 (encrypt)


def _xtime(a: int) -> int:
    return ((a << 1) ^ 0x1B) & 0xFF if a & 0x80 else a << 1


def _make_sbox() -> list[int]:
    exp, log, x = [0] * 255, [0] * 256, 1
    for i in range(255):
        exp[i], log[x] = x, i
        x ^= _xtime(x)  # times 3, a generator of GF(2^8)*
    box = []
    for a in range(256):
        b = exp[(255 - log[a]) % 255] if a else 0
        s = b
        for r in range(1, 5):
            s ^= ((b << r) | (b >> (8 - r))) & 0xFF
        box.append(s ^ 0x63)
    return box


SBOX = _make_sbox()


def _expand(key: bytes) -> list[list[int]]:
    words = [list(key[4 * i : 4 * i + 4]) for i in range(8)]
    rcon = 1
    for i in range(8, 60):
        temp = list(words[i - 1])
        if i % 8 == 0:
            temp = [SBOX[b] for b in temp[1:] + temp[:1]]
            temp[0] ^= rcon
            rcon = _xtime(rcon)
        elif i % 8 == 4:
            temp = [SBOX[b] for b in temp]
        words.append([a ^ b for a, b in zip(words[i - 8], temp)])
    return [sum(words[4 * r : 4 * r + 4], []) for r in range(15)]


def aes256_block(key: bytes, block: bytes) -> bytes:
    rk = _expand(key)
    s = [a ^ b for a, b in zip(block, rk[0])]
    for rnd in range(1, 15):
        s = [SBOX[b] for b in s]
        s = [s[(r + 4 * ((c + r) % 4))] for c in range(4) for r in range(4)]
        if rnd < 14:
            out = []
            for c in range(4):
                a0, a1, a2, a3 = s[4 * c : 4 * c + 4]
                out += [
                    _xtime(a0) ^ _xtime(a1) ^ a1 ^ a2 ^ a3,
                    a0 ^ _xtime(a1) ^ _xtime(a2) ^ a2 ^ a3,
                    a0 ^ a1 ^ _xtime(a2) ^ _xtime(a3) ^ a3,
                    _xtime(a0) ^ a0 ^ a1 ^ a2 ^ _xtime(a3),
                ]
            s = out
        s = [a ^ b for a, b in zip(s, rk[rnd])]
    return bytes(s)


def ctr_stream(key: bytes, counter: bytes, nbytes: int) -> bytes:
    """AES-256-CTR keystream from the 16-byte ``counter`` (incremented as a 128-bit integer)."""
    c, out = int.from_bytes(counter, "big"), b""
    while len(out) < nbytes:
        out += aes256_block(key, (c % (1 << 128)).to_bytes(16, "big"))
        c += 1
    return out[:nbytes]


def test_reference_aes_matches_fips197() -> None:
    key = bytes(range(32))
    assert aes256_block(key, h("00112233445566778899aabbccddeeff")) == h("8ea2b7ca516745bfeafc49904b496089")


def test_reference_ctr_matches_sp800_38a_f55() -> None:
    # NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt
    key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    plain = h(
        "6bc1bee22e409f96e93d7e117393172a"
        "ae2d8a571e03ac9c9eb76fac45af8e51"
        "30c81c46a35ce411e5fbc1191a0a52ef"
        "f69f2445df4f9b17ad2b417be66c3710"
    )
    cipher = h(
        "601ec313775789a5b7a7f504bbf3d228"
        "f443e3ca4d62b59aca84e990cacaf5c5"
        "2b0930daa23de94ce87017ba2d84988d"
        "dfc9c58db67aada613c2dd08457941a6"
    )
    stream = ctr_stream(key, h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"), 64)
    assert bytes(a ^ b for a, b in zip(plain, stream)) == cipher


# ---------------------------------------------------------------- the mask stream


def test_libsodium_path_is_ctr_from_counter_two_gcm_test_case_14() -> None:
    # McGrew & Viega, "The Galois/Counter Mode of Operation", test case 14: K = 0^256,
    # IV = 0^96, P = 0^128 gives C = cea7...9d18, the first CTR block after J0 = 0^96 || 1
    out = np.empty(16, np.uint8)
    ks._fill(out, bytes(32), AES256_CTR)
    assert out.tobytes() == h("cea7403d4d606b6e074ec5d3baf39d18")
    assert out.tobytes() == ctr_stream(bytes(32), bytes(12) + (2).to_bytes(4, "big"), 16)


def _chunk_key(key: bytes, index: int) -> bytes:
    return hashlib.blake2b(index.to_bytes(8, "little"), digest_size=32, key=key, person=b"fedge/v1/aesmask").digest()


def test_mask_words_are_the_documented_aes_prg() -> None:
    key = bytes(range(100, 132))
    first = ctr_stream(_chunk_key(key, 0), bytes(12) + (2).to_bytes(4, "big"), 48)
    second = ctr_stream(_chunk_key(key, 1), bytes(12) + (2).to_bytes(4, "big"), 32)
    words = expand_into(key, np.empty(CHUNK_BYTES // 4 + 8, np.uint32), AES256_CTR)
    assert words[:12].tobytes() == first and words[CHUNK_BYTES // 4 :].tobytes() == second
    assert np.array_equal(words[:12], np.frombuffer(first, "<u4"))
    # the 256 KiB chunk's last block: counter 2 + 16383
    last = ctr_stream(_chunk_key(key, 0), bytes(12) + (2 + CHUNK_BYTES // 16 - 1).to_bytes(4, "big"), 16)
    assert words[CHUNK_BYTES // 4 - 4 : CHUNK_BYTES // 4].tobytes() == last


@pytest.mark.parametrize(
    "dim", [1, 5, 4096, CHUNK_BYTES // 4, CHUNK_BYTES // 4 + 1, CHUNK_BYTES // 4 + 4, 3 * CHUNK_BYTES // 4 - 3]
)
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_aes_paths_agree(dim: int, dtype: type) -> None:
    rng = np.random.default_rng(dim)
    key = rng.bytes(32)
    out = expand_into(key, np.empty(dim, dtype), AES256_CTR)
    assert out.tobytes() == keystream(key, out.nbytes, AES256_CTR)
    other = rng.bytes(32)
    acc = MaskAccumulator(dim, dtype, stream=AES256_CTR)
    acc.add_masks([key, other], [1, 1])
    acc.add_mask(key, -1)  # masks cancel: what is left is the other mask
    assert np.array_equal(acc.value(), expand_into(other, np.empty(dim, dtype), AES256_CTR))


def test_streams_differ_and_unknown_streams_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    key = bytes(range(32))
    a = expand_into(key, np.empty(64, np.uint32), AES256_CTR)
    c = expand_into(key, np.empty(64, np.uint32), CHACHA20)
    assert not np.array_equal(a, c)
    with pytest.raises(SecurityError):
        expand_into(key, np.empty(4, np.uint32), "aes128ctr")
    with pytest.raises(SecurityError):
        MaskAccumulator(4, np.uint32, stream="rc4")
    monkeypatch.setattr(ks, "aes_available", lambda: False)
    with pytest.raises(SecurityError, match="AES instructions"):
        MaskAccumulator(4, np.uint32, stream=AES256_CTR)

"""Known-answer tests for agent.core.crypto: RFC 7748, RFC 8032, RFC 8439, BLAKE2b derivation.

Every vector comes from an RFC or from an independent computation here (stdlib ``hashlib``, a
pure-Python ChaCha20 block function), never from the implementation's own output.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from fedge.agent.core.crypto import (
    AgreementKey,
    IdentityKey,
    MaskAccumulator,
    agree,
    derive_key,
    expand_into,
    open_sealed,
    seal,
    transcript,
    verify,
)
from fedge.agent.core.crypto.keystream import CHUNK_BYTES, keystream
from fedge.agent.core.errors import SecurityError

h = bytes.fromhex


def test_x25519_rfc7748_function_vector() -> None:
    scalar = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert agree(scalar, u) == h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")


def test_x25519_rfc7748_diffie_hellman() -> None:
    alice = AgreementKey.from_private_bytes(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = AgreementKey.from_private_bytes(h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public_bytes() == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public_bytes() == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.exchange(bob.public_bytes()) == shared == bob.exchange(alice.public_bytes())


def test_x25519_refuses_low_order_points() -> None:
    key = AgreementKey.generate()
    with pytest.raises(SecurityError):
        key.exchange(bytes(32))  # the identity point gives an all-zero secret
    with pytest.raises(SecurityError):
        key.exchange(b"\x01" + bytes(31))
    with pytest.raises(SecurityError):
        key.exchange(bytes(31))


@pytest.mark.parametrize(
    "secret,public,message,signature",
    [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ],
)
def test_ed25519_rfc8032(secret: str, public: str, message: str, signature: str) -> None:
    key = IdentityKey.from_private_bytes(h(secret))
    assert key.public_bytes() == h(public)
    assert key.sign(h(message)) == h(signature)
    verify(h(public), h(message), h(signature))
    bad = bytearray(h(signature))
    bad[5] ^= 1
    with pytest.raises(SecurityError):
        verify(h(public), h(message), bytes(bad))
    with pytest.raises(SecurityError):
        verify(h(public), h(message) + b"x", h(signature))


def test_identity_round_trips_through_raw_bytes() -> None:
    key = IdentityKey.generate()
    again = IdentityKey.from_private_bytes(key.private_bytes())
    assert again.public_bytes() == key.public_bytes()
    verify(key.public_bytes(), b"data", again.sign(b"data"))
    with pytest.raises(SecurityError):
        IdentityKey.from_private_bytes(b"short")


def test_derive_key_is_the_documented_blake2b_construction() -> None:
    """Extract with BLAKE2b-256, expand with keyed BLAKE2b, recomputed with stdlib hashlib."""
    secret = bytes(range(32))
    info = b"".join(
        [
            struct.pack(">I", 21),
            b"fedge/v1/secagg/label",
            struct.pack(">I", 8),
            struct.pack(">q", 7),
            struct.pack(">I", 3),
            b"dev",
            struct.pack(">I", 2),
            b"\x00\xff",
        ]
    )
    prk = hashlib.blake2b(secret, digest_size=32, person=b"fedge/v1/extract").digest()
    for length in (16, 32, 64):
        okm = hashlib.blake2b(info, digest_size=length, key=prk, person=b"fedge/v1/expand").digest()
        assert derive_key(secret, "secagg/label", 7, "dev", b"\x00\xff", length=length) == okm
    for bad in (0, 15, 65):
        with pytest.raises(ValueError):
            derive_key(secret, "a", length=bad)


def test_derive_key_separates_labels_and_contexts() -> None:
    s = bytes(range(32))
    keys = {
        derive_key(s, "a", 1, 2),
        derive_key(s, "a", 2, 1),
        derive_key(s, "b", 1, 2),
        derive_key(s, "a", "1", 2),
        derive_key(s, "a", b"\x01", b"\x02"),
        derive_key(s, "a", 1),
        derive_key(s, "a", 1, 2, length=16) + bytes(16),
        derive_key(s, "a", 1, 2, length=64)[:32],
        derive_key(bytes(31) + b"\x01", "a", 1, 2),
    }
    assert len(keys) == 9
    assert derive_key(s, "a", 1, 2) == derive_key(s, "a", 1, 2)
    assert transcript("x", b"ab", b"c") != transcript("x", b"a", b"bc")


LADIES = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF


def _chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 8439 2.3, written out in plain Python as an independent reference."""
    state = [
        0x61707865,
        0x3320646E,
        0x79622D32,
        0x6B206574,
        *struct.unpack("<8I", key),
        counter,
        *struct.unpack("<3I", nonce),
    ]
    x = list(state)
    for _ in range(10):
        for a, b, c, d in (
            (0, 4, 8, 12),
            (1, 5, 9, 13),
            (2, 6, 10, 14),
            (3, 7, 11, 15),
            (0, 5, 10, 15),
            (1, 6, 11, 12),
            (2, 7, 8, 13),
            (3, 4, 9, 14),
        ):
            x[a] = (x[a] + x[b]) & 0xFFFFFFFF
            x[d] = _rotl(x[d] ^ x[a], 16)  # noqa: E702
            x[c] = (x[c] + x[d]) & 0xFFFFFFFF
            x[b] = _rotl(x[b] ^ x[c], 12)  # noqa: E702
            x[a] = (x[a] + x[b]) & 0xFFFFFFFF
            x[d] = _rotl(x[d] ^ x[a], 8)  # noqa: E702
            x[c] = (x[c] + x[d]) & 0xFFFFFFFF
            x[b] = _rotl(x[b] ^ x[c], 7)  # noqa: E702
    return struct.pack("<16I", *((u + v) & 0xFFFFFFFF for u, v in zip(x, state)))


def _reference_stream(key: bytes, nbytes: int) -> bytes:
    """The documented PRG, from stdlib BLAKE2b and the plain-Python block function: chunk i is the
    ChaCha20 stream (nonce "LibsodiumDRG", counter 0, 1, ...) under BLAKE2b-256(i, key, "fedge/v1/mask")."""
    out = bytearray()
    for index, start in enumerate(range(0, nbytes, CHUNK_BYTES)):
        k = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=32, key=key, person=b"fedge/v1/mask").digest()
        m = min(CHUNK_BYTES, nbytes - start)
        out += b"".join(_chacha20_block(k, c, b"LibsodiumDRG") for c in range(-(-m // 64)))[:m]
    return bytes(out)


def test_reference_block_function_matches_rfc8439() -> None:
    """RFC 8439 2.4.2: key 00..1f, nonce 000000000000004a00000000, counter 1, 2."""
    ct = _xor(b"".join(_chacha20_block(bytes(range(32)), c, h("000000000000004a00000000")) for c in (1, 2)), LADIES)
    assert ct == h(
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b357"
        "1639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
        "5af90bbf74a35be6b40b8eedf2785e42874d"
    )


def test_mask_words_are_the_documented_prg() -> None:
    """Words are the little-endian reading of the documented stream, across two chunk boundaries."""
    key = bytes(range(1, 33))
    ref = _reference_stream(key, 2 * CHUNK_BYTES + 200)
    assert keystream(key, len(ref)) == ref  # pynacl's public calls
    u32 = expand_into(key, np.empty(len(ref) // 4, np.uint32))  # the cffi path the rounds use
    assert u32.tobytes() == ref
    assert int(u32[0]) == int.from_bytes(ref[:4], "little")
    assert expand_into(key, np.empty(10, np.uint16)).tolist() == [
        int.from_bytes(ref[i : i + 2], "little") for i in range(0, 20, 2)
    ]
    acc = MaskAccumulator(len(ref) // 2, np.uint16)
    acc.add_mask(key, -1)
    want = (-np.frombuffer(ref, "<u2").astype(np.int64)) % 65536
    assert np.array_equal(acc.value().astype(np.int64), want)
    big = expand_into(key, np.empty(64, ">u4"))  # an explicitly big-endian buffer holds the same values
    assert big.tolist() == u32[:64].tolist()


def test_long_masks_and_key_checks() -> None:
    """A long mask equals pynacl's public stream; sums of masks add; a short key is refused."""
    key = bytes(range(32, 64))
    dim = 300_001
    whole = expand_into(key, np.empty(dim, np.uint32))
    assert whole.tobytes() == keystream(key, dim * 4)
    acc = MaskAccumulator(dim, np.uint32, initial=np.arange(dim, dtype=np.uint32))
    acc.add_masks([key, bytes(32)], [1, 1])
    expected = np.arange(dim, dtype=np.uint32) + whole + expand_into(bytes(32), np.empty(dim, np.uint32))
    assert np.array_equal(acc.value(), expected)
    before = acc.value().copy()
    with pytest.raises(SecurityError):
        acc.add_masks([key, bytes(16)], [1, 1])  # all or nothing
    assert np.array_equal(acc.value(), before)
    with pytest.raises(SecurityError):
        expand_into(bytes(16), np.empty(4, np.uint32))  # 16-byte keys are refused


@pytest.mark.parametrize("dim", [1, 3, 4, 5, 100, 65536 + 7, 300_001])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_keystream_paths_agree(dim: int, dtype: type) -> None:
    """Expanded, longer, accumulated and chunk-major multi-mask sums give one and the same keystream."""
    key = bytes(range(32))
    whole = expand_into(key, np.empty(dim, dtype))
    longer = expand_into(key, np.empty(dim + 9, dtype))
    assert whole.tobytes() == longer[:dim].tobytes()
    acc = MaskAccumulator(dim, dtype)
    acc.add_mask(key, 1)
    assert np.array_equal(acc.value(), whole)
    acc.add_mask(key, -1)
    assert not acc.value().any()
    keys = [bytes([i]) * 32 for i in range(5)]
    signs = [1, -1, 1, 1, -1]
    one, many = MaskAccumulator(dim, dtype), MaskAccumulator(dim, dtype)
    for k_, s_ in zip(keys, signs):
        one.add_mask(k_, s_)
    many.add_masks(keys, signs)  # chunk-major order, same wrapping sum
    assert np.array_equal(one.value(), many.value())
    assert not np.array_equal(whole, expand_into(bytes(31) + b"\x01", np.empty(dim, dtype))) or dim == 0


def test_aead_round_trip_and_refusals() -> None:
    key = bytes(range(32))
    blob = seal(key, b"share", b"ad")
    assert open_sealed(key, blob, b"ad") == b"share"
    assert seal(key, b"share", b"ad") != blob  # fresh nonce each time
    for bad_key, bad_blob, ad in [
        (bytes(32), blob, b"ad"),
        (key, blob, b"other"),
        (key, blob[:-1] + bytes([blob[-1] ^ 1]), b"ad"),
        (key, blob[:10], b"ad"),
    ]:
        with pytest.raises(SecurityError):
            open_sealed(bad_key, bad_blob, ad)


def test_aead_rfc8439_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 8439 2.8.2: the sealed blob is nonce || ciphertext || tag of the RFC's AEAD."""
    key = bytes(range(0x80, 0xA0))
    nonce, aad = h("070000004041424344454647"), h("50515253c0c1c2c3c4c5c6c7")
    ct = h(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
        "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
    )
    tag = h("1ae10b594f09e26a7e902ecbd0600691")
    assert open_sealed(key, nonce + ct + tag, aad) == LADIES
    monkeypatch.setattr("fedge.agent.core.crypto.aead.random_bytes", lambda n: nonce)
    assert seal(key, LADIES, aad) == nonce + ct + tag
    with pytest.raises(SecurityError):
        open_sealed(key, nonce + ct + tag, aad[:-1])


def test_a_number_is_never_taken_for_a_key() -> None:
    """bytes(32) is 32 zero bytes: primitives refuse ints instead of coercing them into zero keys."""
    with pytest.raises(SecurityError):
        seal(32, b"x")  # type: ignore[arg-type]
    with pytest.raises(SecurityError):
        open_sealed(32, bytes(40))  # type: ignore[arg-type]
    with pytest.raises(SecurityError):
        derive_key(32, "label")  # type: ignore[arg-type]
    with pytest.raises(SecurityError):
        expand_into(32, np.empty(4, np.uint32))  # type: ignore[arg-type]
    key = bytes(range(32))
    assert open_sealed(bytearray(key), seal(memoryview(key), b"ok")) == b"ok"  # bytes-like is fine
